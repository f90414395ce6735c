"""encrypt_request / decrypt_response on realistic messages built with temporalio's classes."""

from __future__ import annotations

import zlib

import pytest
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from temporalio.api.common.v1 import (
    Header,
    Memo,
    Payload,
    Payloads,
    SearchAttributes,
    WorkflowExecution,
    WorkflowType,
)
from temporalio.api.errordetails.v1 import QueryFailedFailure
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure
from temporalio.api.history.v1 import (
    History,
    HistoryEvent,
    WorkflowExecutionStartedEventAttributes,
)
from temporalio.api.protocol.v1 import Message as ProtocolMessage
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.api.update.v1 import Outcome, Response
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryResponse,
    PollWorkflowTaskQueueResponse,
    QueryWorkflowRequest,
    RespondWorkflowTaskCompletedRequest,
    SignalWithStartWorkflowExecutionRequest,
    StartWorkflowExecutionRequest,
)

from proxy.codec.payload import (
    COMPRESSION_KEY,
    ENCODING_ENCRYPTED,
    KEY_ID_KEY,
    KeyRing,
    PayloadCodec,
)
from proxy.encryption import (
    DecryptFailure,
    DecryptionError,
    EncryptionPlan,
    NamespaceKeys,
    UnsupportedMethodError,
    decrypt_message,
    decrypt_response,
    decrypt_status_details,
    encrypt_message,
    encrypt_request,
)
from proxy.errors import ConfigError
from tests.encryption import naive

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
START = WF + "StartWorkflowExecution"
METHODS = naive.forwarded_methods()


