"""extract_namespace against the real protobuf parser (upb), on tables and generated inputs.

Oracles:
- the real request message (`Msg.FromString(data).namespace`), and
- a "probe" message compiled at test time: proto3 `message Probe { string namespace = N; }`.
  Every other field is unknown to it, so upb checks exactly what a top-level walk can see:
  the structure of all top-level fields and unknown groups, and UTF-8 of field N.

Documented differences, asserted precisely in `_check`:
1. Stricter than upb where Go's protobuf (which Temporal runs) rejects: a varint whose 10th
   byte is > 1 (64-bit overflow) and field number 0 inside an unknown group.
2. Looser than the real message: the walk does not look inside length-delimited fields other
   than the namespace, so a rejection caused by their contents (a malformed sub-message,
   invalid UTF-8 in another string field, a malformed packed array) is not seen. With those
   fields removed the real parser must accept the bytes.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.command.v1 import message_pb2 as command_pb2
from temporalio.api.common.v1 import message_pb2 as common_pb2
from temporalio.api.taskqueue.v1 import message_pb2 as taskqueue_pb2
from temporalio.api.workflowservice.v1 import request_response_pb2 as rr

from proxy.errors import MalformedRequestError
from proxy.methods import lookup
from proxy.wire.read import (
    _CHUNK,
    MAX_GROUP_DEPTH,
    MAX_GROUP_WALK_BYTES,
    _walk_exact,
    extract_namespace,
    peek_bytes,
    read_string,
)

WF = "/temporal.api.workflowservice.v1.WorkflowService/"

# (request class, method) pairs; the namespace field number comes from the method table, so
# these tests also tie the table to the wire format.
REQUESTS: dict[str, type[Message]] = {
    "StartWorkflowExecution": rr.StartWorkflowExecutionRequest,
    "RespondActivityTaskCompleted": rr.RespondActivityTaskCompletedRequest,
    "RespondQueryTaskCompleted": rr.RespondQueryTaskCompletedRequest,
    "RespondWorkflowTaskCompleted": rr.RespondWorkflowTaskCompletedRequest,
    "ListNamespaces": rr.ListNamespacesRequest,
}


def _field_of(method: str) -> int | None:
    info = lookup(WF + method)
    assert info is not None
    return info.namespace_field


# --- encoding helpers ------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        if value < 0x80:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def group(number: int, body: bytes = b"") -> bytes:
    return tag(number, 3) + body + tag(number, 4)


# --- oracles ---------------------------------------------------------------------------------


@functools.cache
def probe_class(field_number: int | None) -> type[Message]:
    name = f"Probe{field_number or 0}"
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"probe_{name}.proto", package="wiretest", syntax="proto3"
    )
    msg = fdp.message_type.add(name=name)
    if field_number is not None:
        msg.field.add(
            name="namespace",
            number=field_number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"wiretest.{name}"))


def probe(data: bytes, field_number: int | None) -> str | None:
    """upb's view of the top level: the namespace, or None when upb rejects the bytes."""
    try:
        msg: Any = probe_class(field_number).FromString(data)
    except DecodeError:
        return None
    return str(msg.namespace) if field_number is not None else ""


def extract_or_none(data: bytes, field_number: int | None) -> str | None:
    # Anything but MalformedRequestError propagates and fails the test.
    try:
        return extract_namespace(data, field_number)
    except MalformedRequestError:
        return None


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def _walk(
    data: bytes, pos: int = 0, group_number: int | None = None
) -> tuple[list[tuple[int, int, int, int]], int, bool]:
    """Reference walk for bytes known to be structurally valid (recursive, unchecked).

    Returns the (number, wire_type, start, end) spans of this level, the end position and
    whether a Go-only rule is broken anywhere (field number 0, 64-bit varint overflow).
    """
    spans: list[tuple[int, int, int, int]] = []
    go_only = False
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        go_only |= number == 0
        if wire_type == 4:
            assert number == group_number
            return spans, pos, go_only
        if wire_type == 0:
            value_start = pos
            _, pos = _read_varint(data, pos)
            go_only |= pos - value_start == 10 and data[pos - 1] > 1
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            size, pos = _read_varint(data, pos)
            pos += size
        elif wire_type == 3:
            _, pos, inner = _walk(data, pos, number)
            go_only |= inner
        else:
            raise AssertionError(f"wire type {wire_type} in supposedly valid bytes")
        spans.append((number, wire_type, start, pos))
    assert group_number is None
    return spans, pos, go_only


