"""The wiring of payload encryption: config (`encryption.*`), the per-call service the forwarder
uses (proxy/encryption/service.py), its metrics, and what `explain` says. No sockets here; the
end-to-end behaviour is tests/e2e/test_encryption.py."""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
from typing import Any

import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.errordetails.v1 import QueryFailedFailure
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure
from temporalio.api.history.v1 import (
    History,
    HistoryEvent,
    WorkflowExecutionStartedEventAttributes,
)
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryResponse,
    RespondActivityTaskCompletedRequest,
    StartWorkflowExecutionRequest,
)

from proxy import methods
from proxy.config.dump import effective_config
from proxy.config.parse import parse_config
from proxy.config.schema import Config, EncryptionConfig, NamespaceEncryptionConfig
from proxy.encryption.service import CallCrypto, EncryptionRefused, PayloadEncryption
from proxy.errors import ConfigError
from proxy.metrics import EncryptionMetrics, set_build_info
from proxy.model import MethodInfo
from proxy.wire.write import encode_len_field

WS = methods.WORKFLOW_SERVICE_PREFIX
K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def config(**over: Any) -> Config:
    raw: dict[str, Any] = {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"authorizer": "noop", "claimMapper": "noop"},
        "codec": {"keys": {"k1": b64(K1), "k2": b64(K2), "k3": b64(K3)}, "encryptKeyId": "k1"},
        "encryption": {"namespaces": {"pay": {"keyId": "k1"}}},
        "metrics": {"namespaceLabels": ["pay"]},
    }
    for key, value in over.items():
        raw[key] = value
    return parse_config(raw)


class Log:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _log(self, event: str, **kw: Any) -> None:
        self.events.append({"event": event, **kw})

    debug = info = warning = error = _log


def service(cfg: Config | None = None) -> tuple[PayloadEncryption, CollectorRegistry, Log]:
    registry, log = CollectorRegistry(), Log()
    cfg = cfg or config()
    metrics = EncryptionMetrics(registry, namespace_labels=cfg.metrics.namespace_labels)
    return PayloadEncryption.build(cfg, metrics=metrics, logger=log), registry, log


def method(name: str) -> MethodInfo:
    info = methods.lookup(WS + name)
    assert info is not None
    return info


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def start_body(namespace: str = "pay", secret: bytes = b'"secret"') -> bytes:
    return StartWorkflowExecutionRequest(
        namespace=namespace,
        workflow_id="w",
        input=Payloads(payloads=[Payload(metadata={"encoding": b"json/plain"}, data=secret)]),
    ).SerializeToString()


def history_response(*payloads: Payload) -> bytes:
    event = HistoryEvent(
        event_id=1,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
            input=Payloads(payloads=list(payloads))
        ),
    )
    return GetWorkflowExecutionHistoryResponse(history=History(events=[event])).SerializeToString()


def sealed_payload(crypto: CallCrypto, data: bytes) -> Payload:
    """A payload sealed by the proxy, as Temporal stores it."""
    body = crypto.seal(start_body(secret=data))
    return StartWorkflowExecutionRequest.FromString(body).input.payloads[0]


# ------------------------------------------------------------------------------ config


def test_config_defaults_and_effective_config() -> None:
    cfg = config()
    assert cfg.encryption.namespaces["pay"].key_id == "k1"
    assert cfg.encryption.unknown_fields == "reject"
    shown = effective_config(cfg)["encryption"]
    assert shown == {"namespaces": {"pay": {"keyId": "k1"}}, "unknownFields": "reject"}
    assert not parse_config(
        {"upstream": {"address": "127.0.0.1:1"}, "authorization": {"claimMapper": "noop"}}
    ).encryption.namespaces


