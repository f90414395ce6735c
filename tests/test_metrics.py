"""proxy/metrics.py and /metrics' multi-process sum: the documented names and labels, through
a real CollectorRegistry (and real worker processes writing a real PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy import methods
from proxy.admin import metrics_registry
from proxy.metrics import CERT_LABELS, OTHER_NAMESPACE, ProxyMetrics
from proxy.model import Decision, Reason

REPO = Path(__file__).resolve().parent.parent
P = "temporal_auth_proxy_"
START = "StartWorkflowExecution"
# The README's metrics table (names are API): name -> (type, labels without `namespace`).
DOCUMENTED: dict[str, tuple[str, tuple[str, ...]]] = {
    P + "requests_total": ("counter", ("method", "code")),
    P + "request_duration_seconds": ("histogram", ("method",)),
    P + "authz_decisions_total": ("counter", ("decision", "reason", "auth_type", "mode")),
    P + "authz_duration_seconds": ("histogram", ()),
    P + "jwks_refresh_total": ("counter", ("result",)),
    P + "jwks_keys": ("gauge", ()),
    P + "jwks_last_success_timestamp_seconds": ("gauge", ()),
    P + "tls_reload_total": ("counter", ("result",)),
    P + "certificate_expiry_timestamp_seconds": ("gauge", ("cert",)),
    P + "upstream_errors_total": ("counter", ("code",)),
    P + "inflight_requests": ("gauge", ()),
    P + "rate_limited_total": ("counter", ("scope",)),
}
NAMESPACED = {P + "requests_total", P + "authz_decisions_total"}


def exercise(m: ProxyMetrics, namespace: str = "") -> None:
    """Touch every metric once through the surface the proxy's modules use."""
    m.request(START, "OK", namespace).inc()
    m.duration(START).observe(0.01)
    m.decision(Decision.DENY, Reason.INSUFFICIENT_ROLE, "jwt", "enforce", namespace).inc()
    m.authz_duration.observe(0.0001)
    m.on_jwks_refresh(True, 3, 1_700_000_000.0)
    m.on_tls_reload(True)
    m.set_certificate_expiry("frontend", 1_800_000_000.0)
    m.upstream_errors_total.labels(code="UNAVAILABLE").inc()
    m.rate_limited_total.labels(scope="namespace").inc()
    m.inflight.inc()


def families(registry: CollectorRegistry) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """What a scrape of `registry` shows: name -> (type, the label-name sets of its samples)."""
    text = generate_latest(registry).decode()
    found: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation time of each counter/histogram series
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {frozenset(s.labels) - {"le"} for s in family.samples}
        found[name] = (family.type, labels)
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_documented_metric_is_registered_with_its_labels() -> None:
    registry = CollectorRegistry()
    exercise(ProxyMetrics(registry, method_names=[START]))
    found = families(registry)
    for name, (kind, labels) in DOCUMENTED.items():
        assert name in found, f"{name} is not registered"
        assert found[name] == (kind, {frozenset(labels)}), name


def test_every_registered_metric_is_in_the_readme() -> None:
    registry = CollectorRegistry()
    exercise(ProxyMetrics(registry, method_names=[START]))
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Metrics") :]
    for name in families(registry):
        assert name.startswith(P), name
        assert f"| `{name}`" in table, f"{name} is exported but not in the README's table"


def test_registering_twice_on_one_registry_fails_but_registries_are_independent() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    ma = ProxyMetrics(a, method_names=[START])
    ProxyMetrics(b, method_names=[START])  # no global state: a second proxy in one process
    ma.request(START, "OK").inc()
    assert value(a, P + "requests_total", method=START, code="OK") == 1
    assert value(b, P + "requests_total", method=START, code="OK") is None
    try:
        ProxyMetrics(a, method_names=[])
    except ValueError as exc:
        assert "Duplicated timeseries" in str(exc)
    else:
        raise AssertionError("a second set of metrics on one registry must not register")


def test_per_method_durations_and_result_counters_exist_from_startup() -> None:
    """Children are resolved at construction: every listed method's histogram and the
    success/failure counters are scraped at 0 before the first call, so rate() works."""
    registry = CollectorRegistry()
    names = [m.short_name for m in methods.all_methods()]
    ProxyMetrics(registry, method_names=names)
    count = P + "request_duration_seconds_count"
    for method in names:
        assert value(registry, count, method=method) == 0, method
    assert value(registry, count, method="unknown") is None  # only listed methods
    for family in ("jwks_refresh_total", "tls_reload_total"):
        for result in ("success", "failure"):
            assert value(registry, P + family, result=result) == 0, (family, result)