def _without_nested(data: bytes, cls: type[Message], field_number: int | None) -> bytes:
    """The bytes minus every top-level LEN field the message declares, except the namespace."""
    declared = {f.number for f in cls.DESCRIPTOR.fields} - {field_number}
    spans, _, _ = _walk(data)
    return b"".join(
        data[start:end]
        for number, wire_type, start, end in spans
        if not (wire_type == 2 and number in declared)
    )


def _check(data: bytes, cls: type[Message], field_number: int | None) -> None:
    """The full contract between extract_namespace and the real parsers, for any bytes."""
    got = extract_or_none(data, field_number)
    top = probe(data, field_number)
    if top is None:
        # upb rejects something visible at the top level: so must we.
        assert got is None, "accepted bytes that upb rejects at the top level"
    elif _walk(data)[2]:
        # Difference 1: upb accepts, Go rejects, and so do we.
        assert got is None, "accepted bytes Go rejects"
    else:
        assert got == top
    try:
        real: Any = cls.FromString(data)
    except DecodeError:
        if got is not None:
            # Difference 2: the cause must be inside a skipped LEN field.
            cls.FromString(_without_nested(data, cls, field_number))
        return
    assert top is not None, "real message accepted what the probe rejected"
    if got is not None:
        expected = real.namespace if field_number is not None else ""
        assert got == expected


# --- table tests -----------------------------------------------------------------------------


def test_empty_bytes() -> None:
    assert extract_namespace(b"", 1) == ""
    assert extract_namespace(b"", None) == ""


def test_absent_field() -> None:
    data = rr.StartWorkflowExecutionRequest(workflow_id="wf", identity="me").SerializeToString()
    assert extract_namespace(data, 1) == ""


def test_none_field_number_still_validates() -> None:
    data = rr.StartWorkflowExecutionRequest(namespace="ns").SerializeToString()
    assert extract_namespace(data, None) == ""
    with pytest.raises(MalformedRequestError):
        extract_namespace(data[:-1], None)


@pytest.mark.parametrize(
    ("method", "message", "expected_field"),
    [
        (
            "StartWorkflowExecution",
            rr.StartWorkflowExecutionRequest(
                namespace="orders",
                workflow_id="wf-1",
                workflow_type=common_pb2.WorkflowType(name="Flow"),
                task_queue=taskqueue_pb2.TaskQueue(name="q"),
                input=common_pb2.Payloads(payloads=[common_pb2.Payload(data=b"\xff" * 300)]),
                identity="id",
            ),
            1,
        ),
        (
            "RespondActivityTaskCompleted",
            rr.RespondActivityTaskCompletedRequest(
                task_token=b"\x0a\x05other", identity="w", namespace="orders"
            ),
            4,
        ),
        (
            "RespondQueryTaskCompleted",
            rr.RespondQueryTaskCompletedRequest(
                task_token=b"t", error_message="e", namespace="orders"
            ),
            6,
        ),
        (
            "RespondWorkflowTaskCompleted",
            rr.RespondWorkflowTaskCompletedRequest(
                task_token=b"\x0a\x05other",
                identity="w",
                namespace="orders",
                commands=[
                    command_pb2.Command(
                        signal_external_workflow_execution_command_attributes=(
                            command_pb2.SignalExternalWorkflowExecutionCommandAttributes(
                                namespace="elsewhere"
                            )
                        )
                    )
                ],
            ),
            9,
        ),
    ],
)
def test_field_numbers(method: str, message: Message, expected_field: int) -> None:
    field_number = _field_of(method)
    assert field_number == expected_field
    data = message.SerializeToString()
    assert extract_namespace(data, field_number) == "orders"
    # The wrong field number finds something else (or nothing), never "orders" by accident.
    assert extract_namespace(data, 1 if expected_field != 1 else 2) != "orders"


