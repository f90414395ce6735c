"""Walking already-validated protobuf bytes field by field (audit ids, response filtering).

Unlike `wire.extract_namespace` this is not a validator: callers pass bytes that a parser has
accepted (or tolerate a `ValueError` on anything odd). Groups end the walk.
"""

from __future__ import annotations

from collections.abc import Iterator


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    n = len(data)
    while True:
        if pos >= n or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (field number, wire type, field start, value start, field end) per top-level field."""
    pos, n = 0, len(data)
    while pos < n:
        start = pos
        tag, pos = read_varint(data, pos)
        wire = tag & 7
        value_start = pos
        if wire == 2:
            size, value_start = read_varint(data, pos)
            pos = value_start + size
        elif wire == 0:
            _, pos = read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("field past the end")
        yield tag >> 3, wire, start, value_start, pos


def last_len_field(data: bytes, field_number: int) -> bytes | None:
    """The value of the last top-level LEN occurrence of `field_number`, None if absent."""
    found: bytes | None = None
    for number, wire, _start, value_start, end in iter_fields(data):
        if number == field_number and wire == 2:
            found = data[value_start:end]
    return found
