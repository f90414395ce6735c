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
    # Many tiny messages plus a repeated singular field: forces the slow (Python) walk.
    req = StartWorkflowExecutionRequest(
        namespace="n", completion_callbacks=[Callback() for _ in range(DEFAULT_MAX_NODES + 1)]
    )
    body = (
        req.SerializeToString() + StartWorkflowExecutionRequest(namespace="n").SerializeToString()
    )
    with pytest.raises(LimitExceededError) as info:
        encrypt_request(plan, START, body, keys)
    assert info.value.what == "messages to check"
    with pytest.raises(LimitExceededError):
        find_unknown_fields(plan, START, body)
    # Below the bound the same shape is fine.
    small = StartWorkflowExecutionRequest(namespace="n", completion_callbacks=[Callback()] * 10)
    body = (
        small.SerializeToString() + StartWorkflowExecutionRequest(namespace="n").SerializeToString()
    )
    assert find_unknown_fields(plan, START, body) == ()