def test_last_occurrence_wins() -> None:
    first = rr.StartWorkflowExecutionRequest(namespace="a", workflow_id="x").SerializeToString()
    second = rr.StartWorkflowExecutionRequest(namespace="b").SerializeToString()
    data = first + second
    assert rr.StartWorkflowExecutionRequest.FromString(data).namespace == "b"
    assert extract_namespace(data, 1) == "b"
    assert extract_namespace(second + first, 1) == "a"


def test_large_namespace_and_multibyte_lengths() -> None:
    ns = "n" * 300 + "é" * 20000
    data = ld(2, b"x" * 70000) + ld(1, ns.encode())
    assert extract_namespace(data, 1) == ns


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Another wire type at the namespace number is an unknown field to the real parsers.
        (tag(1, 0) + varint(5), ""),
        (ld(1, b"ab") + tag(1, 0) + varint(5), "ab"),
        (tag(1, 0) + varint(5) + ld(1, b"ab"), "ab"),
        (ld(1, b"ab") + tag(1, 5) + b"\x00" * 4, "ab"),
        (ld(1, b"ab") + tag(1, 1) + b"\x00" * 8, "ab"),
        # A group at the namespace number, even one holding a LEN field 1, is opaque.
        (ld(1, b"ab") + group(1, ld(1, b"zz")), "ab"),
        (group(3, ld(1, b"zz")), ""),
        # Invalid UTF-8 at the same number inside a group, or in another field: not our field.
        (group(3, ld(1, b"\xff")) + ld(1, b"ok"), "ok"),
        (ld(1000, b"\xff") + ld(1, b"ok"), "ok"),
        (ld(1, b"\x00"), "\x00"),
        (ld(1, "\U0010ffff".encode()), "\U0010ffff"),
        # Non-minimal encodings are accepted by both parsers.
        (b"\x8a\x00\x02ab", "ab"),
        (b"\x0a\x82\x80\x80\x80\x00ab", "ab"),
        (group(536870911), ""),
        (tag(2, 0) + b"\xff" * 9 + b"\x01", ""),
        (group(3, b"") * 2 + b"\x1b" * MAX_GROUP_DEPTH + b"\x1c" * MAX_GROUP_DEPTH, ""),
    ],
)
def test_accepted(data: bytes, expected: str) -> None:
    assert extract_namespace(data, 1) == expected
    assert probe(data, 1) == expected
    assert rr.StartWorkflowExecutionRequest.FromString(data).namespace == expected


@pytest.mark.parametrize(
    "data",
    [
        ld(2, b"\xff") + ld(1, b"ok"),  # workflow_id (a string) with invalid UTF-8
        ld(3, b"\x00") + ld(1, b"ok"),  # workflow_type: a sub-message with field number 0
        ld(1, b"ok") + ld(21, b"\x0a\x05ab"),  # completion_callbacks[]: truncated inside
    ],
)
def test_nested_damage_is_not_seen(data: bytes) -> None:
    # Difference 2: the top-level walk does not parse other fields' contents. Temporal's
    # parser rejects these bodies itself, after the (correctly extracted) namespace check.
    assert extract_namespace(data, 1) == "ok"
    with pytest.raises(DecodeError):
        rr.StartWorkflowExecutionRequest.FromString(data)


