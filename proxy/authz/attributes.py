"""Request attributes for policies, read from the raw request bytes by the protobuf C parser.

The method table gives, per method, field-number paths to string fields (`workflowId` is
`execution.workflow_id`, i.e. (2, 1), for DescribeWorkflowExecution). For every such method
this module builds, once, a tiny proto3 message type holding exactly those paths and parses
the request with it: upb does the work at C speed, skips every other field as unknown, and
keeps protobuf's semantics, which are Go's (so Temporal's) too: the last occurrence of a string
wins, repeated occurrences of a message merge, proto3 strings must be valid UTF-8.

An attribute is present only when the request carries it as a non-empty string: proto3 cannot
tell an empty string from an absent one, and Temporal treats both as unset. Policies test
presence with `has`; nothing is ever guessed.

`AttributeReader.read` is the one entry point; the wire layer may replace its body.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from proxy.errors import MalformedRequestError
from proxy.model import MethodInfo

__all__ = ["AttributeReader", "Attributes"]

# (attribute name, value) in the method table's order; hashable, so usable in a cache key.
Attributes = tuple[tuple[str, str], ...]

_PACKAGE = "temporal_auth_proxy.attributes"
_NO_ATTRIBUTES: Attributes = ()


def _field_name(number: int) -> str:
    return f"f{number}"


class _Node:
    """A message in the path tree: child messages and string leaves by field number."""

    __slots__ = ("children", "leaves")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.leaves: set[int] = set()


def _add_message(
    file: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto,
    name: str,
    node: _Node,
) -> None:
    if isinstance(file, descriptor_pb2.FileDescriptorProto):
        msg = file.message_type.add()
    else:
        msg = file.nested_type.add()
    msg.name = name
    for number in sorted(node.leaves):
        field = msg.field.add()
        field.name = _field_name(number)
        field.number = number
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
        field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for number, child in sorted(node.children.items()):
        child_name = f"M{number}"
        _add_message(msg, child_name, child)
        field = msg.field.add()
        field.name = _field_name(number)
        field.number = number
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        field.type_name = child_name


def _tree(info: MethodInfo) -> _Node:
    root = _Node()
    for _name, path in info.attributes:
        node = root
        for number in path[:-1]:
            node = node.children.setdefault(number, _Node())
        node.leaves.add(path[-1])
    for _name, path in info.attributes:
        # A number cannot be both a string leaf and a message on the way to another leaf.
        node = root
        for number in path[:-1]:
            if number in node.leaves:
                raise ValueError(f"{info.full_name}: field {number} is a string and a message")
            node = node.children[number]
    return root


class _Plan:
    """One method's message class and how to read each attribute off a parsed message."""

    __slots__ = ("message_class", "paths")

    def __init__(self, message_class: Any, paths: tuple[tuple[str, tuple[str, ...]], ...]):
        self.message_class = message_class
        self.paths = paths


class AttributeReader:
    """Reads the table's request attributes of a call; built once from the method table."""

    def __init__(self, methods: Iterable[MethodInfo]) -> None:
        # A private pool: nothing here can clash with the generated Temporal types.
        pool = descriptor_pool.DescriptorPool()
        file = descriptor_pb2.FileDescriptorProto(
            name="temporal_auth_proxy/attributes.proto", package=_PACKAGE, syntax="proto3"
        )
        names: dict[str, str] = {}
        for index, info in enumerate(m for m in methods if m.attributes):
            if info.full_name in names:
                continue
            message_name = f"R{index}"
            names[info.full_name] = message_name
            _add_message(file, message_name, _tree(info))
        pool.Add(file)
        self._plans: dict[str, _Plan] = {}
        for info in methods:
            message_name = names.get(info.full_name, "")
            if not message_name or info.full_name in self._plans:
                continue
            descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.{message_name}")
            paths = tuple(
                (name, tuple(_field_name(n) for n in path)) for name, path in info.attributes
            )
            self._plans[info.full_name] = _Plan(message_factory.GetMessageClass(descriptor), paths)

    def read(self, info: MethodInfo, data: bytes) -> Attributes:
        """The attributes `data` carries for method `info`, absent ones left out.

        Raises MalformedRequestError when the fields on the paths do not parse (Temporal would
        reject the request too); fields off the paths are not looked at.
        """
        plan = self._plans.get(info.full_name)
        if plan is None:
            return _NO_ATTRIBUTES
        message = plan.message_class()
        try:
            message.ParseFromString(data)
        except DecodeError:
            raise MalformedRequestError("request attributes do not parse") from None
        found: list[tuple[str, str]] = []
        for name, fields in plan.paths:
            node = message
            for field in fields[:-1]:
                if not node.HasField(field):
                    break
                node = getattr(node, field)
            else:
                value = getattr(node, fields[-1])
                if value:
                    found.append((name, value))
        return tuple(found)