@pytest.mark.parametrize(
    ("encryption", "codec_extra", "path", "text"),
    [
        ({"namespaces": {"pay": {}}}, {}, "encryption.namespaces.pay.keyId", "is required"),
        ({"namespaces": {"pay": {"keyId": "k9"}}}, {}, "encryption.namespaces.pay.keyId", "k9"),
        ({"namespaces": {"*": {"keyId": "k1"}}}, {}, "encryption.namespaces.*", "one namespace"),
        (
            {"namespaces": {"pay": {"keyID": "k1"}}},
            {},
            "encryption.namespaces.pay.keyID",
            "unknown",
        ),
        ({"unknownFields": "ignore"}, {}, "encryption.unknownFields", "reject"),
        (
            {"namespaces": {"pay": {"keyId": "k1"}}},
            {"namespaceKeys": {"other": "k2"}},
            "encryption.namespaces.pay",
            "no keys",
        ),
        (
            {"namespaces": {"pay": {"keyId": "k1"}}},
            {"namespaceKeys": {"pay": ["k2", "k3"]}},
            "encryption.namespaces.pay.keyId",
            "namespaceKeys",
        ),
    ],
)
def test_config_errors_name_the_key(
    encryption: dict[str, Any], codec_extra: dict[str, Any], path: str, text: str
) -> None:
    codec = {"keys": {"k1": b64(K1), "k2": b64(K2), "k3": b64(K3)}, "encryptKeyId": "k1"}
    with pytest.raises(ConfigError) as err:
        config(encryption=encryption, codec={**codec, **codec_extra})
    assert err.value.path == path
    assert text in str(err.value)


def test_namespace_keys_limit_what_decrypts() -> None:
    codec = {
        "keys": {"k1": b64(K1), "k2": b64(K2), "k3": b64(K3)},
        "namespaceKeys": {"pay": ["k2", "k1"], "*": "k3"},
    }
    enc, _, _ = service(config(codec=codec, encryption={"namespaces": {"pay": {"keyId": "k2"}}}))
    keys = enc.settings.keys["pay"]
    assert keys.encrypt_key_id == "k2"
    assert keys.decrypt_key_ids == frozenset({"k1", "k2"})


# ------------------------------------------------------------------------------ per call


def test_namespaces_not_listed_and_cluster_calls_are_untouched() -> None:
    enc, registry, _ = service()
    assert enc.call(method("StartWorkflowExecution"), "default") is None
    assert enc.call(method("GetSystemInfo"), "") is None
    assert enc.call(method("ListNamespaces"), "") is None
    disabled, _, _ = service(config(encryption={}))
    assert disabled.call(method("RespondActivityTaskCompleted"), "") is None
    assert value(registry, "temporal_auth_proxy_encryption_payloads_total",
                 namespace="_other_", outcome="encrypted") == 0  # fmt: skip


def test_seal_then_open_round_trip_with_metrics() -> None:
    enc, registry, _ = service()
    crypto = enc.call(method("StartWorkflowExecution"), "pay")
    assert crypto is not None and crypto.key_id == "k1"
    sealed = StartWorkflowExecutionRequest.FromString(crypto.seal(start_body()))
    (p,) = sealed.input.payloads
    assert p.metadata["encoding"] == b"binary/encrypted"
    assert p.metadata["encryption-key-id"] == b"k1"
    assert b"secret" not in sealed.SerializeToString()
    reader = enc.call(method("GetWorkflowExecutionHistory"), "pay")
    assert reader is not None
    opened = GetWorkflowExecutionHistoryResponse.FromString(reader.open(history_response(p)))
    inner = opened.history.events[0].workflow_execution_started_event_attributes.input
    assert inner.payloads[0].data == b'"secret"'
    assert inner.payloads[0].metadata["encoding"] == b"json/plain"
    name = "temporal_auth_proxy_encryption_payloads_total"
    assert value(registry, name, namespace="pay", outcome="encrypted") == 1
    assert value(registry, name, namespace="pay", outcome="decrypted") == 1
    cpu = "temporal_auth_proxy_encryption_cpu_seconds_count"
    assert value(registry, cpu, method_class="write", direction="request") == 1
    assert value(registry, cpu, method_class="read", direction="response") == 1
    # Already encrypted payloads (a worker-side codec) pass unchanged and are counted.
    again = StartWorkflowExecutionRequest.FromString(crypto.seal(sealed.SerializeToString()))
    assert again.input.payloads[0] == p
    assert value(registry, name, namespace="pay", outcome="already_encrypted") == 1