MALFORMED: list[tuple[str, bytes]] = [
    ("truncated tag", b"\x80"),
    ("truncated varint value", tag(2, 0) + b"\x80\x80"),
    ("truncated length", tag(1, 2)),
    ("truncated multi-byte length", tag(1, 2) + b"\x80"),
    ("length past the end", ld(1, b"abc")[:-1]),
    ("huge length", tag(1, 2) + b"\xff\xff\xff\xff\x0f" + b"ab"),
    ("truncated fixed64", tag(2, 1) + b"\x00" * 7),
    ("truncated fixed32", tag(2, 5) + b"\x00" * 3),
    ("varint longer than 10 bytes", tag(2, 0) + b"\xff" * 10 + b"\x01"),
    ("tag longer than 5 bytes", b"\x88\x80\x80\x80\x80\x00\x00"),
    ("length longer than 5 bytes", b"\x0a\x82\x80\x80\x80\x80\x00ab"),
    ("field number 0 varint", b"\x00\x00"),
    ("field number 0 len", b"\x02\x00"),
    ("field number 0 non-minimal", b"\x80\x00\x00"),
    ("field number 2**29", tag(2**29, 0) + b"\x00"),
    ("tag above 32 bits", b"\xf8\xff\xff\xff\x1f\x00"),
    ("wire type 6", tag(1, 6)),
    ("wire type 7", tag(2, 7) + b"\x00"),
    ("wire type 7 in a group", group(3, tag(2, 7))),
    ("end group at top level", tag(3, 4)),
    ("end group with no start", ld(1, b"ab") + tag(1, 4)),
    ("unterminated group", tag(3, 3) + ld(1, b"ab")),
    ("mismatched end group", tag(3, 3) + tag(4, 4)),
    ("crossed groups", tag(3, 3) + tag(4, 3) + tag(3, 4) + tag(4, 4)),
    ("truncated field in a group", group(3, ld(2, b"ab")[:-1])),
    ("groups too deep", b"\x1b" * (MAX_GROUP_DEPTH + 1) + b"\x1c" * (MAX_GROUP_DEPTH + 1)),
    ("invalid utf-8", ld(1, b"ns-\xff")),
    ("invalid utf-8, overlong", ld(1, b"\xc0\x80")),
    ("invalid utf-8, surrogate", ld(1, b"\xed\xa0\x80")),
    ("invalid utf-8, above U+10FFFF", ld(1, b"\xf4\x90\x80\x80")),
    ("invalid utf-8, truncated sequence", ld(1, b"secret-ns\xe2\x82")),
    ("invalid utf-8 in an earlier occurrence", ld(1, b"\xff") + ld(1, b"secret-ns")),
]


@pytest.mark.parametrize(("case", "data"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_malformed(case: str, data: bytes) -> None:
    with pytest.raises(MalformedRequestError) as exc_info:
        extract_namespace(data, 1)
    # The message never echoes request bytes.
    assert "secret" not in str(exc_info.value)
    # The real parser rejects these too (this is what makes them "malformed").
    with pytest.raises(DecodeError):
        rr.StartWorkflowExecutionRequest.FromString(data)


@pytest.mark.parametrize(
    "data",
    [
        tag(2, 0) + b"\xff" * 9 + b"\x02",  # 10th byte > 1: overflows 64 bits
        group(3, tag(2, 0) + b"\xff" * 9 + b"\x7f"),
        group(3, b"\x00\x00"),  # field number 0 inside an unknown group
        group(3, group(0)),
    ],
)
def test_stricter_than_upb_where_go_rejects(data: bytes) -> None:
    # upb accepts these; Go's protobuf (Temporal's parser) rejects them, and so do we.
    assert probe(data, 1) == ""
    assert _walk(data)[2]
    with pytest.raises(MalformedRequestError):
        extract_namespace(data, 1)


def test_accepts_bytearray_and_memoryview() -> None:
    data = ld(1, b"ns") + ld(2, b"x")
    assert extract_namespace(bytearray(data), 1) == "ns"  # type: ignore[arg-type]
    assert extract_namespace(memoryview(data), 1) == "ns"  # type: ignore[arg-type]


# --- generated inputs ------------------------------------------------------------------------

namespaces = st.text(max_size=40) | st.sampled_from(["", "default", "temporal-system", "é"])
short_text = st.text(max_size=12)
payloads = st.builds(
    lambda items: common_pb2.Payloads(
        payloads=[common_pb2.Payload(metadata={"encoding": m}, data=d) for m, d in items]
    ),
    st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=200)), max_size=3),
)


