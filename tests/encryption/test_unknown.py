"""Unknown length-delimited fields in requests: found at any depth, with field-number paths."""

from __future__ import annotations

import pytest
from temporalio.api.common.v1 import Payload, Payloads, WorkflowType
from temporalio.api.protocol.v1 import Message as ProtocolMessage
from temporalio.api.update.v1 import Outcome, Response
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    RespondWorkflowTaskCompletedRequest,
    SignalWorkflowExecutionRequest,
    StartWorkflowExecutionRequest,
)

from proxy.encryption import (
    EncryptionPlan,
    NamespaceKeys,
    UnknownFieldError,
    encrypt_request,
    find_unknown_fields,
)
from proxy.wire.write import encode_varint

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
START = WF + "StartWorkflowExecution"


def _tag(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def _len_field(number: int, data: bytes) -> bytes:
    assert len(data) < 128
    return _tag(number, 2) + bytes([len(data)]) + data


def _start() -> StartWorkflowExecutionRequest:
    return StartWorkflowExecutionRequest(
        namespace="payments",
        workflow_type=WorkflowType(name="W"),
        input=Payloads(payloads=[Payload(data=b'"x"')]),
    )


def test_a_clean_request_has_none(plan: EncryptionPlan) -> None:
    assert find_unknown_fields(plan, START, _start().SerializeToString()) == ()


def test_top_level_unknown_len_field(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    body = _start().SerializeToString() + _len_field(1000, b"hidden payload?")
    assert find_unknown_fields(plan, START, body) == ("1000",)
    with pytest.raises(UnknownFieldError) as info:
        encrypt_request(plan, START, body, keys)
    assert info.value.paths == ("1000",)
    assert "StartWorkflowExecution" in str(info.value)


def test_nested_unknown_field_path(plan: EncryptionPlan) -> None:
    # workflow_type (field 3) gets an unknown field 9 inside: path 3.9
    nested = WorkflowType(name="W").SerializeToString() + _len_field(9, b"zz")
    body = StartWorkflowExecutionRequest(namespace="payments").SerializeToString() + _len_field(
        3, nested
    )
    assert find_unknown_fields(plan, START, body) == ("3.9",)


def test_unknown_field_in_a_message_that_cannot_hold_payloads(plan: EncryptionPlan) -> None:
    # DescribeNamespace has no payloads today; a newer API could add one.
    body = DescribeNamespaceRequest(namespace="payments").SerializeToString() + _len_field(77, b"p")
    assert find_unknown_fields(plan, WF + "DescribeNamespace", body) == ("77",)


def test_unknown_varint_is_not_reported_and_survives(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    body = _start().SerializeToString() + _tag(1001, 0) + b"\x05"
    assert find_unknown_fields(plan, START, body) == ()
    sealed = encrypt_request(plan, START, body, keys)
    # The newer client's option reaches the server (it is re-encoded, not dropped).
    assert sealed.body.endswith(_tag(1001, 0) + b"\x05")


def test_forward_mode_keeps_the_field_and_reports_it(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    extra = _len_field(1000, b"abc")
    body = _start().SerializeToString() + extra
    sealed = encrypt_request(plan, START, body, keys, reject_unknown=False)
    assert sealed.unknown_fields == ("1000",)
    assert sealed.encrypted == 1
    assert extra in sealed.body


def test_unknown_field_inside_an_any_body(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    req = RespondWorkflowTaskCompletedRequest(task_token=b"t", messages=[ProtocolMessage(id="1")])
    req.messages[0].body.Pack(Response(outcome=Outcome()))
    req.messages[0].body.value += _len_field(50, b"x")
    body = req.SerializeToString()
    method = WF + "RespondWorkflowTaskCompleted"
    assert find_unknown_fields(plan, method, body) == ("Any<temporal.api.update.v1.Response>.50",)
    with pytest.raises(UnknownFieldError):
        encrypt_request(plan, method, body, keys)


def test_any_of_an_unknown_type_is_reported(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    req = RespondWorkflowTaskCompletedRequest(task_token=b"t", messages=[ProtocolMessage(id="1")])
    req.messages[0].body.type_url = "type.googleapis.com/temporal.api.future.v1.Thing"
    req.messages[0].body.value = b"\x0a\x01x"
    body = req.SerializeToString()
    method = WF + "RespondWorkflowTaskCompleted"
    assert find_unknown_fields(plan, method, body) == ("Any<temporal.api.future.v1.Thing>",)
    with pytest.raises(UnknownFieldError):
        encrypt_request(plan, method, body, keys)


def test_unknown_fields_inside_a_payload_are_sealed_not_reported(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    # A newer Payload field is part of the sealed bytes: nothing can leak from it.
    payload = Payload(data=b"x").SerializeToString() + _len_field(9, b"new-field")
    body = (
        StartWorkflowExecutionRequest(namespace="payments").SerializeToString()
        + _len_field(5, _len_field(1, payload))  # input (5) -> payloads (1)
    )
    assert find_unknown_fields(plan, START, body) == ()
    assert b"new-field" not in encrypt_request(plan, START, body, keys).body


def test_re_encoding_growth_cannot_hide_an_unknown_field(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    # A map entry sent without its key re-encodes 2 bytes longer (the empty key is written out).
    # Four already-encrypted payloads whose metadata has one such entry each grow by 8 bytes;
    # an unknown field of exactly 8 bytes (tag, length, 6 bytes) beside them must be found.
    sealed = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"k"}, data=b"x"
    ).SerializeToString()
    keyless_entry = _len_field(1, _len_field(2, b"v"))  # metadata entry: value only
    payload = sealed + keyless_entry
    entry = _tag(1, 2) + encode_varint(len(payload)) + payload
    payloads = entry * 4
    signal = WF + "SignalWorkflowExecution"
    body = (
        SignalWorkflowExecutionRequest(namespace="payments", signal_name="s").SerializeToString()
        + _tag(4, 2)
        + encode_varint(len(payloads))
        + payloads
        + _len_field(9, b"SECRET")  # 8 bytes on the wire: the growth hides exactly this
    )
    grown = SignalWorkflowExecutionRequest.FromString(body)
    grown.DiscardUnknownFields()
    assert grown.ByteSize() == len(body), "the growth balances the unknown field exactly"
    assert find_unknown_fields(plan, signal, body) == ("9",)
    with pytest.raises(UnknownFieldError):
        encrypt_request(plan, signal, body, keys)
