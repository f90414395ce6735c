"""Derive, from the API descriptors, where payloads live: a walk plan per message type and method.

A field is visited when its type is `temporal.api.common.v1.Payload`, or a message (singular,
repeated or map value) whose fields can reach one, recursively, or a `google.protobuf.Any` (the
packed type is resolved per call: protocol message bodies, status details). Search attributes
(`temporal.api.common.v1.SearchAttributes`) are never visited: the server indexes them. Nothing
else is excluded: headers, memos, user metadata, failure details and `encoded_attributes` are
all encrypted (as Temporal's own codec proxy in api-go does by default). One `bytes` field is
known to embed a message with payloads (`EMBEDDED`: GetWorkflowExecutionHistory's raw_history).

Each type's plan is a tuple of small closures built once, so a call does no descriptor look-ups,
no dict building and never descends into a field that cannot hold a payload. A oneof with several
reachable members (HistoryEvent.attributes, Command.attributes) is one `WhichOneof` dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from proxy.encryption.descriptors import ApiDescriptors, ApiVersion

__all__ = [
    "ANY",
    "MAX_NESTING",
    "PAYLOAD",
    "SEARCH_ATTRIBUTES",
    "STATUS",
    "EncryptionPlan",
    "MethodPlan",
    "TypePlan",
    "Visitor",
    "walk_nested",
]

PAYLOAD = "temporal.api.common.v1.Payload"
ANY = "google.protobuf.Any"
SEARCH_ATTRIBUTES = "temporal.api.common.v1.SearchAttributes"
STATUS = "google.rpc.Status"
# Types never visited: the server must read them.
EXCLUDED: frozenset[str] = frozenset({SEARCH_ATTRIBUTES})
# `bytes` fields that hold a serialized API message with payloads, by field -> message type.
# GetWorkflowExecutionHistoryResponse.raw_history (frontend option SendRawWorkflowHistory, read
# by the Go SDK) is a list of DataBlobs, each a serialized History batch when PROTO3-encoded.
EMBEDDED: Mapping[str, str] = MappingProxyType(
    {
        "temporal.api.workflowservice.v1.GetWorkflowExecutionHistoryResponse.raw_history": (
            "temporal.api.history.v1.History"
        ),
    }
)
_DATA_BLOB_PROTO3 = 1  # temporal.api.enums.v1.EncodingType.ENCODING_TYPE_PROTO3


class Visitor(Protocol):
    """What a walk calls: one method per payload, and one per Any whose type is unknown.

    `changed` counts the payloads it rewrote; an Any body is re-serialized only when it moved.
    """

    changed: int
    nesting: int  # Any bodies, blobs and envelopes currently open around the walk

    def payload(self, payload: Any, /) -> None: ...

    def opaque_any(self, type_name: str, /) -> None: ...

    def any_body(self, body: Message, raw: bytes, /) -> None: ...

    def too_deep(self, what: str, /) -> None: ...


_Step = Callable[[Any, Visitor], None]
# Each Any body, blob or envelope is parsed on its own, so protobuf's depth limit restarts inside
# it; MultiOperationExecutionFailure -> OperationStatus.details (Any) -> ... can nest without end.
MAX_NESTING = 8


def walk_nested(plan: TypePlan, body: Any, v: Visitor, what: str) -> bool:
    """Walk a separately parsed body one nesting level down; True when a payload changed."""
    if v.nesting >= MAX_NESTING:
        v.too_deep(what)
        return False
    v.nesting += 1
    before = v.changed
    try:
        plan.walk(body, v)
    finally:
        v.nesting -= 1
    return v.changed != before


class TypePlan:
    """The steps that visit every payload under one message type (internal, built once)."""

    __slots__ = ("full_name", "message_class", "steps")

    def __init__(self, full_name: str, message_class: type[Message]) -> None:
        self.full_name = full_name
        self.message_class = message_class
        self.steps: tuple[_Step, ...] = ()

    def walk(self, msg: Any, visitor: Visitor) -> None:
        for step in self.steps:
            step(msg, visitor)


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodPlan:
    """One gRPC method: its request and response classes and their plans (None: no payloads)."""

    full_name: str
    request_class: type[Message]
    response_class: type[Message]
    request: TypePlan | None
    response: TypePlan | None


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EncryptionPlan:
    """Plans for every WorkflowService and OperatorService method of the shipped API."""

    api: ApiDescriptors
    methods: Mapping[str, MethodPlan]
    # Every message type of the set that can reach a payload -> its plan (Any bodies resolve
    # here, so a type packed into an Any is covered even when no method names it directly).
    types: Mapping[str, TypePlan]
    # Field full names the plans visit (what tests compare with an independent computation).
    covered_fields: frozenset[str]
    status: TypePlan

    def __repr__(self) -> str:
        return f"EncryptionPlan({self.api.version.label()}, {len(self.methods)} methods)"

    @property
    def version(self) -> ApiVersion:
        return self.api.version

    @classmethod
    def load(cls, api: ApiDescriptors | None = None) -> EncryptionPlan:
        """Build from the shipped descriptors (or given ones). ~0.1 s: do it at startup."""
        api = api or ApiDescriptors.load()
        builder = _Builder(api)
        methods: dict[str, MethodPlan] = {}
        for name, method in api.methods.items():
            methods[name] = MethodPlan(
                full_name=name,
                request_class=api.message_class(method.input_type),
                response_class=api.message_class(method.output_type),
                request=builder.plan(method.input_type),
                response=builder.plan(method.output_type),
            )
        for desc in api.all_messages():
            builder.plan(desc)
        status_desc = api.find_message(STATUS)
        status = builder.plan(status_desc) if status_desc is not None else None
        if status is None:
            raise LookupError(f"{STATUS} is missing from the shipped descriptors")
        return cls(
            api=api,
            methods=MappingProxyType(methods),
            types=MappingProxyType(builder.plans),
            covered_fields=frozenset(builder.covered),
            status=status,
        )

    def method(self, full_name: str) -> MethodPlan | None:
        return self.methods.get(full_name)


class _Builder:
    """Reachability (a fixed point over the type graph, cycles included), then the plans."""

    def __init__(self, api: ApiDescriptors) -> None:
        self._api = api
        self.plans: dict[str, TypePlan] = {}
        self.covered: set[str] = set()
        self._reach: dict[str, bool] = {}

    def plan(self, desc: Descriptor) -> TypePlan | None:
        if not self._reaches(desc):
            return None
        existing = self.plans.get(desc.full_name)
        if existing is not None:
            return existing
        plan = TypePlan(desc.full_name, self._api.message_class(desc))
        self.plans[desc.full_name] = plan  # before recursing: cycles (Failure.cause) close here
        plan.steps = tuple(self._steps(desc))
        return plan

    def _reaches(self, desc: Descriptor) -> bool:
        """Can a message of this type carry a payload (Any counts: its body is resolved later)?"""
        name = desc.full_name
        if name in EXCLUDED:
            return False
        if name in (PAYLOAD, ANY):
            return True
        cached = self._reach.get(name)
        if cached is not None:
            return cached
        self._reach[name] = False  # provisional while on the stack
        found = False
        for field in desc.fields:
            sub = _value_type(field)
            if sub is not None and self._reaches(sub):
                found = True
        # A False computed under a provisional False of an ancestor is only final at the root;
        # recomputing later is cheap, so forget provisional negatives of the subtree.
        if found:
            self._reach[name] = True
        else:
            del self._reach[name]
        return found

    def _steps(self, desc: Descriptor) -> list[_Step]:
        steps: list[_Step] = []
        oneofs: dict[str, dict[str, _Step]] = {}
        for field in desc.fields:
            embedded = EMBEDDED.get(field.full_name)
            if embedded is not None:
                steps.append(self._blob_step(field, embedded))
                continue
            sub = _value_type(field)
            if sub is None or not self._reaches(sub):
                continue
            self.covered.add(field.full_name)
            step = self._field_step(field, sub)
            oneof = field.containing_oneof
            if oneof is not None and len(oneof.fields) > 1:
                oneofs.setdefault(oneof.name, {})[field.name] = step
            else:
                steps.append(step)
        for oneof_name, members in oneofs.items():
            steps.append(_oneof_step(oneof_name, members) if len(members) > 1 else _only(members))
        return steps

    def _blob_step(self, field: FieldDescriptor, type_name: str) -> _Step:
        desc = self._api.find_message(type_name)
        plan = self.plan(desc) if desc is not None else None
        if plan is None or not field.is_repeated:
            raise LookupError(f"{field.full_name}: cannot plan the embedded {type_name}")
        self.covered.add(field.full_name)
        return _blob_list_step(field.name, plan)

    def _field_step(self, field: FieldDescriptor, sub: Descriptor) -> _Step:
        name = field.name
        shape = "map" if _is_map(field) else "list" if field.is_repeated else "one"
        if sub.full_name == PAYLOAD:
            return _payload_step(name, shape)
        if sub.full_name == ANY:
            return _any_step(name, shape, self.plans, self._api)
        plan = self.plan(sub)
        assert plan is not None
        return _message_step(name, shape, plan)


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return bool(field.is_repeated and mt is not None and mt.GetOptions().map_entry)


def _value_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type a field holds (a map's value type for maps), None for scalars."""
    mt = field.message_type
    if mt is None:
        return None
    if _is_map(field):
        value = mt.fields_by_name["value"].message_type
        return value if value is not None else None
    return mt