def test_counts_land_on_the_documented_label_values() -> None:
    registry = CollectorRegistry()
    m = ProxyMetrics(registry, method_names=[START])
    exercise(m)
    m.on_jwks_refresh(False, 0, 1_900_000_000.0)  # a failure keeps the last good key count
    m.on_tls_reload(False)
    decisions = {"decision": "deny", "reason": "insufficient_role", "auth_type": "jwt"}
    assert value(registry, P + "authz_decisions_total", **decisions, mode="enforce") == 1
    assert value(registry, P + "requests_total", method=START, code="OK") == 1
    assert value(registry, P + "jwks_refresh_total", result="success") == 1
    assert value(registry, P + "jwks_refresh_total", result="failure") == 1
    assert value(registry, P + "jwks_keys") == 3
    assert value(registry, P + "jwks_last_success_timestamp_seconds") == 1_700_000_000.0
    assert value(registry, P + "tls_reload_total", result="failure") == 1
    expiry = P + "certificate_expiry_timestamp_seconds"
    assert value(registry, expiry, cert="frontend") == 1_800_000_000.0
    assert set(CERT_LABELS) == {"frontend", "frontend_client_ca", "internode", "internode_root_ca"}


def test_namespace_label_only_for_listed_namespaces() -> None:
    registry = CollectorRegistry()
    m = ProxyMetrics(registry, method_names=[START], namespace_labels=["prod"])
    exercise(m, "prod")
    m.request(START, "OK", "tenant-1234").inc()
    m.request(START, "OK").inc()  # cluster-scoped calls have no namespace
    m.decision(Decision.ALLOW, Reason.ALLOWED, "cert", "shadow", "tenant-5678").inc()
    found = families(registry)
    for name, (_kind, labels) in DOCUMENTED.items():
        expected = {*labels, "namespace"} if name in NAMESPACED else set(labels)
        assert found[name][1] == {frozenset(expected)}, name
    requests = P + "requests_total"
    assert value(registry, requests, method=START, code="OK", namespace="prod") == 1
    # Unlisted namespaces share one series: a client cannot grow the label set.
    assert value(registry, requests, method=START, code="OK", namespace=OTHER_NAMESPACE) == 2
    assert value(registry, requests, method=START, code="OK", namespace="tenant-1234") is None
    other = {"decision": "allow", "reason": "allowed", "auth_type": "cert", "mode": "shadow"}
    assert value(registry, P + "authz_decisions_total", **other, namespace=OTHER_NAMESPACE) == 1


def test_without_listed_namespaces_no_series_carries_a_namespace() -> None:
    registry = CollectorRegistry()
    exercise(ProxyMetrics(registry, method_names=[START]), namespace="prod")
    for name, (_kind, labels) in families(registry).items():
        assert all("namespace" not in ls for ls in labels), name


def test_single_process_metrics_registry_is_the_own_registry() -> None:
    own = CollectorRegistry()
    assert metrics_registry(own, None) is own
    assert metrics_registry(own, "") is own


# The writer runs in its own interpreter: prometheus_client picks its multi-process value class
# from PROMETHEUS_MULTIPROC_DIR at import time, as each proxy worker does.
WRITER = """
import sys
from prometheus_client import CollectorRegistry
from proxy.metrics import ProxyMetrics
calls, keys, expiry = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
m = ProxyMetrics(CollectorRegistry(), method_names=["StartWorkflowExecution"])
for _ in range(calls):
    m.request("StartWorkflowExecution", "OK").inc()
    m.duration("StartWorkflowExecution").observe(0.002)
m.inflight.inc()
m.on_jwks_refresh(True, keys, 1000.0 + keys)
m.set_certificate_expiry("frontend", expiry)
"""


def test_metrics_registry_sums_every_worker_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for calls, keys, expiry in ((2, 3, 2000.0), (5, 4, 1500.0)):
        subprocess.run(
            [sys.executable, "-c", WRITER, str(calls), str(keys), str(expiry)],
            cwd=REPO,
            env=env,
            check=True,
            timeout=60,
        )
    assert list(tmp_path.glob("*.db")), "the workers wrote their samples to the shared dir"
    own = CollectorRegistry()  # this process's own metrics are not part of the sum
    merged = metrics_registry(own, str(tmp_path))
    assert merged is not own
    assert value(merged, P + "requests_total", method=START, code="OK") == 7
    assert value(merged, P + "request_duration_seconds_count", method=START) == 7
    assert value(merged, P + "jwks_refresh_total", result="success") == 2
    # Gauges follow their documented meaning across processes.
    assert value(merged, P + "inflight_requests") == 2  # calls in flight: the sum
    assert value(merged, P + "jwks_keys") == 4  # keys loaded: the largest set
    assert value(merged, P + "jwks_last_success_timestamp_seconds") == 1004.0  # the latest
    earliest = value(merged, P + "certificate_expiry_timestamp_seconds", cert="frontend")
    assert earliest == 1500.0  # certificate expiry: the earliest
    # What /metrics serves is the sum, in the exposition format.
    text = generate_latest(merged).decode()
    assert f'{P}requests_total{{code="OK",method="{START}"}} 7.0' in text