def test_unknown_fields_rejected_or_forwarded() -> None:
    unknown = encode_len_field(999, b"abc")
    enc, registry, log = service()
    crypto = enc.call(method("StartWorkflowExecution"), "pay")
    assert crypto is not None
    with pytest.raises(EncryptionRefused) as refused:
        crypto.seal(start_body() + unknown)
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "StartWorkflowExecution" in refused.value.message
    assert "999" in refused.value.message
    name = "temporal_auth_proxy_encryption_unknown_fields_total"
    assert value(registry, name, namespace="pay", action="rejected") == 1
    failures = "temporal_auth_proxy_encryption_failures_total"
    assert value(registry, failures, namespace="pay", reason="unknown_field") == 1
    assert log.events[-1]["event"] == "encryption_refused"
    assert log.events[-1]["fields"] == ["999"]

    fwd, registry, _ = service(config(encryption={"namespaces": {"pay": {"keyId": "k1"}},
                                                  "unknownFields": "forward"}))  # fmt: skip
    crypto = fwd.call(method("StartWorkflowExecution"), "pay")
    assert crypto is not None
    body = crypto.seal(start_body() + unknown)
    assert body.endswith(unknown)
    assert (
        StartWorkflowExecutionRequest.FromString(body).input.payloads[0].metadata["encoding"]
        == b"binary/encrypted"
    )
    assert value(registry, name, namespace="pay", action="forwarded") == 1


def test_task_token_call_without_namespace_is_refused_while_encryption_is_on() -> None:
    enc, registry, _ = service()
    with pytest.raises(EncryptionRefused) as refused:
        enc.call(method("RespondActivityTaskCompleted"), "")
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "without a namespace" in refused.value.message
    failures = "temporal_auth_proxy_encryption_failures_total"
    assert value(registry, failures, namespace="_other_", reason="no_namespace") == 1
    # With its namespace set (as current SDKs do) it is sealed like any other call.
    crypto = enc.call(method("RespondActivityTaskCompleted"), "pay")
    assert crypto is not None
    body = RespondActivityTaskCompletedRequest(
        namespace="pay", task_token=b"t", result=Payloads(payloads=[Payload(data=b"x")])
    ).SerializeToString()
    out = RespondActivityTaskCompletedRequest.FromString(crypto.seal(body))
    assert out.result.payloads[0].metadata["encryption-key-id"] == b"k1"


@pytest.mark.parametrize(
    ("kid", "reason"), [(b"k9", "unknown_key"), (b"k1", "authentication"), (b"", "malformed")]
)
def test_undecryptable_response_fails_with_data_loss(kid: bytes, reason: str) -> None:
    enc, registry, _ = service()
    crypto = enc.call(method("GetWorkflowExecutionHistory"), "pay")
    assert crypto is not None
    bad = Payload(metadata={"encoding": b"binary/encrypted"}, data=os.urandom(40))
    if kid:
        bad.metadata["encryption-key-id"] = kid
    with pytest.raises(EncryptionRefused) as refused:
        crypto.open(history_response(bad))
    assert refused.value.code == "DATA_LOSS"
    assert refused.value.message == f"temporal-auth-proxy: payload cannot be decrypted ({reason})"
    failures = "temporal_auth_proxy_encryption_failures_total"
    assert value(registry, failures, namespace="pay", reason=f"decrypt_{reason}") == 1