def _only(members: dict[str, _Step]) -> _Step:
    (step,) = members.values()
    return step


# ------------------------------------------------------------------------ step factories
# Closures bind the field name and the sub-plan, so a step is one call with no look-ups.


def _payload_step(name: str, shape: str) -> _Step:
    if shape == "one":

        def one(msg: Any, v: Visitor) -> None:
            if msg.HasField(name):
                v.payload(getattr(msg, name))

        return one
    if shape == "list":

        def many(msg: Any, v: Visitor) -> None:
            for p in getattr(msg, name):
                v.payload(p)

        return many

    def mapped(msg: Any, v: Visitor) -> None:
        for p in getattr(msg, name).values():
            v.payload(p)

    return mapped


def _message_step(name: str, shape: str, plan: TypePlan) -> _Step:
    if plan.full_name == "temporal.api.common.v1.Payloads" and shape == "one":
        # The most common container: skip one level of calls.
        def payloads(msg: Any, v: Visitor) -> None:
            if msg.HasField(name):
                for p in getattr(msg, name).payloads:
                    v.payload(p)

        return payloads
    walk = plan.walk
    if shape == "one":

        def one(msg: Any, v: Visitor) -> None:
            if msg.HasField(name):
                walk(getattr(msg, name), v)

        return one
    if shape == "list":

        def many(msg: Any, v: Visitor) -> None:
            for m in getattr(msg, name):
                walk(m, v)

        return many

    def mapped(msg: Any, v: Visitor) -> None:
        for m in getattr(msg, name).values():
            walk(m, v)

    return mapped


