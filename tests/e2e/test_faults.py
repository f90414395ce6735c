"""Broken dependencies: the JWKS server down at start and during operation, a key rotation at
the JWKS server, certificate files overwritten with garbage, a worker process killed under load.

(The upstream going away and coming back is in test_relay_fidelity.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

from proxy.dev.pki import generate_key, jwk_from_public_key, mint_token, private_key_pem
from tests.e2e.echo import EchoUpstream
from tests.e2e.rig import (
    LOOPBACK,
    PROXY_NAME,
    Pki,
    ProxyProcess,
    free_port,
    jwt_authorization,
    sample,
    wait_until,
)
from tests.pki import served_certificate

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
GET_SYSTEM_INFO = WF + "GetSystemInfo"
DESCRIBE_NS = WF + "DescribeNamespace"
POLL_WORKFLOW_TASK_QUEUE = WF + "PollWorkflowTaskQueue"
DESCRIBE_DEFAULT = DescribeNamespaceRequest(namespace="default").SerializeToString()
REFRESH = "temporal_auth_proxy_jwks_refresh_total"
DECISIONS = "temporal_auth_proxy_authz_decisions_total"


def client_credentials(pki: Pki, cert: str = "client") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read(f"{cert}.key"),
        certificate_chain=pki.read(f"{cert}.pem"),
    )


# One connection per channel, addressed to the proxy's certificate name.
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", PROXY_NAME),
    ("grpc.use_local_subchannel_pool", 1),
]


def channel(pki: Pki, address: str, cert: str = "client") -> grpc.Channel:
    return grpc.secure_channel(address, client_credentials(pki, cert), options=CHANNEL_OPTIONS)


def describe(pki: Pki, proxy: ProxyProcess, token: str) -> grpc.StatusCode:
    """DescribeNamespace(default) with `token` on a fresh connection: the status code."""
    with channel(pki, proxy.address) as ch:
        try:
            reply = ch.unary_unary(DESCRIBE_NS)(
                DESCRIBE_DEFAULT, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.RpcError as exc:
            return exc.code()
    assert b"default" in reply
    return grpc.StatusCode.OK


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return sample(proxy.metrics(), name, **labels) or 0.0


# ------------------------------------------------------------------------------ JWKS server


class JwksHttp:
    """A loopback JWKS endpoint on a fixed port that can go away and come back."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/.well-known/jwks.json"
        self.document = document
        self.requests = 0
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests += 1
                body = json.dumps(state.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def rsa_jwk_of(private_pem: bytes, kid: str) -> dict[str, str]:
    key = load_pem_private_key(private_pem, password=None)
    return jwk_from_public_key(key.public_key(), kid, "RS256")  # type: ignore[arg-type]


@pytest.fixture
def jwks(pki: Pki) -> Iterator[JwksHttp]:
    server = JwksHttp({"keys": [rsa_jwk_of(pki.rsa_key_pem, pki.rsa_kid)]})
    yield server
    server.stop()


def jwt_over_http(pki: Pki, jwks: JwksHttp, refresh: str) -> dict[str, Any]:
    return {
        "authorization": jwt_authorization(
            pki,
            jwtKeyProvider={
                "keySourceURIs": [jwks.url],
                "refreshInterval": refresh,
                "fetchTimeout": "2s",
            },
        )
    }


# ------------------------------------------------------------------------------ JWKS faults


def test_jwks_down_at_start_fails_closed_then_recovers(start_proxy, pki: Pki, jwks) -> None:
    proxy = start_proxy(jwt_over_http(pki, jwks, "1m"), wait_ready=False)
    wait_until(lambda: metric(proxy, REFRESH, result="failure") >= 1, 10, what="a failed fetch")
    status, body = proxy.get("/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["jwks"] == "no key set loaded"
    token = pki.token("default:read", "temporal-system:admin", subject="early-bird")
    for _ in range(3):  # every token, even an admin's, is refused while no keys are loaded
        assert describe(pki, proxy, token) is grpc.StatusCode.PERMISSION_DENIED
    # A credential failure leaves no claims: counted with auth_type "none".
    assert metric(proxy, DECISIONS, decision="deny", reason="no_keys", auth_type="none") >= 3
    assert metric(proxy, DECISIONS, decision="allow", reason="allowed", auth_type="jwt") == 0
    jwks.start()
    # The proxy retries every 5 s until the first set loads.
    wait_until(proxy.ready, 15, what="readiness once the JWKS is back")
    assert describe(pki, proxy, token) is grpc.StatusCode.OK
    assert metric(proxy, "temporal_auth_proxy_jwks_keys") == 1
    assert proxy.proc.poll() is None


def test_jwks_down_during_operation_keeps_the_last_good_keys(start_proxy, pki: Pki, jwks) -> None:
    jwks.start()
    proxy = start_proxy(jwt_over_http(pki, jwks, "1s"))
    assert describe(pki, proxy, pki.token("default:read", subject="before")) is grpc.StatusCode.OK
    jwks.stop()
    failures = metric(proxy, REFRESH, result="failure")
    wait_until(
        lambda: metric(proxy, REFRESH, result="failure") >= failures + 2,
        10,
        what="refreshes to fail",
    )
    # New tokens (not in the verified-token cache) are still checked against the kept keys.
    for i in range(5):
        token = pki.token("default:read", subject=f"during-{i}")
        assert describe(pki, proxy, token) is grpc.StatusCode.OK
    forged = mint_token(
        private_key_pem(generate_key("rsa")),
        kid=pki.rsa_kid,
        subject="forger",
        permissions=["temporal-system:admin"],
    )
    assert describe(pki, proxy, forged) is grpc.StatusCode.PERMISSION_DENIED
    assert proxy.ready()  # keys are loaded, so still ready
    assert metric(proxy, "temporal_auth_proxy_jwks_keys") == 1
    later = metric(proxy, REFRESH, result="failure")
    wait_until(lambda: metric(proxy, REFRESH, result="failure") > later, 5, what="failures to grow")
    successes = metric(proxy, REFRESH, result="success")
    jwks.start()
    wait_until(lambda: metric(proxy, REFRESH, result="success") > successes, 10, what="a refresh")
    assert describe(pki, proxy, pki.token("default:read", subject="after")) is grpc.StatusCode.OK
    assert "jwks_refresh_failed" in [e["event"] for e in proxy.events()]


def test_key_rotation_at_the_jwks_server(start_proxy, pki: Pki, jwks) -> None:
    jwks.start()
    proxy = start_proxy(jwt_over_http(pki, jwks, "1s"))
    new_pem = private_key_pem(generate_key("rsa"))
    old_token = pki.token("default:read", subject="old-key")
    new_token = mint_token(new_pem, kid="rsa-2", subject="new-key", permissions=["default:read"])
    assert describe(pki, proxy, old_token) is grpc.StatusCode.OK  # verified and now cached
    assert describe(pki, proxy, new_token) is grpc.StatusCode.PERMISSION_DENIED
    # The IdP rotates: the new key is published and the old one withdrawn.
    jwks.document = {"keys": [rsa_jwk_of(new_pem, "rsa-2")]}
    wait_until(
        lambda: describe(pki, proxy, new_token) is grpc.StatusCode.OK,
        10,
        what="the new kid to be accepted",
    )
    # The very same old token string, cached before, is refused once its key is gone.
    assert describe(pki, proxy, old_token) is grpc.StatusCode.PERMISSION_DENIED
    assert describe(pki, proxy, pki.token("default:read", subject="old-2")) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert metric(proxy, DECISIONS, decision="deny", reason="unknown_key", auth_type="none") >= 3


# ------------------------------------------------------------------------ certificate garbage


def test_certificate_files_replaced_by_garbage_keep_the_old_material(
    start_proxy, pki: Pki, tmp_path: Path
) -> None:
    files = {}
    for name in ("server.pem", "server.key", "ca.pem", "internode.pem", "internode.key"):
        files[name] = tmp_path / name
        shutil.copy(pki.files[name], files[name])
    proxy = start_proxy(
        {
            "tls": {
                "frontend": {
                    "server": {
                        "certFile": str(files["server.pem"]),
                        "keyFile": str(files["server.key"]),
                        "clientCaFiles": [str(files["ca.pem"])],
                    }
                },
                "internode": {
                    "server": {
                        "certFile": str(files["internode.pem"]),
                        "keyFile": str(files["internode.key"]),
                    }
                },
                "refreshInterval": "200ms",
            }
        }
    )

    def serial() -> int:
        return served_certificate(
            proxy.port,
            ca_pem=pki.read("ca.pem"),
            client_cert=pki.files["client.pem"],
            client_key=pki.files["client.key"],
            server_hostname=PROXY_NAME,
        ).serial_number

    original = serial()

    def good_call() -> None:
        with channel(pki, proxy.address) as ch:  # a new handshake every time
            assert ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10) is not None

    good_call()
    # Overwritten in place (no atomic swap): torn and garbage files, one after the other.
    for name, junk in (
        ("server.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n"),
        ("ca.pem", os.urandom(512)),
        ("internode.key", b""),
        ("internode.pem", b"not a certificate at all"),
    ):
        before = metric(proxy, "temporal_auth_proxy_tls_reload_total", result="failure")
        files[name].write_bytes(junk)
        wait_until(
            lambda before=before: (
                metric(proxy, "temporal_auth_proxy_tls_reload_total", result="failure") > before
            ),
            10,
            what=f"the garbage {name} to be refused",
        )
        good_call()
        assert serial() == original
        # The client CA was kept too: another CA's certificate is still refused.
        with channel(pki, proxy.address, cert="rogue") as ch, pytest.raises(grpc.RpcError):
            ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
    assert proxy.ready()
    assert proxy.proc.poll() is None
    assert "tls_reload_failed" in [e["event"] for e in proxy.events()]


# ------------------------------------------------------------------------ worker killed


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.stop()


def test_worker_killed_under_load(start_proxy, pki: Pki, echo, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    proxy = start_proxy(
        {"listen": {"workers": 2}},
        internode=False,
        upstream_port=echo.port,
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    wait_until(
        lambda: sum(e["event"] == "listening" for e in proxy.events()) == 2,
        20,
        what="both workers to listen",
    )
    clients = 8
    stop = threading.Event()
    ok_times: list[float] = []
    failures: list[tuple[float, str]] = []
    lock = threading.Lock()

    def traffic() -> None:
        # One connection, one call at a time. A client whose connection dies reconnects, as
        # SDKs do (a dead channel would otherwise fail every call during its backoff).
        calls = 0
        while calls < 5000 and not stop.is_set():
            with channel(pki, proxy.address) as ch:
                while calls < 5000 and not stop.is_set():
                    calls += 1
                    try:
                        ch.unary_unary(GET_SYSTEM_INFO)(
                            b"", timeout=10, metadata=(("x-echo-sleep", "0.02"),)
                        )
                        with lock:
                            ok_times.append(time.monotonic())
                    except grpc.RpcError as exc:
                        with lock:
                            failures.append((time.monotonic(), exc.code().name))
                        break

    threads = [threading.Thread(target=traffic) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        victim = next(e for e in proxy.events() if e["event"] == "worker_started")["pid"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: any(e["event"] == "worker_restarted" for e in proxy.events()),
            10,
            what="the worker to be restarted",
        )
        wait_until(
            lambda: sum(e["event"] == "listening" for e in proxy.events()) == 3,
            20,
            what="the restarted worker to listen",
        )
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    before = [t for t in ok_times if t < killed_at]
    right_after = [t for t in ok_times if killed_at + 0.05 < t < killed_at + 0.5]
    after = [t for t in ok_times if t > killed_at + 0.5]
    print(
        f"worker kill: {len(before)} ok before, {len(right_after)} in the 0.5 s after, "
        f"{len(after)} after; failures {failures}"
    )
    assert before and after
    assert right_after, "the surviving worker did not serve while the other was down"
    # Lost: at most the calls in flight on the killed worker, one per client connection (and
    # one more per client whose reconnect raced the kill).
    assert len(failures) <= 2 * clients, failures
    assert all(code == "UNAVAILABLE" for _, code in failures), failures
    assert all(t < killed_at + 2 for t, _ in failures), failures
    # Both workers serve again: each has its own upstream connection.
    peers = set()
    for _ in range(24):
        with channel(pki, proxy.address) as ch:
            peers.add(json.loads(ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5))["peer"])
    assert len(peers) >= 2, peers
    assert proxy.terminate() == 0


def test_a_burst_of_long_polls_is_held_not_dropped(start_proxy, pki: Pki, echo) -> None:
    """Workers reconnecting at once open thousands of polls in a burst: every one is relayed.

    grpc-core's server queues calls the event loop has not taken yet and, by default, drops
    them past 1,000 (randomly) and 3,000 (all) as CANCELLED before any handler runs.
    """
    proxy = start_proxy(internode=False, upstream_port=echo.port)
    burst, hold = 4000, "4"

    async def run() -> Counter[str]:
        creds = client_credentials(pki)
        channels = [
            grpc.aio.secure_channel(proxy.address, creds, CHANNEL_OPTIONS) for _ in range(4)
        ]
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 10)
        polls = [ch.unary_unary(POLL_WORKFLOW_TASK_QUEUE) for ch in channels]

        async def one(i: int) -> str:
            try:
                await polls[i % 4](b"", timeout=60, metadata=(("x-echo-sleep", hold),))
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        try:
            return Counter(await asyncio.gather(*(one(i) for i in range(burst))))
        finally:
            for ch in channels:
                await ch.close(0)

    codes = asyncio.run(run())
    assert codes == Counter({"OK": burst}), codes
    requests = "temporal_auth_proxy_requests_total"
    assert metric(proxy, requests, method="PollWorkflowTaskQueue", code="OK") == burst


def test_deadline_expiry_is_counted_as_deadline_exceeded(start_proxy, pki: Pki, echo) -> None:
    proxy = start_proxy(internode=False, upstream_port=echo.port)
    with channel(pki, proxy.address) as ch:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=0.5, metadata=(("x-echo-sleep", "2"),))
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: metric(proxy, "temporal_auth_proxy_inflight_requests") == 0, 5, what="idle")
    requests = "temporal_auth_proxy_requests_total"
    assert metric(proxy, requests, method="GetSystemInfo", code="DEADLINE_EXCEEDED") == 3
    assert metric(proxy, requests, method="GetSystemInfo", code="CANCELLED") == 0
