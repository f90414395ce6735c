"""An independent, deliberately naive view of where payloads live, from temporalio's descriptors.

Shares no code with proxy.encryption: a plain recursive walk over the default pool's descriptors
(temporalio's generated modules), used to check the engine's plans and to build test messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from temporalio.api.common.v1 import Payload
from temporalio.api.operatorservice.v1 import service_pb2 as operator_service_pb2
from temporalio.api.update.v1 import message_pb2 as update_pb2
from temporalio.api.workflowservice.v1 import service_pb2 as workflow_service_pb2

from proxy import methods

PAYLOAD = "temporal.api.common.v1.Payload"
ANY = "google.protobuf.Any"
SEARCH_ATTRIBUTES = "temporal.api.common.v1.SearchAttributes"
# What protocol messages carry in `temporal.api.protocol.v1.Message.body` (the SDKs' update
# protocol): the types packed when a path crosses an Any.
ANY_BODIES: tuple[Descriptor, ...] = tuple(
    update_pb2.DESCRIPTOR.message_types_by_name[n]
    for n in ("Request", "Acceptance", "Rejection", "Response")
)


def forwarded_methods() -> dict[str, MethodDescriptor]:
    """Every forwarded method of the table that temporalio's service descriptors define."""
    out: dict[str, MethodDescriptor] = {}
    for module, service_name in (
        (workflow_service_pb2, "WorkflowService"),
        (operator_service_pb2, "OperatorService"),
    ):
        service = module.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            full = f"/{service.full_name}/{method.name}"
            if methods.is_forwarded(full) and methods.lookup(full) is not None:
                out[full] = method
    return out


def value_type(field: FieldDescriptor) -> Descriptor | None:
    mt = field.message_type
    if mt is not None and mt.GetOptions().map_entry:
        return mt.fields_by_name["value"].message_type
    return mt


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def reaches(desc: Descriptor, stack: tuple[str, ...] = ()) -> bool:
    """Naive: does any field path from `desc` (without repeating a type) end at a Payload?"""
    if desc.full_name == SEARCH_ATTRIBUTES:
        return False
    if desc.full_name in (PAYLOAD, ANY):
        return True
    if desc.full_name in stack:
        return False
    for field in desc.fields:
        sub = value_type(field)
        if sub is not None and reaches(sub, (*stack, desc.full_name)):
            return True
    return False


def reachable_fields(roots: list[Descriptor]) -> set[str]:
    """Full names of every field, in types reachable from `roots`, whose value reaches a payload."""
    found: set[str] = set()
    seen: set[str] = set()
    todo = list(roots) + list(ANY_BODIES)
    while todo:
        desc = todo.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        for field in desc.fields:
            sub = value_type(field)
            if sub is not None and reaches(sub):
                found.add(field.full_name)
                todo.append(sub)
    return found


@dataclass(frozen=True)
class Hop:
    field: FieldDescriptor
    packed: Descriptor | None = None  # for an Any: the type packed into it


def payload_paths(desc: Descriptor, stack: tuple[str, ...] = ()) -> Iterator[tuple[Hop, ...]]:
    """Every field path from `desc` to a Payload that repeats no type (SearchAttributes cut)."""
    if desc.full_name in stack or desc.full_name == SEARCH_ATTRIBUTES:
        return
    stack = (*stack, desc.full_name)
    for field in desc.fields:
        sub = value_type(field)
        if sub is None:
            continue
        if sub.full_name == PAYLOAD:
            yield (Hop(field),)
        elif sub.full_name == ANY:
            for body in ANY_BODIES:
                for rest in payload_paths(body, stack):
                    yield (Hop(field, body), *rest)
        else:
            for rest in payload_paths(sub, stack):
                yield (Hop(field), *rest)


def build(desc: Descriptor, path: tuple[Hop, ...], leaf: Payload) -> Message:
    """A message of type `desc` with exactly the one path set, ending in `leaf`."""
    msg = GetMessageClass(desc)()
    _set(msg, path, leaf)
    return msg


def _target(msg: Message, field: FieldDescriptor) -> Message:
    container = getattr(msg, field.name)
    if is_map(field):
        return container["k"]  # type: ignore[no-any-return]
    if field.is_repeated:
        return container.add()  # type: ignore[no-any-return]
    return container  # type: ignore[no-any-return]


def _set(msg: Message, path: tuple[Hop, ...], leaf: Payload) -> None:
    hop, rest = path[0], path[1:]
    target = _target(msg, hop.field)
    if hop.packed is not None:
        target.Pack(build(hop.packed, rest, leaf))  # type: ignore[attr-defined]
    elif not rest:
        target.CopyFrom(leaf)
    else:
        target.SetInParent()
        _set(target, rest, leaf)


def describe(root: Descriptor, path: tuple[Hop, ...]) -> str:
    parts = [root.name]
    for hop in path:
        parts.append(hop.field.name + (f"<{hop.packed.name}>" if hop.packed else ""))
    return ".".join(parts)
