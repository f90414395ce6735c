"""Reading fields from raw, possibly hostile protobuf request bytes (the namespace, the audit's
workflow id, the ListNamespaces request's fields) without deserializing the message.

Only the fields on the path are read; the contents of other length-delimited fields are skipped
and unknown groups are checked for balance, as a real parser does. The rules match what
Python's upb parser and Go's protobuf (which Temporal runs) do at the top level, and where the
two differ the stricter one wins, so a body either of them would reject is refused here too:

- The namespace is the LAST top-level occurrence of the field with wire type LEN. An occurrence
  with another wire type is an unknown field to both parsers, so it is skipped, not an error.
- Every LEN occurrence of the namespace field must be valid UTF-8 (proto3 `string`); the same
  field number inside an unknown group is opaque and is not checked.
- Field number 0 is rejected everywhere (upb accepts it inside unknown groups, Go does not).
- A varint is at most 10 bytes and its 10th byte at most 1 (Go rejects 64-bit overflow; upb
  does not check). Tags and lengths are at most 5 bytes (upb; Go allows 10) and a tag must be
  below 2**32, i.e. field numbers up to 2**29 - 1 (both).
- Wire types 6 and 7, an end-group tag with no matching start group, an unterminated group and
  unknown groups nested deeper than upb's default recursion limit (100) are errors.

How, at C speed (issue 14): the bytes are parsed by protobuf's upb parser (C) with a tiny
message type built once per field path, `message Probe { string namespace = N; }`, every other
field unknown to it. upb gives protobuf's last-wins value, the UTF-8 check of every occurrence
and all the structural rules above except two Go-only ones, which are checked without a
per-field Python loop:

- 64-bit overflow. In a body upb accepts, nine bytes >= 0x80 followed by a byte 0x02..0x7f
  are either a whole 10-byte varint value with a 10th byte > 1 (the violation), or their first
  five bytes lie inside a payload: a tag or length has at most 4 continuation bytes and follows
  a byte < 0x80 or a payload. Found with `bytes.translate`/`find` (C), the first of the nine is
  zeroed in a copy (spliced for a few, a big-int AND per 64 KiB chunk for many). To a parser
  that knows no field, payload bytes do not matter, and a real overflowing value becomes a
  1-byte value and a 9-byte tag, which upb refuses: so upb's verdict on the copy is exact.
- Field number 0 inside an unknown group. Whether the body has any unknown group at all is
  upb's parse of the body (or of the zeroed copy) nested inside 100 groups (upb's depth
  limit): one parse for both rules, and one more only when it fails. No Temporal client
  sends groups; a body that has them is walked field by field in Python, and only up to
  `MAX_GROUP_WALK_BYTES` of fields the reader does not know (more is refused as malformed), so
  that walk stays bounded.

Both rules can only fail outside payloads, so for bodies up to 256 KiB upb parses with a probe
that also declares fields 1-63 as `bytes` (every payload field of Temporal's requests) and only
what it leaves unknown is checked. Larger bodies are checked whole: the residue is no bound
(fields above 63 are unknown to the probe, and upb is several times slower on tiny fields whose
declared number has another wire type), and a 4 MiB body then costs ~20 ms at most
(`bench/body_work.py`).
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from proxy.errors import MalformedRequestError

__all__ = [
    "MAX_GROUP_DEPTH",
    "MAX_GROUP_WALK_BYTES",
    "extract_namespace",
    "peek_bytes",
    "read_string",
    "read_top_fields",
    "read_varint",
]

# upb's default decode depth in Python: 100 nested unknown groups parse, 101 do not.
# (Go's limit is 10000; the stricter one applies.)
MAX_GROUP_DEPTH = 100
# Bodies with unknown groups are walked in Python (~0.2 us per field): 64 KiB is ~12 ms at worst.
MAX_GROUP_WALK_BYTES = 64 * 1024

_MAX_TAG = 0xFFFFFFFF  # field number <= 2**29 - 1 (protobuf's maximum) and a 3-bit wire type
_LEN = 2
_MAX_FIELD = 2**29 - 1
# Declared as `bytes` in the reading probe (cheap to clear): Temporal's request messages put
# every LEN field at a number <= 30 today, so their payloads are never rescanned.
_SHADOWED = 63

_TYPE_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_TYPE_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_TYPE_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
# The declared type that makes upb take an occurrence of each wire type (others stay unknown).
_TYPE_OF_WIRE = {
    0: descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    1: descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64,
    2: _TYPE_BYTES,
    5: descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32,
}

# The body inside MAX_GROUP_DEPTH unknown groups (field 1): any group in it is one too deep.
_GROUPS_OPEN = bytes([1 << 3 | 3]) * MAX_GROUP_DEPTH
_GROUPS_CLOSE = bytes([1 << 3 | 4]) * MAX_GROUP_DEPTH
# Byte classes: 0x01 for 0x00-0x01, 0x7f for 0x02-0x7f, 0xff for 0x80-0xff (a varint's
# continuation bytes). Each class value keeps every byte of its class under `&`, so the marked
# classes are themselves the mask that zeroes the copy (0x00 marks a zeroed byte).
_CLASSES = bytes.maketrans(bytes(range(256)), b"\x01" * 2 + b"\x7f" * 126 + b"\xff" * 128)
_OVERFLOW_CANDIDATE = b"\xff" * 9 + b"\x7f"
_ZEROED_RUN = b"\x00" + _OVERFLOW_CANDIDATE[1:]
# Bodies up to this size are parsed with the shadow probe first (see read_string).
_SHADOW_FIRST = 256 * 1024
# Up to this many look-alikes the copy is spliced; beyond, one AND over the whole body.
_FEW = 64
_CHUNK = 64 * 1024  # the Go-rule scans work chunk by chunk


@functools.lru_cache(maxsize=64)
def _probe(path: tuple[int, ...], leaf_type: int, *, shadow: bool = False) -> type[Message]:
    """`message M0 { M1 f = path[0]; } ... message Mk { <leaf_type> f = path[-1]; }`.

    With `shadow`, M0 also declares every other field number up to `_SHADOWED` as `bytes`, so
    upb keeps only the rest as unknown fields: the residue where the Go-only rules can fail.
    """
    fdp = descriptor_pb2.FileDescriptorProto(
        name="temporal_auth_proxy_probe.proto", package="probe", syntax="proto3"
    )
    top = fdp.message_type.add(name="M0")
    if not path:
        # upb skips field number 0 in a message type with no fields at all (as in unknown
        # groups), so the validating probe carries one field nobody uses.
        top.field.add(name="f", number=_MAX_FIELD, label=_OPTIONAL, type=_TYPE_BYTES)
    for depth, number in enumerate(path):
        msg = top if depth == 0 else fdp.message_type.add(name=f"M{depth}")
        if depth == len(path) - 1:
            msg.field.add(name="f", number=number, label=_OPTIONAL, type=leaf_type)
        else:
            msg.field.add(
                name="f",
                number=number,
                label=_OPTIONAL,
                type=_TYPE_MESSAGE,
                type_name=f".probe.M{depth + 1}",
            )
    if shadow:
        for number in range(1, _SHADOWED + 1):
            if not path or number != path[0]:
                top.field.add(name=f"s{number}", number=number, label=_OPTIONAL, type=_TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("probe.M0"))


def _parse(cls: type[Message], data: bytes) -> Message:
    try:
        return cls.FromString(data)
    except DecodeError:
        raise MalformedRequestError("not a well-formed protobuf message") from None


def _check_go_rules(data: bytes) -> None:
    """The two rules Go applies and upb does not, for bytes upb has accepted (see above)."""
    if not data:
        return
    # In chunks: small buffers are reused and stay in cache, 4 MiB ones are fresh pages. A
    # look-alike starting in a chunk ends within 9 bytes after it, and none overlap.
    tail = len(_OVERFLOW_CANDIDATE) - 1
    found: list[int] = []
    for at in range(0, len(data), _CHUNK):
        classes = data[at : at + _CHUNK + tail].translate(_CLASSES)
        found += (at + start for start in _candidates(classes) if start < _CHUNK)
        if len(found) > _FEW:
            break
    parts: list[bytes] = [_GROUPS_OPEN]
    if not found:
        parts.append(data)
    elif len(found) <= _FEW:
        last = 0
        for at in found:
            parts += (data[last:at], b"\x00")
            last = at + 1
        parts.append(data[last:])
    else:
        view = memoryview(data)
        for at in range(0, len(data), _CHUNK):
            classes = data[at : at + _CHUNK + tail].translate(_CLASSES)
            # The mask's 9 extra bytes meet none of the part's: the AND drops them.
            mask = int.from_bytes(classes.replace(_OVERFLOW_CANDIDATE, _ZEROED_RUN), "little")
            part = view[at : at + _CHUNK]
            parts.append((int.from_bytes(part, "little") & mask).to_bytes(len(part), "little"))
    parts.append(_GROUPS_CLOSE)
    bare = _probe((), 0)
    try:
        # One parse for both rules: inside 100 groups, any unknown group is one too deep, and a
        # zeroed overflow leaves a 9-byte tag.
        bare.FromString(b"".join(parts))
        return
    except DecodeError:
        pass
    try:
        bare.FromString(b"".join((_GROUPS_OPEN, data, _GROUPS_CLOSE)))
    except DecodeError:
        # upb accepted `data` itself, so the cause is an unknown group: walk it exactly.
        if len(data) > MAX_GROUP_WALK_BYTES:
            raise MalformedRequestError("unknown groups in a body over 64 KiB") from None
        _walk_exact(data, None)
        return
    raise MalformedRequestError("varint overflows 64 bits")


def _candidates(classes: bytes) -> list[int]:
    """Where the look-alike runs start, up to one more than `_FEW` of them."""
    found: list[int] = []
    at = classes.find(_OVERFLOW_CANDIDATE)
    while at >= 0 and len(found) <= _FEW:
        found.append(at)
        at = classes.find(_OVERFLOW_CANDIDATE, at + len(_OVERFLOW_CANDIDATE))
    return found


def read_string(data: bytes, path: tuple[int, ...]) -> str:
    """The string at `path` (field numbers of singular sub-messages, then a string field) as
    protobuf reads it: sub-message occurrences merge, the last string occurrence wins. "" when
    absent. The body and every sub-message on the path must be well formed by the rules above;
    MalformedRequestError (and nothing else) otherwise. An empty path only validates.
    """
    data = bytes(data)
    small = len(data) <= _SHADOW_FIRST
    # Small bodies: parse with the shadow probe and check only its unknown residue, so a payload
    # is never rescanned. Large ones: the plain probe and the whole body, a bounded cost: upb is
    # several times slower with the shadow probe on tiny fields of a declared number with
    # another wire type, and a residue can be the whole body (fields above `_SHADOWED`).
    top: Any = _parse(_probe(path, _TYPE_STRING, shadow=small), data)
    node, value, subs = top, "", []
    for _ in path[:-1]:
        if not node.HasField("f"):
            break
        node = node.f
        subs.append(node.SerializeToString())
    else:
        value = str(node.f) if path else ""
    if small:
        for field, _ in top.ListFields():
            top.ClearField(field.name)
        _check_go_rules(top.SerializeToString())
    else:
        _check_go_rules(data)
    for sub in subs:
        _check_go_rules(sub)
    return value


def extract_namespace(data: bytes, field_number: int | None) -> str:
    """Return the request's top-level `namespace` string field, "" when it is absent.

    `field_number` is the method table's `namespace` field number; None (cluster-scope methods)
    still validates the message structure and returns "". Raises MalformedRequestError, and
    nothing else, when the bytes are not a well-formed protobuf message at the top level. The
    message never contains request bytes.
    """
    return read_string(data, () if field_number is None else (field_number,))


def peek_bytes(data: bytes, path: tuple[int, ...]) -> bytes:
    """Lenient read of trusted bytes (upstream answers): the bytes field at `path` as protobuf
    reads it, b"" when absent. No UTF-8 or Go-only checks; MalformedRequestError when upb
    refuses the structure."""
    msg: object = _parse(_probe(path, _TYPE_BYTES), bytes(data))
    for _ in path[:-1]:
        msg = msg.f  # type: ignore[attr-defined]
    return bytes(msg.f)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=64)
def _fields_probe(fields: tuple[tuple[int, int], ...]) -> type[Message]:
    """proto2 `message P { optional <type for the wire type> f<n> = n; ... }` for each
    (number, wire type): proto2, so an occurrence with an empty value still counts as present."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="temporal_auth_proxy_fields_probe.proto", package="probe", syntax="proto2"
    )
    msg = fdp.message_type.add(name="P")
    for number, wire_type in fields:
        msg.field.add(
            name=f"f{number}", number=number, label=_OPTIONAL, type=_TYPE_OF_WIRE[wire_type]
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("probe.P"))


