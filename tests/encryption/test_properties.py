"""Property: any Payload survives seal/open exactly and never appears in the sealed bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Memo, Payload, Payloads
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest

from proxy.codec.payload import ENCODING_ENCRYPTED
from proxy.encryption import EncryptionPlan, NamespaceKeys, decrypt_message, encrypt_request

START = "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution"
REQ = "temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"

_metadata = st.dictionaries(
    st.text(max_size=20).filter(lambda k: k != "encoding"), st.binary(max_size=40), max_size=4
)
_payload = st.builds(
    lambda md, enc, data: Payload(metadata={**md, **({"encoding": enc} if enc else {})}, data=data),
    _metadata,
    st.sampled_from([b"", b"json/plain", b"binary/null", b"binary/protobuf"]),
    st.binary(max_size=512),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    inputs=st.lists(_payload, max_size=4),
    memo=st.dictionaries(st.text(max_size=8), _payload, max_size=3),
)
def test_seal_open_round_trip(
    plan: EncryptionPlan, keys: NamespaceKeys, inputs: list[Payload], memo: dict[str, Payload]
) -> None:
    req = StartWorkflowExecutionRequest(
        namespace="payments", input=Payloads(payloads=inputs), memo=Memo(fields=memo)
    )
    body = req.SerializeToString()
    sealed = encrypt_request(plan, START, body, keys)
    assert sealed.encrypted == len(inputs) + len(memo)
    out = StartWorkflowExecutionRequest.FromString(sealed.body)
    for p in [*out.input.payloads, *out.memo.fields.values()]:
        assert p.metadata["encoding"] == ENCODING_ENCRYPTED
        assert set(p.metadata) == {"encoding", "encryption-key-id"}
    for original in [*inputs, *memo.values()]:
        # Long enough not to appear by chance, and longer than the metadata strings we write.
        if len(original.data) >= 20:
            assert original.data not in sealed.body
    opened = decrypt_message(plan, REQ, sealed.body, keys)
    assert StartWorkflowExecutionRequest.FromString(opened.body) == req