def _json(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


def _cases() -> list[tuple[str, str, int]]:
    """(method, 'request'|'response', path index) for every payload path of every method."""
    out = []
    for name, method in sorted(METHODS.items()):
        for side, desc in (("request", method.input_type), ("response", method.output_type)):
            for i, _ in enumerate(naive.payload_paths(desc)):
                out.append((name, side, i))
    return out


def _all_payloads(msg: Message) -> list[tuple[str, Payload]]:
    """Naive: every Payload in a temporalio message outside search attributes, with its path."""
    found: list[tuple[str, Payload]] = []

    def walk(m: Message, path: str) -> None:
        if m.DESCRIPTOR.full_name == naive.SEARCH_ATTRIBUTES:
            return
        if m.DESCRIPTOR.full_name == naive.PAYLOAD:
            found.append((path, m))  # type: ignore[arg-type]
            return
        if m.DESCRIPTOR.full_name == naive.ANY:
            for body in naive.ANY_BODIES:
                if m.Is(body):  # type: ignore[attr-defined]
                    inner = GetMessageClass(body)()
                    m.Unpack(inner)  # type: ignore[attr-defined]
                    walk(inner, path + "<any>")
            return
        for fd, value in m.ListFields():
            if fd.message_type is None:
                continue
            if naive.is_map(fd):
                if naive.value_type(fd) is not None:
                    for k, v in value.items():
                        walk(v, f"{path}.{fd.name}[{k}]")
            elif fd.is_repeated:
                for i, v in enumerate(value):
                    walk(v, f"{path}.{fd.name}[{i}]")
            else:
                walk(value, f"{path}.{fd.name}")

    walk(msg, "")
    return found


def test_every_payload_path_of_every_method_is_sealed_and_opened(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    """For each method, request and response, and each field path that ends in a Payload: a
    message with exactly that path set is sealed (the plaintext is gone, the payload is
    `binary/encrypted`) and opens back to the original."""
    failures: list[str] = []
    count = 0
    for name, method in sorted(METHODS.items()):
        for side, desc in (("request", method.input_type), ("response", method.output_type)):
            cls = GetMessageClass(desc)
            for path in naive.payload_paths(desc):
                count += 1
                marker = b"PLAINTEXT-%d-MARKER" % count
                original = naive.build(desc, path, _json(marker))
                body = original.SerializeToString()
                where = naive.describe(desc, path)
                if side == "request":
                    sealed = encrypt_request(plan, name, body, keys)
                    opened = decrypt_message(plan, desc.full_name, sealed.body, keys)
                else:
                    sealed = encrypt_message(plan, desc.full_name, body, keys)
                    opened = decrypt_response(plan, name, sealed.body, keys)
                if marker in sealed.body or sealed.encrypted != 1:
                    failures.append(f"not sealed: {where}")
                    continue
                payloads = _all_payloads(cls.FromString(sealed.body))
                if [p.metadata["encoding"] for _, p in payloads] != [ENCODING_ENCRYPTED]:
                    failures.append(f"not binary/encrypted: {where}")
                if cls.FromString(opened.body) != original or opened.decrypted != 1:
                    failures.append(f"round trip: {where}")
    assert count > 1000
    assert failures == []


def _start_request() -> StartWorkflowExecutionRequest:
    return StartWorkflowExecutionRequest(
        namespace="payments",
        workflow_id="wf",
        input=Payloads(payloads=[_json(b'"card 4111"'), _json(b'"second"')]),
        memo=Memo(fields={"note": _json(b'"memo secret"')}),
        header=Header(fields={"trace": _json(b'"header secret"')}),
        search_attributes=SearchAttributes(indexed_fields={"Tier": _json(b'"gold"')}),
    )


def test_start_request_every_payload_decryptable_by_the_codec(
    plan: EncryptionPlan, ring: KeyRing, keys: NamespaceKeys
) -> None:
    req = _start_request()
    sealed = encrypt_request(plan, START, req.SerializeToString(), keys)
    assert sealed.encrypted == 4
    assert sealed.passed == 0
    out = StartWorkflowExecutionRequest.FromString(sealed.body)
    codec = PayloadCodec(ring, encrypt_key_id="new")  # the Codec Server's own code
    sealed_payloads = [
        *out.input.payloads,
        out.memo.fields["note"],
        out.header.fields["trace"],
    ]
    for p in sealed_payloads:
        assert p.metadata["encoding"] == ENCODING_ENCRYPTED
        assert p.metadata[KEY_ID_KEY] == b"new"
        assert len(p.data) >= 12 + 16
    plain = [
        Payload.FromString(codec.decrypt_payload_bytes(p.SerializeToString()))
        for p in sealed_payloads
    ]
    assert plain == [*req.input.payloads, req.memo.fields["note"], req.header.fields["trace"]]


def test_search_attributes_are_untouched(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    req = _start_request()
    out = StartWorkflowExecutionRequest.FromString(
        encrypt_request(plan, START, req.SerializeToString(), keys).body
    )
    assert out.search_attributes == req.search_attributes
    assert out.workflow_id == "wf"
    assert out.namespace == "payments"


def test_already_encrypted_payloads_pass_unchanged(
    plan: EncryptionPlan, ring: KeyRing, keys: NamespaceKeys
) -> None:
    # What a worker using proxy.sdk_codec sends (even with a key the namespace does not use).
    worker_codec = PayloadCodec(ring, encrypt_key_id="other")
    pre = Payload.FromString(worker_codec.encrypt_payload_bytes(_json(b'"x"').SerializeToString()))
    req = StartWorkflowExecutionRequest(namespace="n", input=Payloads(payloads=[pre]))
    body = req.SerializeToString()
    sealed = encrypt_request(plan, START, body, keys)
    assert (sealed.encrypted, sealed.passed) == (0, 1)
    assert sealed.body is body  # nothing changed: the caller's bytes are forwarded


def test_round_trip_of_a_poll_response_with_history(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    failure = Failure(
        message="boom (a string: not encrypted)",
        encoded_attributes=_json(b'{"message": "secret"}'),
        application_failure_info=ApplicationFailureInfo(details=Payloads(payloads=[_json(b"1")])),
        cause=Failure(
            application_failure_info=ApplicationFailureInfo(
                details=Payloads(payloads=[_json(b"2")])
            )
        ),
    )
    resp = PollWorkflowTaskQueueResponse(
        task_token=b"tok",
        history=History(
            events=[
                HistoryEvent(
                    event_id=1,
                    workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                        input=Payloads(payloads=[_json(b'"in"')]),
                        continued_failure=failure,
                        search_attributes=SearchAttributes(indexed_fields={"A": _json(b'"a"')}),
                    ),
                )
            ]
        ),
        queries={
            "q": WorkflowQuery(query_type="state", query_args=Payloads(payloads=[_json(b'"arg"')]))
        },
        messages=[ProtocolMessage(id="m")],
    )
    resp.messages[0].body.Pack(
        Response(meta=None, outcome=Outcome(success=Payloads(payloads=[_json(b'"ok"')])))
    )
    name = "temporal.api.workflowservice.v1.PollWorkflowTaskQueueResponse"
    sealed = encrypt_message(plan, name, resp.SerializeToString(), keys)
    assert sealed.encrypted == 6
    for secret in (b'"in"', b"secret", b'"arg"', b'"ok"'):
        assert secret not in sealed.body
    assert b"boom (a string: not encrypted)" in sealed.body  # failure messages are strings
    opened = decrypt_response(plan, WF + "PollWorkflowTaskQueue", sealed.body, keys)
    assert opened.decrypted == 6
    assert PollWorkflowTaskQueueResponse.FromString(opened.body) == resp


def test_any_packed_update_outcome_in_a_request(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    req = RespondWorkflowTaskCompletedRequest(task_token=b"t", messages=[ProtocolMessage(id="1")])
    req.messages[0].body.Pack(
        Response(outcome=Outcome(failure=Failure(encoded_attributes=_json(b'"why"'))))
    )
    sealed = encrypt_request(
        plan, WF + "RespondWorkflowTaskCompleted", req.SerializeToString(), keys
    )
    assert sealed.encrypted == 1
    assert b'"why"' not in sealed.body
    out = RespondWorkflowTaskCompletedRequest.FromString(sealed.body)
    inner = Response()
    assert out.messages[0].body.Unpack(inner)
    assert inner.outcome.failure.encoded_attributes.metadata["encoding"] == ENCODING_ENCRYPTED


def test_rotation_old_key_still_decrypts(plan: EncryptionPlan, ring: KeyRing) -> None:
    before = NamespaceKeys(ring=ring, encrypt_key_id="old", decrypt_key_ids=frozenset({"old"}))
    after = NamespaceKeys(
        ring=ring, encrypt_key_id="new", decrypt_key_ids=frozenset({"old", "new"})
    )
    resp = GetWorkflowExecutionHistoryResponse(
        history=History(
            events=[
                HistoryEvent(
                    event_id=1,
                    workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                        input=Payloads(payloads=[_json(b"1")])
                    ),
                )
            ]
        )
    )
    name = "temporal.api.workflowservice.v1.GetWorkflowExecutionHistoryResponse"
    old_body = encrypt_message(plan, name, resp.SerializeToString(), before).body
    assert b"encryption-key-id" in old_body and b"old" in old_body
    opened = decrypt_response(plan, WF + "GetWorkflowExecutionHistory", old_body, after)
    assert GetWorkflowExecutionHistoryResponse.FromString(opened.body) == resp


def _sealed_history(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> GetWorkflowExecutionHistoryResponse:
    resp = GetWorkflowExecutionHistoryResponse(
        history=History(
            events=[
                HistoryEvent(
                    event_id=1,
                    workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                        input=Payloads(payloads=[_json(b'"v"')])
                    ),
                )
            ]
        )
    )
    name = "temporal.api.workflowservice.v1.GetWorkflowExecutionHistoryResponse"
    return GetWorkflowExecutionHistoryResponse.FromString(
        encrypt_message(plan, name, resp.SerializeToString(), keys).body
    )


def _payload(resp: GetWorkflowExecutionHistoryResponse) -> Payload:
    return resp.history.events[0].workflow_execution_started_event_attributes.input.payloads[0]


def test_tampered_payload_raises(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    resp = _sealed_history(plan, keys)
    p = _payload(resp)
    p.data = p.data[:-1] + bytes([p.data[-1] ^ 1])
    with pytest.raises(DecryptionError) as info:
        decrypt_response(plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys)
    assert info.value.reason is DecryptFailure.AUTHENTICATION
    assert "GetWorkflowExecutionHistory" in str(info.value)


@pytest.mark.parametrize("kid", [b"missing", b"other"])
def test_unknown_or_foreign_key_raises(
    plan: EncryptionPlan, keys: NamespaceKeys, kid: bytes
) -> None:
    # `other` is in the ring but not allowed for this namespace: still refused.
    resp = _sealed_history(plan, keys)
    _payload(resp).metadata[KEY_ID_KEY] = kid
    with pytest.raises(DecryptionError) as info:
        decrypt_response(plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys)
    assert info.value.reason is DecryptFailure.UNKNOWN_KEY


def test_missing_key_id_and_garbage_inner_are_malformed(
    plan: EncryptionPlan, ring: KeyRing, keys: NamespaceKeys
) -> None:
    resp = _sealed_history(plan, keys)
    del _payload(resp).metadata[KEY_ID_KEY]
    with pytest.raises(DecryptionError) as info:
        decrypt_response(plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys)
    assert info.value.reason is DecryptFailure.MALFORMED
    resp = _sealed_history(plan, keys)
    p = _payload(resp)
    p.data = ring.seal("new", b"\xff\xff\xff")  # authentic, but not a Payload inside
    with pytest.raises(DecryptionError) as info:
        decrypt_response(plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys)
    assert info.value.reason is DecryptFailure.MALFORMED


def test_compressed_payloads_of_the_sdk_codec_open(
    plan: EncryptionPlan, ring: KeyRing, keys: NamespaceKeys
) -> None:
    codec = PayloadCodec(ring, encrypt_key_id="new", compress=True)
    inner = _json(b'"' + b"a" * 500 + b'"')
    sealed = Payload.FromString(codec.encrypt_payload_bytes(inner.SerializeToString()))
    assert sealed.metadata[COMPRESSION_KEY] == b"zlib"
    resp = GetWorkflowExecutionHistoryResponse(
        history=History(
            events=[
                HistoryEvent(
                    event_id=1,
                    workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                        input=Payloads(payloads=[sealed])
                    ),
                )
            ]
        )
    )
    opened = decrypt_response(
        plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys
    )
    assert _payload(GetWorkflowExecutionHistoryResponse.FromString(opened.body)) == inner
    # A zlib bomb cut short or corrupted is malformed, not plaintext.
    bad = Payload()
    bad.CopyFrom(sealed)
    bad.data = ring.seal("new", zlib.compress(inner.SerializeToString())[:-4])
    _payload(resp).CopyFrom(bad)
    with pytest.raises(DecryptionError) as info:
        decrypt_response(plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys)
    assert info.value.reason is DecryptFailure.MALFORMED


def test_plaintext_response_is_returned_as_the_same_bytes(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    body = GetWorkflowExecutionHistoryResponse(
        history=History(events=[HistoryEvent(event_id=1)])
    ).SerializeToString()
    out = decrypt_response(plan, WF + "GetWorkflowExecutionHistory", body, keys)
    assert out.body is body
    assert out.decrypted == 0
    # Past the byte precheck (the marker text in a string), still nothing to open: same bytes.
    body = GetWorkflowExecutionHistoryResponse(
        history=History(
            events=[
                HistoryEvent(
                    event_id=1,
                    workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                        identity="binary/encrypted", input=Payloads(payloads=[_json(b"1")])
                    ),
                )
            ]
        )
    ).SerializeToString()
    out = decrypt_response(plan, WF + "GetWorkflowExecutionHistory", body, keys)
    assert out.body is body
    assert out.decrypted == 0


def test_query_failed_status_details_are_opened(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    from google.rpc.status_pb2 import Status

    failure = Failure(message="query failed", encoded_attributes=_json(b'"detail"'))
    sealed_failure = Failure.FromString(
        encrypt_message(
            plan, "temporal.api.failure.v1.Failure", failure.SerializeToString(), keys
        ).body
    )
    status = Status(code=3, message="x")
    status.details.add().Pack(QueryFailedFailure(failure=sealed_failure))
    out = decrypt_status_details(plan, WF + "QueryWorkflow", status.SerializeToString(), keys)
    assert out.decrypted == 1
    got = QueryFailedFailure()
    assert Status.FromString(out.body).details[0].Unpack(got)
    assert got.failure == failure


def test_system_nexus_envelope_is_not_sealed_but_its_payloads_are(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    """The server reads a system Nexus envelope (a binary/protobuf request); only the payloads
    inside it are encrypted, as api-go's visitor does."""
    from temporalio.api.command.v1 import Command, ScheduleNexusOperationCommandAttributes

    inner = SignalWithStartWorkflowExecutionRequest(
        namespace="payments", workflow_id="w", signal_input=Payloads(payloads=[_json(b'"sig"')])
    )
    envelope = Payload(
        metadata={
            "encoding": b"binary/protobuf",
            "messageType": inner.DESCRIPTOR.full_name.encode(),
            "__temporal_system_payload": b"true",
        },
        data=inner.SerializeToString(),
    )
    req = RespondWorkflowTaskCompletedRequest(
        task_token=b"t",
        commands=[
            Command(
                schedule_nexus_operation_command_attributes=ScheduleNexusOperationCommandAttributes(
                    endpoint="__temporal_system", input=envelope
                )
            )
        ],
    )
    sealed = encrypt_request(
        plan, WF + "RespondWorkflowTaskCompleted", req.SerializeToString(), keys
    )
    assert sealed.encrypted == 1
    out = RespondWorkflowTaskCompletedRequest.FromString(sealed.body)
    env = out.commands[0].schedule_nexus_operation_command_attributes.input
    assert env.metadata["encoding"] == b"binary/protobuf"
    got = SignalWithStartWorkflowExecutionRequest.FromString(env.data)
    assert got.workflow_id == "w"
    assert got.signal_input.payloads[0].metadata["encoding"] == ENCODING_ENCRYPTED
    back = decrypt_message(plan, req.DESCRIPTOR.full_name, sealed.body, keys)
    assert RespondWorkflowTaskCompletedRequest.FromString(back.body) == req


def test_unknown_method_and_garbage_body_fail_closed(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    with pytest.raises(UnsupportedMethodError):
        encrypt_request(plan, WF + "NoSuchMethod", b"", keys)
    with pytest.raises(UnsupportedMethodError):
        encrypt_request(plan, START, b"\x0a\xff", keys)
    with pytest.raises(UnsupportedMethodError):
        decrypt_response(plan, WF + "QueryWorkflow", b"\x0a\xffbinary/encrypted", keys)


def test_namespace_keys_are_validated(ring: KeyRing) -> None:
    with pytest.raises(ConfigError, match=r"encryption.namespaces.keyId"):
        NamespaceKeys(ring=ring, encrypt_key_id="nope", decrypt_key_ids=frozenset({"nope"}))
    with pytest.raises(ConfigError, match="must also be allowed"):
        NamespaceKeys(ring=ring, encrypt_key_id="new", decrypt_key_ids=frozenset({"old"}))
    with pytest.raises(ConfigError, match=r"not in codec\.keys"):
        NamespaceKeys(ring=ring, encrypt_key_id="new", decrypt_key_ids=frozenset({"new", "gone"}))
    keys = NamespaceKeys.for_ring(ring, "new")
    assert keys.decrypt_key_ids == frozenset(ring.ids)


def test_query_request_and_workflow_execution_are_untouched_strings(
    plan: EncryptionPlan, keys: NamespaceKeys
) -> None:
    req = QueryWorkflowRequest(
        namespace="payments",
        execution=WorkflowExecution(workflow_id="wf-id", run_id="run"),
        query=WorkflowQuery(query_type="state", query_args=Payloads(payloads=[_json(b'"a"')])),
    )
    out = QueryWorkflowRequest.FromString(
        encrypt_request(plan, WF + "QueryWorkflow", req.SerializeToString(), keys).body
    )
    assert out.execution == req.execution
    assert out.query.query_type == "state"
    assert out.query.query_args.payloads[0].metadata["encoding"] == ENCODING_ENCRYPTED


def test_raw_history_blobs_are_opened(plan: EncryptionPlan, keys: NamespaceKeys) -> None:
    """GetWorkflowExecutionHistory may answer with `raw_history` (serialized History batches,
    frontend option SendRawWorkflowHistory): the payloads inside are opened too."""
    from temporalio.api.common.v1 import DataBlob
    from temporalio.api.enums.v1 import EncodingType

    history = History(
        events=[
            HistoryEvent(
                event_id=1,
                workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                    input=Payloads(payloads=[_json(b'"raw"')])
                ),
            )
        ]
    )
    sealed = encrypt_message(
        plan, "temporal.api.history.v1.History", history.SerializeToString(), keys
    ).body
    assert b'"raw"' not in sealed
    resp = GetWorkflowExecutionHistoryResponse(
        raw_history=[
            DataBlob(encoding_type=EncodingType.ENCODING_TYPE_PROTO3, data=sealed),
            DataBlob(encoding_type=EncodingType.ENCODING_TYPE_JSON, data=b"{}"),
        ]
    )
    out = decrypt_response(plan, WF + "GetWorkflowExecutionHistory", resp.SerializeToString(), keys)
    assert out.decrypted == 1
    blobs = GetWorkflowExecutionHistoryResponse.FromString(out.body).raw_history
    assert History.FromString(blobs[0].data) == history
    assert blobs[1].data == b"{}"  # JSON blobs are not read: passed as they are


@pytest.mark.parametrize(
    "metadata",
    [
        {
            "__temporal_system_payload": b"true",
            "encoding": b"json/plain",
            "messageType": b"temporal.api.common.v1.WorkflowType",
        },
        {
            "__temporal_system_payload": b"yes",
            "encoding": b"binary/protobuf",
            "messageType": b"temporal.api.common.v1.WorkflowType",
        },
        {
            "__temporal_system_payload": b"true",
            "encoding": b"binary/protobuf",
            "messageType": b"no.such.Type",
        },
        {
            "__temporal_system_payload": b"true",
            "encoding": b"binary/protobuf",
            "messageType": b"temporal.api.common.v1.WorkflowType",
            "bad-data": b"",
        },
    ],
)
def test_a_payload_only_claiming_to_be_an_envelope_is_sealed(
    plan: EncryptionPlan, keys: NamespaceKeys, metadata: dict[str, bytes]
) -> None:
    # Valid WorkflowType bytes unless the case is about bad data: only metadata decides.
    data = (
        b"\xff\xff not protobuf"
        if "bad-data" in metadata
        else WorkflowType(name="secret-name").SerializeToString()
    )
    metadata = {k: v for k, v in metadata.items() if k != "bad-data"}
    req = StartWorkflowExecutionRequest(
        namespace="n", input=Payloads(payloads=[Payload(metadata=metadata, data=data)])
    )
    sealed = encrypt_request(plan, START, req.SerializeToString(), keys)
    assert sealed.encrypted == 1
    assert data not in sealed.body