def test_status_details_are_opened() -> None:
    enc, _, _ = service()
    writer = enc.call(method("StartWorkflowExecution"), "pay")
    crypto = enc.call(method("QueryWorkflow"), "pay")
    assert writer is not None and crypto is not None
    p = sealed_payload(writer, b'"why"')
    failure = Failure(
        message="query failed",
        application_failure_info=ApplicationFailureInfo(details=Payloads(payloads=[p])),
    )
    detail = any_pb2.Any()
    detail.Pack(QueryFailedFailure(failure=failure))
    status = status_pb2.Status(code=9, message="query failed", details=[detail])
    trailers = crypto.open_trailers(
        [("x-custom", "1"), ("grpc-status-details-bin", status.SerializeToString())]
    )
    assert trailers[0] == ("x-custom", "1")
    opened = status_pb2.Status.FromString(trailers[1][1])  # type: ignore[arg-type]
    out = QueryFailedFailure()
    opened.details[0].Unpack(out)
    assert out.failure.application_failure_info.details.payloads[0].data == b'"why"'


def test_swap_applies_to_new_calls_only() -> None:
    enc, _, _ = service()
    before = enc.call(method("StartWorkflowExecution"), "pay")
    assert before is not None
    enc.swap(enc.settings_for(config(encryption={"namespaces": {"pay": {"keyId": "k2"}}})))
    after = enc.call(method("StartWorkflowExecution"), "pay")
    assert after is not None
    assert (before.key_id, after.key_id) == ("k1", "k2")
    # Old payloads still open after the rotation: k1 stays in the ring.
    reader = enc.call(method("GetWorkflowExecutionHistory"), "pay")
    assert reader is not None
    old = sealed_payload(before, b'"old"')
    opened = GetWorkflowExecutionHistoryResponse.FromString(reader.open(history_response(old)))
    started = opened.history.events[0].workflow_execution_started_event_attributes
    assert started.input.payloads[0].data == b'"old"'
    # A bad file (validation bypassed here) fails to build; the running settings stay.
    bad = EncryptionConfig(namespaces={"pay": NamespaceEncryptionConfig(key_id="k9")})
    with pytest.raises(ConfigError) as err:
        enc.settings_for(dataclasses.replace(config(), encryption=bad))
    assert err.value.path == "encryption.namespaces.pay.keyId"
    still = enc.call(method("StartWorkflowExecution"), "pay")
    assert still is not None and still.key_id == "k2"


def test_describe_for_explain() -> None:
    enc, _, _ = service()
    assert "encrypted with key id 'k1'" in enc.describe(method("StartWorkflowExecution"), "pay")
    assert "no payloads" in enc.describe(method("DescribeNamespace"), "pay")
    assert "not in encryption.namespaces" in enc.describe(method("StartWorkflowExecution"), "x")
    assert "cluster-scoped" in enc.describe(method("ListNamespaces"), "")
    assert "refused" in enc.describe(method("RespondActivityTaskCompleted"), "")


def test_build_info_gauge() -> None:
    registry = CollectorRegistry()
    set_build_info(registry, version="1.2.3", temporal_api="temporalio-1.35.0+abc")
    labels = {"version": "1.2.3", "temporal_api": "temporalio-1.35.0+abc"}
    assert registry.get_sample_value("temporal_auth_proxy_build_info", labels) == 1


def test_explain_names_payload_encryption() -> None:
    import asyncio

    from proxy.explain import explain

    cfg = config()
    on = asyncio.run(explain(cfg, method="StartWorkflowExecution", namespace="pay"))
    assert "encrypted with key id 'k1'" in on.payload_encryption
    assert "payloads:  encrypted" in on.as_text()
    assert on.as_dict()["payload_encryption"] == on.payload_encryption
    off = asyncio.run(explain(cfg, method="StartWorkflowExecution", namespace="default"))
    assert "not in encryption.namespaces" in off.payload_encryption


