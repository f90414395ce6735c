"""Namespace extraction from raw protobuf request bytes, without deserializing the message.

The walk visits the top-level fields only; the contents of length-delimited fields are skipped
(except the namespace field's own bytes) and unknown groups are walked for balance, as a real
parser does. The rules match what Python's upb parser and Go's protobuf (which Temporal runs)
do at the top level, and where the two differ the stricter one wins, so a body either of them
would reject is refused here too:

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
"""

from __future__ import annotations

from proxy.errors import MalformedRequestError

__all__ = ["MAX_GROUP_DEPTH", "extract_namespace"]

# upb's default decode depth in Python: 100 nested unknown groups parse, 101 do not.
# (Go's limit is 10000; the stricter one applies.)
MAX_GROUP_DEPTH = 100

_MAX_TAG = 0xFFFFFFFF  # field number <= 2**29 - 1 (protobuf's maximum) and a 3-bit wire type
_LEN = 2


def extract_namespace(data: bytes, field_number: int | None) -> str:
    """Return the request's top-level `namespace` string field, "" when it is absent.

    `field_number` is the method table's `namespace` field number; None (cluster-scope methods)
    still validates the message structure and returns "". Raises MalformedRequestError, and
    nothing else, when the bytes are not a well-formed protobuf message at the top level. The
    message never contains request bytes.
    """
    n = len(data)
    ns_tag = (field_number << 3) | _LEN if field_number is not None else -1
    namespace = ""
    groups: list[int] | None = None  # field numbers of open unknown groups, innermost last
    pos = 0
    while pos < n:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _read_tag(data, pos, n, tag)
        if tag < 8:
            raise MalformedRequestError("field number 0")
        wire_type = tag & 7
        if wire_type == _LEN:
            if pos >= n:
                raise MalformedRequestError("truncated length")
            size = data[pos]
            pos += 1
            if size >= 0x80:
                size, pos = _read_size(data, pos, n, size)
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
                pos = _skip_varint(data, pos, n)
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


def _read_tag(data: bytes, pos: int, n: int, first: int) -> tuple[int, int]:
    """Decode a multi-byte tag whose first byte (continuation bit set) was already read."""
    value = first & 0x7F
    shift = 7
    stop = min(pos + 4, n)  # at most 5 bytes in all
    while pos < stop:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if value > _MAX_TAG:
                raise MalformedRequestError("field number out of range")
            return value, pos
        shift += 7
    raise MalformedRequestError("malformed tag")


def _read_size(data: bytes, pos: int, n: int, first: int) -> tuple[int, int]:
    """Decode a multi-byte length (at most 5 bytes, as upb requires)."""
    value = first & 0x7F
    shift = 7
    stop = min(pos + 4, n)
    while pos < stop:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise MalformedRequestError("malformed length")


def _skip_varint(data: bytes, pos: int, n: int) -> int:
    """Skip a varint value: at most 10 bytes, and no bits beyond 64 (Go's overflow check)."""
    start = pos
    stop = min(pos + 10, n)
    while pos < stop:
        b = data[pos]
        pos += 1
        if b < 0x80:
            if pos - start == 10 and b > 1:
                raise MalformedRequestError("varint overflows 64 bits")
            return pos
    raise MalformedRequestError("malformed varint")
