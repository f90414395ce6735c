"""Hostile bytes: the engine answers with its own errors only, never another exception."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.api.protocol.v1 import Message as ProtocolMessage
from temporalio.api.update.v1 import Outcome, Response
from temporalio.api.workflowservice.v1 import RespondWorkflowTaskCompletedRequest

from proxy.encryption import (
    EncryptionError,
    EncryptionPlan,
    NamespaceKeys,
    decrypt_response,
    encrypt_request,
    find_unknown_fields,
)
from proxy.wire.write import encode_varint

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
RESPOND = WF + "RespondWorkflowTaskCompleted"


def _seed() -> bytes:
    req = RespondWorkflowTaskCompletedRequest(task_token=b"t", messages=[ProtocolMessage(id="1")])
    req.messages[0].body.Pack(
        Response(outcome=Outcome(success=Payloads(payloads=[Payload(data=b"ok")])))
    )
    return req.SerializeToString()


SEED = _seed()
_mutated = st.tuples(
    st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=4),
    st.binary(max_size=16),
).map(lambda t: _apply(*t))


def _apply(edits: list[tuple[int, int]], tail: bytes) -> bytes:
    data = bytearray(SEED)
    for pos, value in edits:
        data[pos] = value
    return bytes(data) + tail


def _deep_failure(depth: int) -> bytes:
    """Failure.cause nested `depth` times, built as bytes (the classes refuse to go that deep)."""
    cause = Failure.DESCRIPTOR.fields_by_name["cause"].number
    data = Failure(encoded_attributes=Payload(data=b"x")).SerializeToString()
    for _ in range(depth):
        data = encode_varint(cause << 3 | 2) + encode_varint(len(data)) + data
    return data


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(st.binary(max_size=200), _mutated))
def test_requests_and_responses_of_any_bytes(
    plan: EncryptionPlan, keys: NamespaceKeys, body: bytes
) -> None:
    for call in (
        lambda: encrypt_request(plan, RESPOND, body, keys),
        lambda: encrypt_request(plan, RESPOND, body, keys, reject_unknown=False),
        lambda: find_unknown_fields(plan, RESPOND, body),
        lambda: decrypt_response(plan, WF + "PollWorkflowTaskQueue", body, keys),
    ):
        with contextlib.suppress(EncryptionError):
            call()


def test_deep_nesting_is_a_parse_error_not_a_crash(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    # Failure.cause chains are the API's recursion; protobuf's depth limit stops them first.
    from temporalio.api.workflowservice.v1 import RespondActivityTaskFailedRequest

    sealed_at: list[int] = []
    refused_at: list[int] = []
    for depth in (50, 95, 200):
        body = (
            RespondActivityTaskFailedRequest(namespace="n").SerializeToString()
            + b"\x12"  # field 2: failure
            + encode_varint(len(inner := _deep_failure(depth)))
            + inner
        )
        try:
            out = encrypt_request(plan, WF + "RespondActivityTaskFailed", body, keys)
        except EncryptionError:
            refused_at.append(depth)
            continue
        assert out.encrypted == 1
        sealed_at.append(depth)
    # A realistic depth is sealed; only past protobuf's recursion limit is it refused.
    assert 50 in sealed_at and 200 in refused_at, (sealed_at, refused_at)