def read_top_fields(data: bytes, wanted: dict[int, int]) -> tuple[dict[int, int | bytes], bytes]:
    """Top-level fields of a (caller's) message at C speed: for each field number in `wanted`
    (number -> wire type: 0 varint, read as uint64, or 2 bytes), the last occurrence's value as
    protobuf reads it (absent ones are left out); and every other field, verbatim and in order.

    MalformedRequestError when upb refuses the structure, when a wanted field occurs with
    another wire type, or when there is a top-level group (no Temporal request has one). No
    UTF-8 or Go-only checks: callers pass bodies `read_string` has validated, or refuse on error.
    """
    data = bytes(data)
    spec = tuple(sorted(wanted.items()))
    msg: Any = _parse(_fields_probe(spec), data)
    values: dict[int, int | bytes] = {}
    for field, value in msg.ListFields():
        values[field.number] = value
        msg.ClearField(field.name)
    rest: bytes = msg.SerializeToString()  # the unknown fields, in order and verbatim
    if not rest:
        return values, rest
    try:
        # Inside 100 groups: a group in `rest` (all top level) is one too deep for upb.
        _probe((), 0).FromString(_GROUPS_OPEN + rest + _GROUPS_CLOSE)
    except DecodeError:
        raise MalformedRequestError("a group at the top level") from None
    for wire_type in _TYPE_OF_WIRE:
        # upb leaves an occurrence with the wrong wire type unknown: find one in `rest`.
        other = tuple((number, wire_type) for number, w in spec if w != wire_type)
        if other and _fields_probe(other).FromString(rest).ListFields():
            raise MalformedRequestError(f"a field with wire type {wire_type} where another is due")
    return values, rest


