"""Find request fields this proxy's API does not know that could hide a payload.

Scope: the whole parsed request tree — every set message field, repeated element and map value,
at any depth, not only the fields the plan visits (a newer API may add a payload to a message
that has none today) — plus the bodies of `Any` values the plan opens. Reported: unknown fields of
wire type LEN (2) and groups (3); unknown varints and fixed-width fields cannot carry a message.
Payloads themselves are exempt: encryption seals the whole serialized Payload, unknown fields
included. Paths are field numbers from the request message down, e.g. `3.7.1023`.

The common case (no unknown field at all) costs one C-level `DiscardUnknownFields` and one
`ByteSize`; only a message that fails that check is walked in Python, from a fresh parse. A
caller can force that walk (a repeated singular field is enough), so it stops after `max_nodes`
messages with `TooManyNodes`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from proxy.encryption.plan import PAYLOAD

__all__ = ["DEFAULT_MAX_NODES", "TooManyNodes", "discard_if_clean", "unknown_paths"]

_LEN = 2
_GROUP = 3
# ~1 us per message walked: a bound of about 0.1 s of CPU for one hostile request.
DEFAULT_MAX_NODES = 100_000


class TooManyNodes(Exception):
    """Internal: the slow walk exceeded its bound (the engine names the method)."""


def discard_if_clean(msg: Message) -> bool:
    """True when `msg` holds no unknown field anywhere.

    Drops unknown fields (recursively, in C) and compares the encoded size before and after:
    only dropped unknown fields can shrink it. (Comparing with `len(body)` instead could be
    fooled: some inputs grow when re-encoded, e.g. a map entry sent without its key, and that
    growth can hide an unknown field of the same size.) On False the caller re-parses `body`
    (restoring what was dropped) and asks `unknown_paths` for the paths.
    """
    before = msg.ByteSize()
    msg.DiscardUnknownFields()
    return msg.ByteSize() == before


def unknown_paths(msg: Message, max_nodes: int = DEFAULT_MAX_NODES) -> tuple[str, ...]:
    """Field-number paths of unknown LEN/group fields in `msg` and below, sorted, deduplicated."""
    found: set[str] = set()
    _walk(msg, "", found, [max_nodes])
    return tuple(sorted(found))


def _walk(msg: Any, path: str, found: set[str], budget: list[int]) -> None:
    desc: Descriptor = msg.DESCRIPTOR
    if desc.full_name == PAYLOAD:
        return
    budget[0] -= 1
    if budget[0] < 0:
        raise TooManyNodes
    # types-protobuf omits UnknownFieldSet.__iter__; it is iterable at runtime.
    for field in UnknownFieldSet(msg):  # type: ignore[attr-defined]
        if field.wire_type in (_LEN, _GROUP):
            found.add(f"{path}{field.field_number}")
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        sub = f"{path}{fd.number}."
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    _walk(item, sub, found, budget)
        elif fd.is_repeated:
            for item in value:
                _walk(item, sub, found, budget)
        else:
            _walk(value, sub, found, budget)
