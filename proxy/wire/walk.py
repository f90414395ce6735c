"""Walking already-validated protobuf bytes field by field (upstream ListNamespaces answers).

Not a validator, and not for caller bytes (those go through `proxy.wire.read` at C speed):
callers pass bytes a parser has accepted, or a trusted peer sent, and tolerate a
`MalformedRequestError` on anything odd. Groups end the walk. The cost is linear in the bytes
given, so a caller bounds those (gRPC's receive limit for upstream answers).
"""

from __future__ import annotations

from collections.abc import Iterator

from proxy.errors import MalformedRequestError
from proxy.wire.read import read_varint

__all__ = ["iter_fields"]


def iter_fields(
    data: bytes, *, max_fields: int | None = None
) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (field number, wire type, field start, value start, field end) per top-level field;
    MalformedRequestError after `max_fields` fields (when given) or on anything odd."""
    pos, n = 0, len(data)
    count = 0
    while pos < n:
        count += 1
        if max_fields is not None and count > max_fields:
            raise MalformedRequestError(f"more than {max_fields} fields")
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
            raise MalformedRequestError(f"unsupported wire type {wire}")
        if pos > n:
            raise MalformedRequestError("field past the end")
        yield tag >> 3, wire, start, value_start, pos