def _walk_exact(data: bytes, field_number: int | None) -> str:
    """The exact field-by-field walk (Python): used only for small bodies with unknown groups."""
    n = len(data)
    ns_tag = (field_number << 3) | _LEN if field_number is not None else -1
    namespace = ""
    groups: list[int] | None = None  # field numbers of open unknown groups, innermost last
    pos = 0
    while pos < n:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = read_varint(data, pos - 1, 5, "tag")
            if tag > _MAX_TAG:
                raise MalformedRequestError("field number out of range")
        if tag < 8:
            raise MalformedRequestError("field number 0")
        wire_type = tag & 7
        if wire_type == _LEN:
            if pos >= n:
                raise MalformedRequestError("truncated length")
            size = data[pos]
            pos += 1
            if size >= 0x80:
                size, pos = read_varint(data, pos - 1, 5, "length")
            end = pos + size
            if end > n:
                raise MalformedRequestError("length past the end of the message")
            if tag == ns_tag and not groups:
                try:
                    # Every occurrence is decoded: both parsers validate each one, not just
                    # the last that wins.
                    namespace = str(data[pos:end], "utf-8")
                except UnicodeDecodeError:
                    raise MalformedRequestError("namespace is not valid UTF-8") from None
            pos = end
        elif wire_type == 0:
            if pos < n and data[pos] < 0x80:
                pos += 1
            else:
                pos = read_varint(data, pos)[1]
        elif wire_type == 1:
            pos += 8
            if pos > n:
                raise MalformedRequestError("truncated fixed64")
        elif wire_type == 5:
            pos += 4
            if pos > n:
                raise MalformedRequestError("truncated fixed32")
        elif wire_type == 3:
            if groups is None:
                groups = []
            elif len(groups) >= MAX_GROUP_DEPTH:
                raise MalformedRequestError("groups nested too deeply")
            groups.append(tag >> 3)
        elif wire_type == 4:
            if not groups or groups[-1] != tag >> 3:
                raise MalformedRequestError("unmatched end-group tag")
            groups.pop()
        else:
            raise MalformedRequestError(f"invalid wire type {wire_type}")
    if groups:
        raise MalformedRequestError("unterminated group")
    return namespace


def read_varint(
    data: bytes, pos: int, max_bytes: int = 10, what: str = "varint"
) -> tuple[int, int]:
    """The one varint reader of `proxy.wire`: (value, position after it).

    At most `max_bytes` bytes (10 for values; 5 for tags and lengths, as upb) and no bits
    beyond 64 (Go's overflow check); MalformedRequestError (`malformed <what>`) otherwise.
    """
    value = shift = 0
    start = pos
    stop = min(pos + max_bytes, len(data))
    while pos < stop:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if pos - start == 10 and b > 1:
                raise MalformedRequestError("varint overflows 64 bits")
            return value, pos
        shift += 7
    raise MalformedRequestError(f"malformed {what}")
