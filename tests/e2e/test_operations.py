"""Issue 4: metrics, health, certificate rotation, expiry checks, drain, worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import PollActivityTaskQueueRequest

from tests.e2e.echo import EchoUpstream
from tests.e2e.rig import (
    LOOPBACK,
    PROXY_NAME,
    Pki,
    TLSTerminator,
    jwt_authorization,
    mtls_channel,
    sample,
    wait_until,
)
from tests.pki import SecretMount, served_certificate

GET_SYSTEM_INFO = "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo"
DESCRIBE_NS = "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace"
POLL_ACTIVITY = "/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue"


channel = mtls_channel


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.stop()


def test_metrics_count_allowed_and_denied_calls(start_proxy, pki: Pki) -> None:
    proxy = start_proxy({"authorization": jwt_authorization(pki)})
    reader = pki.token("default:read", subject="metrics-reader")
    describe = bytes.fromhex("0a0764656661756c74")
    with channel(pki, proxy.address) as ch:
        for _ in range(3):
            ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
        ch.unary_unary(DESCRIBE_NS)(
            describe, timeout=5, metadata=(("authorization", f"Bearer {reader}"),)
        )
        with pytest.raises(grpc.RpcError):
            ch.unary_unary(DESCRIBE_NS)(describe, timeout=5)  # no token
    # The caller gets its status a moment before the handler's bookkeeping finishes.
    wait_until(
        lambda: sample(proxy.metrics(), "temporal_auth_proxy_inflight_requests") == 0,
        5,
        what="the handlers to finish",
    )
    text = proxy.metrics()
    assert (
        sample(text, "temporal_auth_proxy_requests_total", method="GetSystemInfo", code="OK") == 3
    )
    assert (
        sample(text, "temporal_auth_proxy_requests_total", method="DescribeNamespace", code="OK")
        == 1
    )
    assert (
        sample(
            text,
            "temporal_auth_proxy_requests_total",
            method="DescribeNamespace",
            code="PERMISSION_DENIED",
        )
        == 1
    )
    assert (
        sample(
            text,
            "temporal_auth_proxy_authz_decisions_total",
            decision="allow",
            reason="health_check",
            auth_type="none",  # a certificate and no token: no credential counted (issue 16)
        )
        == 3
    )
    assert (
        sample(
            text,
            "temporal_auth_proxy_authz_decisions_total",
            decision="allow",
            reason="allowed",
            auth_type="jwt",
        )
        == 1
    )
    assert (
        sample(
            text,
            "temporal_auth_proxy_authz_decisions_total",
            decision="deny",
            reason="insufficient_role",
            auth_type="none",  # the call without a token
        )
        == 1
    )
    assert (
        sample(text, "temporal_auth_proxy_request_duration_seconds_count", method="GetSystemInfo")
        == 3
    )
    assert sample(text, "temporal_auth_proxy_authz_duration_seconds_count") == 5
    assert sample(text, "temporal_auth_proxy_jwks_refresh_total", result="success") >= 1
    assert sample(text, "temporal_auth_proxy_jwks_keys") == 2
    assert (
        sample(text, "temporal_auth_proxy_jwks_last_success_timestamp_seconds") > time.time() - 120
    )
    assert sample(text, "temporal_auth_proxy_inflight_requests") == 0
    not_after = sample(
        text, "temporal_auth_proxy_certificate_expiry_timestamp_seconds", cert="frontend"
    )
    assert not_after is not None and not_after > time.time() + 300 * 86400
    for cert in ("frontend_client_ca", "internode", "internode_root_ca"):
        assert sample(text, "temporal_auth_proxy_certificate_expiry_timestamp_seconds", cert=cert)
    # Only names from closed sets appear as label values.
    assert "namespace=" not in text


def test_namespace_label_only_for_listed_namespaces(start_proxy, pki: Pki) -> None:
    proxy = start_proxy({"metrics": {"namespaceLabels": ["default"]}})
    with channel(pki, proxy.address) as ch:
        for ns in ("default", "other"):
            req = b"\x0a" + bytes([len(ns)]) + ns.encode()
            ch.unary_unary(DESCRIBE_NS)(req, timeout=5)
    text = proxy.metrics()
    ok = dict(method="DescribeNamespace", code="OK")
    assert sample(text, "temporal_auth_proxy_requests_total", namespace="default", **ok) == 1
    assert sample(text, "temporal_auth_proxy_requests_total", namespace="_other_", **ok) == 1
    assert sample(text, "temporal_auth_proxy_requests_total", namespace="other", **ok) is None


def test_certificate_rotation_through_a_symlink_swap_under_traffic(
    start_proxy, pki: Pki, tmp_path: Path
) -> None:
    first = pki.ca.issue(PROXY_NAME, dns_names=(PROXY_NAME,), ip_addresses=(LOOPBACK,), server=True)
    mount = SecretMount(tmp_path / "secret", {"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    proxy = start_proxy(
        {
            "tls": {
                "frontend": {
                    "server": {"certFile": mount.path("tls.crt"), "keyFile": mount.path("tls.key")}
                },
                "refreshInterval": "200ms",
            }
        }
    )
    ca_pem = pki.read("ca.pem")

    def serial() -> int:
        return served_certificate(
            proxy.port,
            ca_pem=ca_pem,
            client_cert=pki.files["client.pem"],
            client_key=pki.files["client.key"],
            server_hostname=PROXY_NAME,
        ).serial_number

    assert serial() == first.serial
    failures: list[BaseException] = []
    calls = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal calls
        with channel(pki, proxy.address) as persistent:
            while not stop.is_set():
                try:
                    persistent.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
                    with channel(pki, proxy.address) as fresh:
                        fresh.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
                    calls += 2
                except grpc.RpcError as exc:
                    failures.append(exc)
                time.sleep(0.02)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        second = pki.ca.issue(
            PROXY_NAME, dns_names=(PROXY_NAME,), ip_addresses=(LOOPBACK,), server=True
        )
        mount.update({"tls.crt": second.cert_pem, "tls.key": second.key_pem})
        wait_until(lambda: serial() == second.serial, 10, what="the new certificate")
        time.sleep(0.5)
        # A broken file keeps the old material.
        mount.update({"tls.crt": b"not a certificate", "tls.key": second.key_pem})
        wait_until(
            lambda: (
                (
                    sample(
                        proxy.metrics(), "temporal_auth_proxy_tls_reload_total", result="failure"
                    )
                    or 0
                )
                >= 1
            ),
            10,
            what="the failed reload to be counted",
        )
        time.sleep(0.5)
        assert serial() == second.serial
    finally:
        stop.set()
        worker.join(20)
    assert not failures, failures[:3]
    assert calls > 10
    text = proxy.metrics()
    assert sample(text, "temporal_auth_proxy_tls_reload_total", result="success") >= 1
    not_after = second.certificate.not_valid_after_utc.timestamp()
    assert (
        sample(text, "temporal_auth_proxy_certificate_expiry_timestamp_seconds", cert="frontend")
        == not_after
    )
    events = [e["event"] for e in proxy.events()]
    assert "tls_reloaded" in events and "tls_reload_failed" in events


def test_sighup_reloads_at_once(start_proxy, pki: Pki, tmp_path: Path) -> None:
    first = pki.ca.issue(PROXY_NAME, dns_names=(PROXY_NAME,), ip_addresses=(LOOPBACK,), server=True)
    mount = SecretMount(tmp_path / "secret", {"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    proxy = start_proxy(
        {
            "tls": {
                "frontend": {
                    "server": {"certFile": mount.path("tls.crt"), "keyFile": mount.path("tls.key")}
                },
                "refreshInterval": "0s",
            }
        }
    )
    second = pki.ca.issue(
        PROXY_NAME, dns_names=(PROXY_NAME,), ip_addresses=(LOOPBACK,), server=True
    )
    mount.update({"tls.crt": second.cert_pem, "tls.key": second.key_pem})
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: (
            served_certificate(
                proxy.port,
                ca_pem=pki.read("ca.pem"),
                client_cert=pki.files["client.pem"],
                client_key=pki.files["client.key"],
                server_hostname=PROXY_NAME,
            ).serial_number
            == second.serial
        ),
        10,
        what="SIGHUP to load the new certificate",
    )


def test_expiration_checks_log_and_export(start_proxy, pki: Pki) -> None:
    proxy = start_proxy(
        {
            "tls": {
                "expirationChecks": {
                    "warningWindow": "17520h",
                    "errorWindow": "1h",
                    "checkInterval": "1h",
                }
            }
        }
    )
    wait_until(
        lambda: any(e["event"] == "certificate_expiring" for e in proxy.events()),
        10,
        what="certificate_expiring",
    )
    expiring = [e for e in proxy.events() if e["event"] == "certificate_expiring"]
    leaf = [e for e in expiring if e["cert"] == "frontend"]
    assert leaf and leaf[0]["level"] == "warning" and leaf[0]["expired"] is False
    # The CAs (10-year lifetime) are outside a 2-year window.
    assert not [e for e in expiring if e["cert"] == "frontend_client_ca"]


def _poll_request() -> bytes:
    return PollActivityTaskQueueRequest(
        namespace="default", task_queue=TaskQueue(name="drain-test-queue"), identity="drain-test"
    ).SerializeToString()


def test_sigterm_drains_long_polls_and_exits_zero(start_proxy, pki: Pki) -> None:
    proxy = start_proxy({"listen": {"shutdownGracePeriod": "3s"}})
    outcomes: list[str] = []

    def long_poll() -> None:
        with channel(pki, proxy.address) as ch:
            try:
                ch.unary_unary(POLL_ACTIVITY)(_poll_request(), timeout=30)
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)

    polls = [threading.Thread(target=long_poll) for _ in range(4)]
    for t in polls:
        t.start()
    wait_until(
        lambda: sample(proxy.metrics(), "temporal_auth_proxy_inflight_requests") == 4,
        10,
        what="the long polls to be in flight",
    )
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: proxy.get("/readyz")[0] == 503, 3, interval=0.05, what="readiness 503")
    code = proxy.proc.wait(15)
    elapsed = time.monotonic() - started
    for t in polls:
        t.join(10)
    assert code == 0
    assert elapsed < 3 + 3, elapsed  # the grace period plus process teardown
    assert len(outcomes) == 4
    # Cancelled at the end of the grace period: a clean gRPC status, never a hang.
    assert set(outcomes) <= {"OK", "CANCELLED", "UNAVAILABLE"}, outcomes
    events = [e["event"] for e in proxy.events()]
    assert "draining" in events and "stopped" in events


def test_two_workers_share_the_port_and_metrics_add_up(
    start_proxy, pki: Pki, echo: EchoUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(
        {"listen": {"workers": 2}},
        internode=False,
        upstream_port=echo.port,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
    )
    (tmp_path / "metrics").mkdir(exist_ok=True)
    wait_until(
        lambda: sum(e["event"] == "listening" for e in proxy.events()) == 2,
        20,
        what="both workers to listen",
    )
    upstream_peers: set[str] = set()
    for _ in range(24):
        with channel(pki, proxy.address) as ch:
            seen = json.loads(ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5))
            upstream_peers.add(seen["peer"])
    # Each worker has its own upstream connection: two peers means both workers served.
    assert len(upstream_peers) == 2, upstream_peers
    for _ in range(4):  # whichever worker answers the scrape, it reports the sum
        assert (
            sample(
                proxy.metrics(),
                "temporal_auth_proxy_requests_total",
                method="GetSystemInfo",
                code="OK",
            )
            == 24
        )

    started = [e for e in proxy.events() if e["event"] == "worker_started"]
    victim = started[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: any(e["event"] == "worker_restarted" for e in proxy.events()),
        10,
        what="the worker to be restarted",
    )
    wait_until(proxy.ready, 15, what="readiness after the restart")
    for _ in range(6):
        with channel(pki, proxy.address) as ch:
            ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
    assert proxy.terminate() == 0


def test_internode_certificate_rotation_rebuilds_the_upstream_channel(
    start_proxy, pki: Pki, temporal, tmp_path: Path
) -> None:
    term = TLSTerminator(pki, temporal.port)
    try:
        first = pki.ca.issue("temporal-auth-proxy", client=True)
        mount = SecretMount(
            tmp_path / "internode", {"tls.crt": first.cert_pem, "tls.key": first.key_pem}
        )
        proxy = start_proxy(
            {
                "tls": {
                    "internode": {
                        "server": {
                            "certFile": mount.path("tls.crt"),
                            "keyFile": mount.path("tls.key"),
                        }
                    },
                    "refreshInterval": "200ms",
                }
            },
            upstream_port=term.port,
        )
        with channel(pki, proxy.address) as ch:
            ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
            assert term.client_serials and set(term.client_serials) == {first.serial}
            second = pki.ca.issue("temporal-auth-proxy", client=True)
            mount.update({"tls.crt": second.cert_pem, "tls.key": second.key_pem})
            wait_until(
                lambda: "tls_reloaded" in [e["event"] for e in proxy.events()],
                10,
                what="the internode reload",
            )
            # The next calls go over a new upstream connection that presents the new certificate.
            wait_until(
                lambda: (
                    ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
                    and second.serial in term.client_serials
                ),
                10,
                what="an upstream connection with the new certificate",
            )
            for _ in range(5):
                ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
        text = proxy.metrics()
        assert sample(text, "temporal_auth_proxy_tls_reload_total", result="success") >= 1
        expiry = second.certificate.not_valid_after_utc.timestamp()
        assert (
            sample(
                text, "temporal_auth_proxy_certificate_expiry_timestamp_seconds", cert="internode"
            )
            == expiry
        )
    finally:
        term.stop()
