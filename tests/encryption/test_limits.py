"""Hostile requests: work done per request is bounded (payloads sealed, messages walked)."""

from __future__ import annotations

import pytest
from temporalio.api.common.v1 import Callback, Payload, Payloads
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest

from proxy.encryption import (
    EncryptionPlan,
    LimitExceededError,
    NamespaceKeys,
    encrypt_request,
    find_unknown_fields,
)
from proxy.encryption.unknown import DEFAULT_MAX_NODES

START = "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution"


def test_payload_count_is_bounded(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    body = StartWorkflowExecutionRequest(
        namespace="n", input=Payloads(payloads=[Payload() for _ in range(11)])
    ).SerializeToString()
    assert encrypt_request(plan, START, body, keys, max_payloads=11).encrypted == 11
    with pytest.raises(LimitExceededError) as info:
        encrypt_request(plan, START, body, keys, max_payloads=10)
    assert info.value.what == "payloads"
    assert info.value.limit == 10


def test_the_unknown_field_walk_is_bounded(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    # Many tiny messages plus one unknown field: forces the slow (Python) walk for its path.
    unknown = b"\xc2\x3e\x01x"  # field 1000, LEN, 1 byte
    req = StartWorkflowExecutionRequest(
        namespace="n", completion_callbacks=[Callback() for _ in range(DEFAULT_MAX_NODES + 1)]
    )
    body = req.SerializeToString() + unknown
    with pytest.raises(LimitExceededError) as info:
        encrypt_request(plan, START, body, keys)
    assert info.value.what == "messages to check"
    with pytest.raises(LimitExceededError):
        find_unknown_fields(plan, START, body)
    # Below the bound the same shape is walked and the field found.
    small = StartWorkflowExecutionRequest(namespace="n", completion_callbacks=[Callback()] * 10)
    assert find_unknown_fields(plan, START, small.SerializeToString() + unknown) == ("1000",)


def _nested_status(depth: int, payload: Payload | None = None) -> bytes:
    """google.rpc.Status -> MultiOperationExecutionFailure -> OperationStatus.details (Any) ...
    nested `depth` times, a payload at the bottom: each level is a separately parsed Any."""
    from google.protobuf.any_pb2 import Any as AnyPb
    from google.rpc.status_pb2 import Status
    from temporalio.api.errordetails.v1 import MultiOperationExecutionFailure, QueryFailedFailure
    from temporalio.api.failure.v1 import Failure

    packed = AnyPb()
    leaf = payload or Payload(data=b"x")
    packed.Pack(QueryFailedFailure(failure=Failure(encoded_attributes=leaf)))
    for _ in range(depth):
        mo = MultiOperationExecutionFailure(
            statuses=[MultiOperationExecutionFailure.OperationStatus(code=3, details=[packed])]
        )
        packed = AnyPb()
        packed.Pack(mo)
    status = Status(code=3)
    status.details.append(packed)
    return status.SerializeToString()


def test_nesting_of_separately_parsed_bodies_is_bounded(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    from proxy.encryption import decrypt_status_details, encrypt_message
    from proxy.encryption.plan import MAX_NESTING

    shallow = _nested_status(MAX_NESTING - 2)
    assert encrypt_message(plan, "google.rpc.Status", shallow, keys).encrypted == 1
    deep = _nested_status(MAX_NESTING + 40)  # protobuf's own depth limit never sees this
    # Sealing refuses (what lies below could not be sealed); opening leaves it as it is.
    with pytest.raises(LimitExceededError, match="nested levels"):
        encrypt_message(plan, "google.rpc.Status", deep, keys)
    sealed_leaf = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"new"},
        data=keys.ring.seal("new", Payload(data=b"x").SerializeToString()),
    )
    deep = _nested_status(MAX_NESTING + 40, sealed_leaf)
    out = decrypt_status_details(plan, "QueryWorkflow", deep, keys)
    assert out.decrypted == 0
    assert out.body is deep