def _start(ns: str, wf_id: str, ident: str, inp: common_pb2.Payloads, queue: str) -> Message:
    return rr.StartWorkflowExecutionRequest(
        namespace=ns,
        workflow_id=wf_id,
        identity=ident,
        input=inp,
        task_queue=taskqueue_pb2.TaskQueue(name=queue),
        request_eager_execution=bool(len(wf_id) % 2),
    )


def _activity_done(ns: str, token: bytes, ident: str, result: common_pb2.Payloads) -> Message:
    return rr.RespondActivityTaskCompletedRequest(
        namespace=ns, task_token=token, identity=ident, result=result
    )


def _query_done(ns: str, token: bytes, err: str, result: common_pb2.Payloads) -> Message:
    return rr.RespondQueryTaskCompletedRequest(
        namespace=ns, task_token=token, error_message=err, query_result=result
    )


def _workflow_task_done(ns: str, token: bytes, nested: list[str], page: int) -> Message:
    # Nested namespaces in commands must never be taken for the request's own.
    commands = [
        command_pb2.Command(
            signal_external_workflow_execution_command_attributes=(
                command_pb2.SignalExternalWorkflowExecutionCommandAttributes(
                    namespace=n, signal_name="s"
                )
            )
        )
        for n in nested
    ]
    return rr.RespondWorkflowTaskCompletedRequest(
        namespace=ns, task_token=token, commands=commands, page_number=page
    )


def _list_namespaces(page_size: int, token: bytes) -> Message:
    return rr.ListNamespacesRequest(page_size=page_size, next_page_token=token)


MESSAGES: dict[str, st.SearchStrategy[Message]] = {
    "StartWorkflowExecution": st.builds(
        _start, namespaces, short_text, short_text, payloads, short_text
    ),
    "RespondActivityTaskCompleted": st.builds(
        _activity_done, namespaces, st.binary(max_size=30), short_text, payloads
    ),
    "RespondQueryTaskCompleted": st.builds(
        _query_done, namespaces, st.binary(max_size=30), short_text, payloads
    ),
    "RespondWorkflowTaskCompleted": st.builds(
        _workflow_task_done,
        namespaces,
        st.binary(max_size=30),
        st.lists(namespaces, max_size=3),
        st.integers(-(2**31), 2**31 - 1),
    ),
    "ListNamespaces": st.builds(
        _list_namespaces, st.integers(-(2**31), 2**31 - 1), st.binary(max_size=20)
    ),
}


def _unknown_field(
    field_number: int | None,
) -> st.SearchStrategy[bytes]:
    """A well-formed field the message does not declare, or the namespace number with a
    wire type other than LEN (unknown to the real parsers too)."""
    unknown = st.integers(1000, 2**29 - 1)
    scalar = st.one_of(
        st.builds(lambda n, v: tag(n, 0) + varint(v), unknown, st.integers(0, 2**64 - 1)),
        st.builds(lambda n, b: tag(n, 1) + b, unknown, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, b: tag(n, 5) + b, unknown, st.binary(min_size=4, max_size=4)),
        st.builds(ld, unknown, st.binary(max_size=20)),
    )
    nested = st.recursive(
        scalar,
        lambda inner: st.builds(
            lambda n, body: group(n, b"".join(body)), unknown, st.lists(inner, max_size=3)
        ),
        max_leaves=6,
    )
    if field_number is None:
        return nested
    same_number = st.one_of(
        st.builds(lambda v: tag(field_number, 0) + varint(v), st.integers(0, 2**64 - 1)),
        st.just(tag(field_number, 5) + b"\x01\x02\x03\x04"),
        st.just(tag(field_number, 1) + b"\x00" * 8),
        st.builds(lambda body: group(field_number, body), st.binary(max_size=0) | nested),
        # The namespace number inside an unknown group belongs to the group, not the request.
        st.builds(lambda n, ns: group(n, ld(field_number, ns.encode())), unknown, namespaces),
    )
    return nested | same_number


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(MESSAGES)))
    field_number = _field_of(method)
    parts = [draw(MESSAGES[method]).SerializeToString()]
    if draw(st.booleans()):  # a second serialization: repeated fields, last one wins
        parts.append(draw(MESSAGES[method]).SerializeToString())
    for _ in range(draw(st.integers(0, 3))):
        parts.insert(draw(st.integers(0, len(parts))), draw(_unknown_field(field_number)))
    return method, b"".join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(well_formed())