def _oneof_step(oneof_name: str, members: dict[str, _Step]) -> _Step:
    table = MappingProxyType(dict(members))

    def dispatch(msg: Any, v: Visitor) -> None:
        which = msg.WhichOneof(oneof_name)
        if which is not None:
            step = table.get(which)
            if step is not None:
                step(msg, v)

    return dispatch


def _blob_list_step(name: str, plan: TypePlan) -> _Step:
    def blobs(msg: Any, v: Visitor) -> None:
        for blob in getattr(msg, name):
            if blob.encoding_type != _DATA_BLOB_PROTO3:
                v.opaque_any(f"DataBlob<{blob.encoding_type}>")
                continue
            try:
                body = plan.message_class.FromString(blob.data)
            except DecodeError:
                v.opaque_any(f"DataBlob<{plan.full_name}>")
                continue
            if walk_nested(plan, body, v, "DataBlob"):
                blob.data = body.SerializeToString()

    return blobs


def _any_step(name: str, shape: str, plans: Mapping[str, TypePlan], api: ApiDescriptors) -> _Step:
    def visit_any(packed: Any, v: Visitor) -> None:
        type_name = packed.type_url.rpartition("/")[2]
        plan = plans.get(type_name)
        if plan is None:
            if api.find_message(type_name) is None:
                v.opaque_any(type_name)  # unknown type: could hide a payload
            return  # a known type that cannot hold payloads
        raw = packed.value
        try:
            body = plan.message_class.FromString(raw)
        except DecodeError:
            v.opaque_any(type_name)
            return
        v.any_body(body, raw)
        if walk_nested(plan, body, v, f"Any<{type_name}>"):
            packed.value = body.SerializeToString()

    if shape == "one":

        def one(msg: Any, v: Visitor) -> None:
            if msg.HasField(name):
                visit_any(getattr(msg, name), v)

        return one

    def many(msg: Any, v: Visitor) -> None:
        for packed in getattr(msg, name):
            visit_any(packed, v)

    return many


def iter_payload_fields(plan: EncryptionPlan) -> Iterable[str]:
    """The covered fields, sorted (for display and tests)."""
    return sorted(plan.covered_fields)