def test_no_namespace_label_unless_listed() -> None:
    enc, registry, _ = service(config(metrics={}))
    crypto = enc.call(method("StartWorkflowExecution"), "pay")
    assert crypto is not None
    crypto.seal(start_body())
    name = "temporal_auth_proxy_encryption_payloads_total"
    assert value(registry, name, outcome="encrypted") == 1
    assert registry.get_sample_value(name, {"namespace": "pay", "outcome": "encrypted"}) is None


class _ThreadRecorder(CallCrypto):
    """A CallCrypto that notes which thread sealed/opened (a fake around the real work)."""

    __slots__ = ("threads",)

    def seal(self, body: bytes) -> bytes:
        self.threads.append(threading.get_ident())
        return super().seal(body)

    def open(self, body: bytes) -> bytes:
        self.threads.append(threading.get_ident())
        return super().open(body)


def _recorder(enc: PayloadEncryption, name: str) -> _ThreadRecorder:
    crypto = _ThreadRecorder(
        plan=enc.plan,
        keys=enc.settings.keys["pay"],
        info=method(name),
        namespace="pay",
        reject_unknown=True,
        metrics=EncryptionMetrics(CollectorRegistry()),
        logger=Log(),
    )
    crypto.threads = []
    return crypto


async def test_large_bodies_are_sealed_and_opened_off_the_event_loop() -> None:
    enc, _, _ = service()
    writer = _recorder(enc, "StartWorkflowExecution")
    reader = _recorder(enc, "GetWorkflowExecutionHistory")
    loop_thread = threading.get_ident()
    small = await writer.seal_async(start_body())
    big_secret = b'"' + b"x" * (128 * 1024) + b'"'
    big = await writer.seal_async(start_body(secret=big_secret))
    assert writer.threads[0] == loop_thread
    assert writer.threads[1] != loop_thread
    for body in (small, big):
        p = StartWorkflowExecutionRequest.FromString(body).input.payloads[0]
        assert p.metadata["encoding"] == b"binary/encrypted"
    history = history_response(StartWorkflowExecutionRequest.FromString(big).input.payloads[0])
    opened = GetWorkflowExecutionHistoryResponse.FromString(await reader.open_async(history))
    inner = opened.history.events[0].workflow_execution_started_event_attributes.input
    assert inner.payloads[0].data == big_secret
    assert reader.threads == [reader.threads[0]] and reader.threads[0] != loop_thread


def test_more_payloads_than_the_bound_is_invalid_argument() -> None:
    enc, registry, _ = service()
    crypto = enc.call(method("StartWorkflowExecution"), "pay")
    assert crypto is not None
    body = StartWorkflowExecutionRequest(
        namespace="pay", input=Payloads(payloads=[Payload() for _ in range(10_001)])
    ).SerializeToString()
    with pytest.raises(EncryptionRefused) as refused:
        crypto.seal(body)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "more than 10000 payloads" in refused.value.message
    failures = "temporal_auth_proxy_encryption_failures_total"
    assert value(registry, failures, namespace="pay", reason="limit_exceeded") == 1


@pytest.mark.parametrize("name", ["ImportWorkflowExecution", "ReapplyEvents"])
def test_admin_history_writes_are_refused_while_encryption_is_on(name: str) -> None:
    # AdminService carries history (payloads) the proxy ships no descriptors for: it would
    # reach the store in plaintext, so it is refused while any namespace is encrypted.
    info = methods.lookup(methods.ADMIN_SERVICE_PREFIX + name)
    assert info is not None
    enc, registry, _ = service()
    with pytest.raises(EncryptionRefused) as refused:
        enc.call(info, "")
    assert refused.value.code == "FAILED_PRECONDITION"
    failures = "temporal_auth_proxy_encryption_failures_total"
    assert value(registry, failures, namespace="_other_", reason="unknown_method") == 1
    disabled, _, _ = service(config(encryption={}))
    assert disabled.call(info, "") is None
    # Other AdminService calls (cluster operations) are untouched.
    describe = methods.lookup(methods.ADMIN_SERVICE_PREFIX + "DescribeCluster")
    assert describe is not None and enc.call(describe, "") is None
