"""Every metric, defined once against an injected CollectorRegistry. Names are API (README)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from proxy import methods
from proxy.config.schema import Config
from proxy.model import Decision, Reason, Result

PREFIX = "temporal_auth_proxy_"
OTHER_NAMESPACE = "_other_"
CERT_LABELS = ("frontend", "frontend_client_ca", "internode", "internode_root_ca")
# calls_rejected_total{reason}: the closed set (README "Limits").
CALL_REJECT_REASONS = ("max_concurrent_calls",)

# Latency buckets sized for a proxy hop: sub-millisecond up to long polls (~70 s).
_REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    90,
)
_AUTHZ_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ProxyMetrics:
    """Holds the metric families and hands out label children resolved once.

    `namespace_labels` is the operator's allow-list: only then do `requests_total` and
    `authz_decisions_total` carry a `namespace` label (others become `_other_`), keeping
    cardinality bounded.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        method_names: Iterable[str],
        namespace_labels: Iterable[str] = (),
    ) -> None:
        self.namespace_labels = frozenset(namespace_labels)
        ns = ("namespace",) if self.namespace_labels else ()
        self.requests_total = Counter(
            PREFIX + "requests_total",
            "gRPC calls answered by the proxy, by method and status code.",
            ("method", "code", *ns),
            registry=registry,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Wall time of a call through the proxy, authorization and upstream included.",
            ("method",),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.authz_decisions_total = Counter(
            PREFIX + "authz_decisions_total",
            "Authorization decisions, by decision, reason and credential type.",
            ("decision", "reason", "auth_type", "mode", *ns),
            registry=registry,
        )
        self.authz_duration = Histogram(
            PREFIX + "authz_duration_seconds",
            "Time spent mapping claims and authorizing one call.",
            buckets=_AUTHZ_BUCKETS,
            registry=registry,
        )
        self.jwks_refresh_total = Counter(
            PREFIX + "jwks_refresh_total", "JWKS refresh attempts.", ("result",), registry=registry
        )
        self.jwks_keys = Gauge(
            PREFIX + "jwks_keys",
            "Verification keys currently loaded.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.jwks_last_success = Gauge(
            PREFIX + "jwks_last_success_timestamp_seconds",
            "Unix time of the last successful JWKS refresh.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.tls_reload_total = Counter(
            PREFIX + "tls_reload_total",
            "Certificate reloads that found changed files.",
            ("result",),
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            PREFIX + "certificate_expiry_timestamp_seconds",
            "NotAfter of the earliest-expiring certificate in each loaded set.",
            ("cert",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.upstream_errors_total = Counter(
            PREFIX + "upstream_errors_total",
            "Calls whose upstream leg ended with a non-OK status, by code.",
            ("code",),
            registry=registry,
        )
        self.rate_limited_total = Counter(
            PREFIX + "rate_limited_total",
            "Calls refused with RESOURCE_EXHAUSTED by the opt-in rate limits, by bucket scope.",
            ("scope",),
            registry=registry,
        )
        self.calls_rejected_total = Counter(
            PREFIX + "calls_rejected_total",
            "Calls refused with RESOURCE_EXHAUSTED before any work, by the limit that refused it.",
            ("reason",),
            registry=registry,
        )
        self.calls_abandoned_total = Counter(
            PREFIX + "calls_abandoned_total",
            "Calls that ended before their request message arrived (stream reset or held, "
            "connection dropped): held-stream and rapid-reset floods show here.",
            registry=registry,
        )
        self.inflight = Gauge(
            PREFIX + "inflight_requests",
            "Calls currently being handled.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        for reason in CALL_REJECT_REASONS:
            self.calls_rejected_total.labels(reason=reason)
        for result in ("success", "failure"):
            self.jwks_refresh_total.labels(result=result)
            self.tls_reload_total.labels(result=result)
        self._durations = {m: self.request_duration.labels(method=m) for m in method_names}
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def namespace_label(self, namespace: str) -> str:
        return namespace if namespace in self.namespace_labels else OTHER_NAMESPACE

    def duration(self, method: str) -> Histogram:
        child = self._durations.get(method)
        if child is None:
            child = self._durations[method] = self.request_duration.labels(method=method)
        return child

    def request(self, method: str, code: str, namespace: str = "") -> Counter:
        ns = self.namespace_label(namespace) if self.namespace_labels else ""
        key = ("r", method, code, ns)  # label values only: the cache stays bounded
        child = self._children.get(key)
        if child is None:
            labels = [method, code, ns] if ns else [method, code]
            child = self._children[key] = self.requests_total.labels(*labels)
        return child  # type: ignore[return-value]  # children share the parent's class

    def decision(
        self, decision: Decision, reason: Reason, auth_type: str, mode: str, namespace: str = ""
    ) -> Counter:
        ns = self.namespace_label(namespace) if self.namespace_labels else ""
        key = ("d", decision.value, reason.value, auth_type, mode, ns)
        child = self._children.get(key)
        if child is None:
            labels = [decision.value, reason.value, auth_type, mode]
            if ns:
                labels.append(ns)
            child = self._children[key] = self.authz_decisions_total.labels(*labels)
        return child  # type: ignore[return-value]  # children share the parent's class

    def on_jwks_refresh(self, success: bool, key_count: int, when: float) -> None:
        self.jwks_refresh_total.labels(result="success" if success else "failure").inc()
        if success:
            self.jwks_keys.set(key_count)
            self.jwks_last_success.set(when)

    def on_tls_reload(self, success: bool) -> None:
        self.tls_reload_total.labels(result="success" if success else "failure").inc()

    def set_certificate_expiry(self, label: str, not_after: float) -> None:
        self.certificate_expiry.labels(cert=label).set(not_after)


CODEC_OPERATIONS = ("encode", "decode", "download")
# `requests_total` also counts CORS preflights and paths that are no operation.
CODEC_REQUEST_OPERATIONS = (*CODEC_OPERATIONS, "preflight", "unknown")
# Why a codec request was refused (closed set; README "Codec Server").
CODEC_REJECT_REASONS = (
    "unauthorized",
    "body_too_large",
    "body_timeout",
    "busy",
    "too_many_payloads",
    "too_deep",
    "too_many_values",
    "bad_request",
    "codec_error",
    "key_not_allowed",
    "namespace_without_keys",
)


class CodecMetrics:
    """The Codec Server's counters; children resolved once (operation x reason is small)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected_total = Counter(
            PREFIX + "codec_rejected_total",
            "Codec Server requests refused, by operation and reason.",
            ("operation", "reason"),
            registry=registry,
        )
        self.requests_total = Counter(
            PREFIX + "codec_requests_total",
            "Codec Server answers, by operation and HTTP status code.",
            ("operation", "code"),
            registry=registry,
        )
        self.duration = Histogram(
            PREFIX + "codec_duration_seconds",
            "Wall time of a Codec Server request, body read and processing included.",
            ("operation",),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self._durations = {
            op: self.duration.labels(operation=op) for op in CODEC_REQUEST_OPERATIONS
        }
        self._requests: dict[tuple[str, int], Counter] = {}
        self._rejected = {
            (op, reason): self.rejected_total.labels(operation=op, reason=reason)
            for op in CODEC_OPERATIONS
            for reason in CODEC_REJECT_REASONS
        }

    def rejected(self, operation: str, reason: str) -> None:
        self._rejected[(operation, reason)].inc()

    def request(self, operation: str, status: int, seconds: float) -> None:
        """`operation` from CODEC_REQUEST_OPERATIONS; `status` is one the codec answers with."""
        self._durations[operation].observe(seconds)
        child = self._requests.get((operation, status))
        if child is None:
            child = self.requests_total.labels(operation=operation, code=str(status))
            self._requests[(operation, status)] = child
        child.inc()


def build_proxy_metrics(cfg: Config, registry: CollectorRegistry) -> ProxyMetrics:
    """The proxy's metrics in `registry`, a child per method of Temporal's table."""
    return ProxyMetrics(
        registry,
        method_names=sorted(
            {m.short_name for m in methods.all_methods()} | {methods.UNKNOWN_LABEL}
        ),
        namespace_labels=cfg.metrics.namespace_labels,
    )


# `policy` label for a Cedar decision no policy made: no `permit` matched (Cedar's default deny).
NO_POLICY = "(none)"
# Policy ids are label values; they come from the policy files, and every id ever loaded keeps
# its series (counters must not go backwards). Past this many, further ids count as `_other_`,
# so even endless reloads with new ids keep the label set bounded.
MAX_POLICY_LABELS = 1000


class PolicyMetrics:
    """Cedar: decisions by deciding policy id, reloads, and the size of the active set."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions_total = Counter(
            PREFIX + "policy_decisions_total",
            "Cedar decisions by decision and deciding policy id ((none): no policy matched).",
            ("decision", "policy"),
            registry=registry,
        )
        self.reload_total = Counter(
            PREFIX + "policy_reload_total",
            "Policy reloads (file change or SIGHUP), by result; a failure keeps the old set.",
            ("result",),
            registry=registry,
        )
        self.policies = Gauge(
            PREFIX + "policies",
            "Policies in the active Cedar policy set.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        for result in ("success", "failure"):
            self.reload_total.labels(result=result)
        self._children: dict[tuple[str, str], Counter] = {}
        self._ids: set[str] = set()

    def known(self, policy_ids: Iterable[str]) -> None:
        """Create the series of a loaded set's ids at 0, so a never-matching policy shows."""
        for pid in policy_ids:
            for decision in Decision:
                self._child(decision.value, pid)

    def _child(self, decision: str, pid: str) -> Counter:
        child = self._children.get((decision, pid))
        if child is None:
            if pid not in self._ids:
                if len(self._ids) >= MAX_POLICY_LABELS:
                    pid = OTHER_NAMESPACE
                    child = self._children.get((decision, pid))
                    if child is not None:
                        return child
                else:
                    self._ids.add(pid)
            child = self.decisions_total.labels(decision=decision, policy=pid)
            self._children[(decision, pid)] = child
        return child

    def decided(self, decision: Decision, policy_ids: tuple[str, ...]) -> None:
        for pid in policy_ids or (NO_POLICY,):
            self._child(decision.value, pid).inc()

    def observe(self, result: Result) -> None:
        """The Cedar authorizer's `observe` hook: one decision of the policies."""
        self.decided(result.decision, result.policies)

    def loaded(self, policy_ids: Iterable[str]) -> None:
        """A set became active (startup or reload): its size, and its ids' series at 0."""
        ids = tuple(policy_ids)
        self.policies.set(len(ids))
        self.known(ids)

    def on_reload(self, success: bool) -> None:
        self.reload_total.labels(result="success" if success else "failure").inc()


# Payload encryption (README "Encryption at the proxy"): closed label sets.
ENCRYPTION_OUTCOMES = ("encrypted", "already_encrypted", "decrypted")
ENCRYPTION_FAILURE_REASONS = (
    "unknown_field",  # a request field this proxy's API does not know (unknownFields: reject)
    "limit_exceeded",  # too many payloads or nesting levels to inspect
    "malformed_request",  # the request does not parse as its API message
    "unknown_method",  # not in the shipped API descriptors: cannot be inspected
    "no_namespace",  # a task-token call without `namespace` while encryption is on
    "decrypt_unknown_key",  # a response payload under a key the namespace may not use
    "decrypt_authentication",  # a response payload whose tag check fails (tampered, wrong key)
    "decrypt_malformed",  # a response payload without key id, bad compression, not a Payload
    "malformed_response",  # the upstream response does not parse as its API message
)
ENCRYPTION_UNKNOWN_FIELD_ACTIONS = ("rejected", "forwarded")
ENCRYPTION_METHOD_CLASSES = ("poll", "read", "write", "admin")
ENCRYPTION_DIRECTIONS = ("request", "response")
_CRYPTO_BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.01,
    0.1,
)


class EncryptionMetrics:
    """Counters of payload encryption. As with `requests_total`, a `namespace` label exists only
    when `metrics.namespaceLabels` lists namespaces, with those values or `_other_`."""

    def __init__(
        self, registry: CollectorRegistry, *, namespace_labels: Iterable[str] = ()
    ) -> None:
        self.namespace_labels = frozenset(namespace_labels)
        ns = ("namespace",) if self.namespace_labels else ()
        self.payloads_total = Counter(
            PREFIX + "encryption_payloads_total",
            "Payloads sealed, passed already encrypted, or opened by the proxy.",
            (*ns, "outcome"),
            registry=registry,
        )
        self.failures_total = Counter(
            PREFIX + "encryption_failures_total",
            "Calls failed by payload encryption, by reason.",
            (*ns, "reason"),
            registry=registry,
        )
        self.unknown_fields_total = Counter(
            PREFIX + "encryption_unknown_fields_total",
            "Requests to encrypted namespaces carrying unknown length-delimited fields.",
            (*ns, "action"),
            registry=registry,
        )
        self.cpu_seconds = Histogram(
            PREFIX + "encryption_cpu_seconds",
            "CPU time spent encrypting a request or decrypting a response, per method class.",
            ("method_class", "direction"),
            buckets=_CRYPTO_BUCKETS,
            registry=registry,
        )
        self.reload_total = Counter(
            PREFIX + "encryption_reload_total",
            "SIGHUP reloads of encryption and the codec's keys, by result.",
            ("result",),
            registry=registry,
        )
        labels = (*sorted(self.namespace_labels), OTHER_NAMESPACE) if ns else ("",)

        def child(counter: Counter, namespace: str, value: str) -> Counter:
            args = (namespace, value) if namespace else (value,)
            return counter.labels(*args)

        self._payloads = {
            (n, o): child(self.payloads_total, n, o) for n in labels for o in ENCRYPTION_OUTCOMES
        }
        self._failures = {
            (n, r): child(self.failures_total, n, r)
            for n in labels
            for r in ENCRYPTION_FAILURE_REASONS
        }
        self._unknown = {
            (n, a): child(self.unknown_fields_total, n, a)
            for n in labels
            for a in ENCRYPTION_UNKNOWN_FIELD_ACTIONS
        }
        self._cpu = {
            (c, d): self.cpu_seconds.labels(method_class=c, direction=d)
            for c in ENCRYPTION_METHOD_CLASSES
            for d in ENCRYPTION_DIRECTIONS
        }
        for result in ("success", "failure"):
            self.reload_total.labels(result=result)

    def namespace_label(self, namespace: str) -> str:
        """The label value for `namespace` ("" when there is no namespace label)."""
        if not self.namespace_labels:
            return ""
        return namespace if namespace in self.namespace_labels else OTHER_NAMESPACE

    def payloads(self, ns_label: str, outcome: str) -> Counter:
        return self._payloads[(ns_label, outcome)]

    def failure(self, ns_label: str, reason: str) -> Counter:
        return self._failures[(ns_label, reason)]

    def unknown_fields(self, ns_label: str, action: str) -> Counter:
        return self._unknown[(ns_label, action)]

    def cpu(self, method_class: str, direction: str) -> Histogram:
        return self._cpu[(method_class, direction)]


def set_build_info(registry: CollectorRegistry, *, version: str, temporal_api: str) -> Gauge:
    """`temporal_auth_proxy_build_info{version, temporal_api}` = 1."""
    gauge = Gauge(
        PREFIX + "build_info",
        "Always 1: the proxy's version and the Temporal API descriptors it ships.",
        ("version", "temporal_api"),
        registry=registry,
        multiprocess_mode="max",
    )
    gauge.labels(version=version, temporal_api=temporal_api).set(1)
    return gauge