def test_well_formed_requests_match_the_real_parser(case: tuple[str, bytes]) -> None:
    method, data = case
    cls = REQUESTS[method]
    field_number = _field_of(method)
    real: Any = cls.FromString(data)
    expected = real.namespace if field_number is not None else ""
    assert extract_namespace(data, field_number) == expected


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        i = draw(st.integers(0, len(buf)))
        if op == "flip" and i < len(buf):
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and i < len(buf):
            buf[i] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=3))
        elif op == "delete":
            del buf[i : i + draw(st.integers(1, 3))]
        elif op == "truncate":
            del buf[i:]
        elif op == "splice":
            j = draw(st.integers(0, len(buf)))
            buf[i:i] = buf[min(i, j) : max(i, j)]
    return bytes(buf)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    method, data = draw(well_formed())
    return method, _mutate(data, draw)


@st.composite
def wireish(draw: st.DrawFn) -> tuple[str, bytes]:
    """Token soup biased towards the interesting paths: tags of every wire type at small
    field numbers (0, the namespace number), group markers, lengths that may lie, random
    payloads (often invalid UTF-8)."""
    method = draw(st.sampled_from(sorted(MESSAGES)))
    numbers = st.sampled_from([0, 1, 2, 3, 4, 6, 9, 15, 16, 2**29 - 1, 2**29])
    leaf = st.one_of(
        st.builds(tag, numbers, st.integers(0, 7)),
        st.builds(ld, numbers, st.binary(max_size=6)),
        st.builds(varint, st.integers(0, 2**70)),
        st.binary(max_size=4),
        st.sampled_from([b"\xff" * 9 + b"\x01", b"\xff" * 9 + b"\x02", b"\x80" * 5 + b"\x00"]),
        # 10-byte varint values, with and without 64-bit overflow
        st.builds(
            lambda n, last: tag(n, 0) + b"\xff" * 9 + bytes([last]), numbers, st.integers(0, 3)
        ),
    )
    token = st.recursive(
        leaf,
        lambda inner: st.builds(
            lambda n, body: group(n, b"".join(body)), numbers, st.lists(inner, max_size=3)
        ),
        max_leaves=8,
    )
    return method, b"".join(draw(st.lists(token, max_size=8)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_requests_agree_with_the_real_parser(case: tuple[str, bytes]) -> None:
    method, data = case
    _check(data, REQUESTS[method], _field_of(method))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wireish())
def test_token_soup_agrees_with_the_real_parser(case: tuple[str, bytes]) -> None:
    method, data = case
    _check(data, REQUESTS[method], _field_of(method))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(sorted(MESSAGES)))
def test_arbitrary_bytes_agree_with_the_real_parser(data: bytes, method: str) -> None:
    _check(data, REQUESTS[method], _field_of(method))


# --- issue 14: the C-speed reader equals the exact field-by-field walk -----------------------
#
# `_walk_exact` is the Python walk this module used before (kept for small bodies with unknown
# groups); here it is the oracle for the upb reader and its Go-rule checks on every input.


def walk_or_none(data: bytes, field_number: int | None) -> str | None:
    try:
        return _walk_exact(data, field_number)
    except MalformedRequestError:
        return None


HIGH = st.binary(min_size=1, max_size=12).map(lambda b: bytes(x | 0x80 for x in b))


