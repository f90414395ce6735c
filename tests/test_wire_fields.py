"""proxy.wire.read.read_top_fields (caller's top-level fields at C speed) and proxy.wire.walk
(field iteration for trusted bytes, bounded)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.api.workflowservice.v1 import ListNamespacesRequest, ListNamespacesResponse

from proxy.errors import MalformedRequestError
from proxy.listfilter import FilteredListing, ListingError
from proxy.wire.read import read_top_fields
from proxy.wire.walk import iter_fields
from proxy.wire.write import encode_len_field, encode_varint

WANTED = {1: 0, 2: 2}


def varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def reference(data: bytes) -> tuple[dict[int, int | bytes], bytes]:
    """The field-by-field walk FilteredListing used before (last occurrence wins)."""
    values: dict[int, int | bytes] = {}
    rest = b""
    for number, wire, start, value_start, end in iter_fields(data):
        if number in WANTED and wire != WANTED[number]:
            raise MalformedRequestError("wire type")
        if number == 1:
            value, pos = 0, value_start
            shift = 0
            while True:
                b = data[pos]
                value |= (b & 0x7F) << shift
                pos += 1
                shift += 7
                if b < 0x80:
                    break
            values[1] = value
        elif number == 2:
            values[2] = data[value_start:end]
        else:
            rest += data[start:end]
    return values, rest


_fields = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 6), st.integers(0, 2**64 - 1)).map(lambda t: varint_field(*t)),
        st.tuples(st.integers(2, 6), st.binary(max_size=20)).map(lambda t: encode_len_field(*t)),
    ),
    max_size=12,
)


@given(_fields)
def test_read_top_fields_matches_the_field_walk(fields: list[bytes]) -> None:
    data = b"".join(fields)
    try:
        expected = reference(data)
    except MalformedRequestError:
        with pytest.raises(MalformedRequestError):
            read_top_fields(data, WANTED)
        return
    assert read_top_fields(data, WANTED) == expected


def test_last_occurrence_wins_and_the_rest_is_verbatim() -> None:
    other = encode_len_field(3, b"\x08\x01") + bytes([15 << 3 | 5]) + b"abcd"
    data = varint_field(1, 5) + encode_len_field(2, b"a") + other[:4] + varint_field(1, 7)
    data += encode_len_field(2, b"") + other[4:]
    assert read_top_fields(data, WANTED) == ({1: 7, 2: b""}, other)


@pytest.mark.parametrize(
    "data",
    [
        bytes([1 << 3 | 2, 0]),  # page_size as bytes
        bytes([1 << 3 | 1]) + bytes(8),  # page_size as fixed64
        bytes([1 << 3 | 5]) + bytes(4),  # page_size as fixed32
        varint_field(2, 1),  # next_page_token as a varint
        bytes([2 << 3 | 5]) + bytes(4),
        bytes([4 << 3 | 3, 4 << 3 | 4]),  # a group, any number
        bytes([1 << 3 | 3, 1 << 3 | 4]),
        b"\x08",  # truncated
        b"\x00\x00",  # field number 0
    ],
)
def test_read_top_fields_refuses(data: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        read_top_fields(varint_field(5, 1) + data, WANTED)


def test_a_caller_body_of_tiny_fields_is_read_in_one_c_parse() -> None:
    # 4 MiB of 2-byte unknown fields: read by upb, forwarded upstream as sent.
    body = bytes([3 << 3 | 0, 1]) * (2 * 1024 * 1024)
    listing = FilteredListing(body + varint_field(1, 3), lambda name: True)
    assert listing.page_size == 3
    upstream = ListNamespacesRequest.FromString(listing.next_request())
    assert upstream.page_size == 1000


def test_iter_fields_stops_after_max_fields() -> None:
    data = varint_field(3, 1) * 10
    assert len(list(iter_fields(data, max_fields=10))) == 10
    with pytest.raises(MalformedRequestError, match="more than 9 fields"):
        list(iter_fields(data, max_fields=9))


def test_an_upstream_page_with_too_many_fields_fails_closed() -> None:
    page = ListNamespacesResponse(next_page_token=b"t").SerializeToString()
    listing = FilteredListing(b"", lambda name: True, upstream_page_size=10)
    assert listing.feed(page + varint_field(9, 1) * 73) is not None  # 10 + 64 fields in all
    listing = FilteredListing(b"", lambda name: True, upstream_page_size=10)
    with pytest.raises(ListingError) as exc:
        listing.feed(page + varint_field(9, 1) * 74)
    assert (exc.value.status, exc.value.reason) == ("INTERNAL", "bad_response")