@st.composite
def lookalike_soup(draw: st.DrawFn) -> bytes:
    """Fields around the overflow rule: 9-10 byte varints whose last byte may overflow, runs of
    bytes >= 0x80 inside payloads and fixed values followed by (multi-byte) tags, non-minimal
    encodings, UTF-8 namespaces with 3-byte characters, and unknown groups."""
    numbers = st.sampled_from([1, 2, 3, 15, 16, 17, 300, 2**14, 2**21, 2**29 - 1])
    last = st.integers(0, 0x7F)
    run = st.integers(7, 11)
    leaf = st.one_of(
        st.builds(lambda n, r, x: tag(n, 0) + b"\xff" * r + bytes([x]), numbers, run, last),
        st.builds(lambda n, h, x: tag(n, 0) + h + bytes([x]), numbers, HIGH, last),
        st.builds(lambda n, h: ld(n, h + bytes([2]) + h), numbers, HIGH),
        st.builds(lambda n, h, x: ld(n, b"\x00" + h + bytes([x])), numbers, HIGH, last),
        st.builds(lambda n, h: tag(n, 1) + (h * 8)[:8], numbers, HIGH),
        st.builds(lambda n, h: tag(n, 5) + (h * 4)[:4], numbers, HIGH),
        st.builds(lambda s: ld(1, s.encode()), st.text("€a✓é", max_size=8)),
        st.just(b"\x0a\x82\x80\x80\x80\x00ab"),
        st.builds(varint, st.integers(0, 2**70)),
    )
    token = st.recursive(
        leaf,
        lambda inner: st.builds(
            lambda n, body: group(n, b"".join(body)), numbers, st.lists(inner, max_size=3)
        ),
        max_leaves=10,
    )
    return b"".join(draw(st.lists(token, max_size=10)))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lookalike_soup(), st.sampled_from([1, 4, None]))
def test_reader_equals_the_exact_walk_around_the_overflow_rule(
    data: bytes, field_number: int | None
) -> None:
    assert extract_or_none(data, field_number) == walk_or_none(data, field_number)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(wireish(), mutated()))
def test_reader_equals_the_exact_walk_on_soup_and_mutations(case: tuple[str, bytes]) -> None:
    method, data = case
    field_number = _field_of(method)
    assert extract_or_none(data, field_number) == walk_or_none(data, field_number)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Nine bytes >= 0x80 then 0x02 everywhere but in a varint value: all accepted.
        (ld(2, b"\x00" + b"\xff" * 9 + b"\x02") + ld(1, b"ns"), "ns"),
        (ld(1, "€€€b".encode()), "€€€b"),
        (tag(2, 1) + b"\xff" * 8 + b"\x80\x02" + b"\x00", ""),  # fixed64, then field 32's tag
        (ld(2, b"\xff" * 9) + b"\x78\x00", ""),  # a payload's tail, then field 15's tag
        (tag(2, 0) + b"\xff" * 9 + b"\x01" + ld(1, b"ns"), "ns"),  # 10th byte 1: no overflow
        # ... and in a varint value: refused, at the top level and inside a group.
        (ld(1, b"ns") + tag(2, 0) + b"\xff" * 9 + b"\x02", None),
        (group(3, tag(2, 0) + b"\xff" * 9 + b"\x7f") + ld(1, b"ns"), None),
    ],
)
def test_overflow_look_alikes(data: bytes, expected: str | None) -> None:
    assert extract_or_none(data, 1) == expected == walk_or_none(data, 1)


def test_unknown_groups_are_walked_exactly_up_to_a_bound_and_refused_beyond() -> None:
    filler = ld(2000, b"x" * 1000)  # a field the reader does not know
    small = group(3, b"\x08\x01") + filler * 10 + ld(1, b"ns")
    assert extract_namespace(small, 1) == "ns"
    with pytest.raises(MalformedRequestError):
        extract_namespace(group(3, b"\x00\x00") + filler * 10, 1)  # field 0 in a group
    big = group(3, b"\x08\x01") + filler * (MAX_GROUP_WALK_BYTES // 1000 + 1) + ld(1, b"ns")
    assert len(big) > MAX_GROUP_WALK_BYTES
    with pytest.raises(MalformedRequestError, match="unknown groups"):
        extract_namespace(big, 1)
    # Without the group, the same size is read as usual.
    assert extract_namespace(big[4:], 1) == "ns"


@pytest.mark.parametrize("count", [1, 64, 65, 3000, 30_000])
@pytest.mark.parametrize("field", [2, 2000], ids=["payload-field", "unknown-field"])
def test_many_look_alikes_in_payloads_and_one_real_overflow(count: int, field: int) -> None:
    # Every way of checking is exact: spliced or masked copy, small bodies (residue first) and
    # bodies over 256 KiB (30,000 look-alikes: plain probe, then the residue).
    payload = (b"\x00" + b"\xff" * 9 + b"\x02") * count
    body = ld(field, payload) + ld(1, b"ns")
    assert extract_namespace(body, 1) == "ns" == _walk_exact(body, 1)
    tiny = tag(3, 0) + b"\x00"
    assert extract_namespace(tiny * count + body, 1) == "ns"
    bad = body + tag(3, 0) + b"\xff" * 9 + b"\x02"
    with pytest.raises(MalformedRequestError, match="overflow"):
        extract_namespace(bad, 1)
    assert walk_or_none(bad, 1) is None


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        (ld(2, ld(1, b"wf")), (2, 1), "wf"),
        (ld(2, ld(1, b"one")) + ld(2, ld(2, b"run")), (2, 1), "one"),  # sub-messages merge
        (ld(2, ld(1, b"one")) + ld(2, ld(1, b"two")), (2, 1), "two"),
        (ld(3, b"x"), (2, 1), ""),
        (ld(2, b"wf"), (2,), "wf"),
    ],
)
def test_read_string_follows_sub_messages(
    data: bytes, path: tuple[int, ...], expected: str
) -> None:
    assert read_string(data, path) == expected


@pytest.mark.parametrize(
    "data",
    [
        ld(2, ld(1, b"\xff")),  # invalid UTF-8 in the leaf
        ld(2, tag(3, 0) + b"\xff" * 9 + b"\x02" + ld(1, b"wf")),  # overflow inside the path
        ld(2, group(4, b"\x00\x00") + ld(1, b"wf")),  # field 0 in a group inside the path
        ld(2, ld(1, b"wf")) + b"\x0f",
    ],
)
def test_read_string_applies_the_rules_along_the_path(data: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        read_string(data, (2, 1))


def test_peek_bytes_is_lenient_about_utf8() -> None:
    assert peek_bytes(ld(1, ld(1, b"\xffname")), (1, 1)) == b"\xffname"
    assert peek_bytes(b"", (1, 1)) == b""


@pytest.mark.parametrize("end", [b"\x02", b"\x01"], ids=["overflow", "no-overflow"])
@pytest.mark.parametrize("many", [True, False], ids=["many-look-alikes", "none-else"])
def test_varint_across_a_mask_chunk_boundary_in_a_large_body(end: bytes, many: bool) -> None:
    # Over 256 KiB the body is scanned, and with many look-alikes (here in a field above 63,
    # unknown to every probe) zeroed, chunk by chunk: a 10-byte value at each offset around a
    # chunk boundary.
    look = b"\x00" + b"\xff" * 9 + b"\x02" if many else b"\x00" * 11
    rest = ld(100, look * 30_000)  # > 256 KiB in all
    for start in range(2 * _CHUNK - 11, 2 * _CHUNK + 2):
        head = ld(1, b"ns") + ld(100, look * 11_000)  # ~121 KiB: the value lands near 128 KiB
        pad = start - 1 - len(head)
        head += tag(3, 0) + b"\x80\x01" if pad % 2 else b""  # a 3-byte field fixes the parity
        head += (tag(3, 0) + b"\x00") * ((start - 1 - len(head)) // 2)
        body = head + tag(3, 0) + b"\xff" * 9 + end + rest
        assert body[start : start + 10] == b"\xff" * 9 + end
        if end == b"\x02":
            with pytest.raises(MalformedRequestError, match="overflow"):
                extract_namespace(body, 1)
        else:
            assert extract_namespace(body, 1) == "ns"
