"""Negative TLS and hostile clients against one JWT-enforcing proxy in front of the real server.

The proxy is shared by the whole module on purpose: abuse accumulates, and after every attack a
trusted client must still get answers (`assert_serving`). Each refused handshake is checked with
Python's own TLS stack (OpenSSL) so the refusal is seen byte by byte: a connection counts as
accepted only if the proxy answers the HTTP/2 preface with its SETTINGS frame.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetSystemInfoRequest,
    PollActivityTaskQueueRequest,
)

from tests.e2e.rig import (
    LOOPBACK,
    PROXY_NAME,
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    deep_merge,
    jwt_authorization,
    sample,
    wait_until,
)

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
GET_SYSTEM_INFO = WF + "GetSystemInfo"
DESCRIBE_NS = WF + "DescribeNamespace"
POLL_ACTIVITY = WF + "PollActivityTaskQueue"
MAX_MESSAGE = 1024 * 1024
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
DESCRIBE_DEFAULT = DescribeNamespaceRequest(namespace="default").SerializeToString()
# What grpc answers a call the transport or the proxy refused: a status, never a hang.
CLEAN_REFUSALS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.PERMISSION_DENIED,
}


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    cfg = deep_merge(
        base_config(pki, terminator.port),
        {
            "authorization": jwt_authorization(pki),
            "listen": {"maxMessageSize": MAX_MESSAGE},
        },
    )
    proc = ProxyProcess(tmp_path_factory.mktemp("hostile"), cfg)
    yield proc
    proc.stop()
    # Whatever was thrown at it, it never crashed, and it exited cleanly.
    assert proc.proc.returncode == 0
    assert "Traceback" not in proc.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def reader_token(pki: Pki) -> str:
    return pki.token("default:read", subject="hostile-reader")


def channel(pki: Pki, address: str, cert: str | None = "client") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read(f"{cert}.key") if cert else None,
        certificate_chain=pki.read(f"{cert}.pem") if cert else None,
    )
    return grpc.secure_channel(
        address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", PROXY_NAME),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_metadata_size", 1024 * 1024),
        ],
    )


def assert_serving(pki: Pki, proxy: ProxyProcess, token: str) -> None:
    """A trusted client on a fresh connection gets a real answer from the dev server."""
    assert proxy.proc.poll() is None, proxy.logs()[-2000:]
    with channel(pki, proxy.address) as ch:
        assert ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10) is not None
        reply = ch.unary_unary(DESCRIBE_NS)(
            DESCRIBE_DEFAULT, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
        )
        assert b"default" in reply


# ------------------------------------------------------------------ raw TLS with OpenSSL


def tls_context(
    pki: Pki,
    cert: str | None = None,
    key: str | None = None,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pki.read("ca.pem").decode())
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        # Let OpenSSL at least offer the old protocol (its default level forbids it).
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def h2_attempt(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> str:
    """'h2' when the proxy accepted the connection, otherwise how it was refused."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        try:
            tls = ctx.wrap_socket(sock, server_hostname=PROXY_NAME)
        except ssl.SSLError as exc:
            return f"handshake refused: {exc.reason or exc}"
        except OSError as exc:
            return f"handshake aborted: {type(exc).__name__}"
        with tls:
            # TLS 1.3: the server judges the client certificate after the client's Finished, so
            # the refusal arrives as an alert (or EOF) when we read.
            try:
                tls.sendall(H2_PREFACE + H2_EMPTY_SETTINGS)
                data = b""
                while len(data) < 9:
                    chunk = tls.recv(9 - len(data))
                    if not chunk:
                        return "closed after handshake"
                    data += chunk
            except ssl.SSLError as exc:
                return f"refused after handshake: {exc.reason or exc}"
            except OSError as exc:
                return f"closed after handshake: {type(exc).__name__}"
            return "h2" if data[3] == 0x04 else f"unexpected frame type {data[3]}"


def issue_client(pki: Pki, directory: Path, stem: str, **kw: object) -> tuple[str, str]:
    cert = pki.ca.issue(stem, **kw)  # type: ignore[arg-type]
    cert_path, key_path = cert.write(directory, stem)
    return str(cert_path), str(key_path)


# --------------------------------------------------------------------------- negative TLS


def test_good_client_is_accepted_by_the_raw_probe(proxy: ProxyProcess, pki: Pki) -> None:
    # The probe itself must be able to say yes, or every refusal below would prove nothing.
    ctx = tls_context(pki, pki.files["client.pem"], pki.files["client.key"])
    assert h2_attempt(proxy.port, ctx) == "h2"


def test_no_client_certificate_is_refused(proxy: ProxyProcess, pki: Pki, reader_token) -> None:
    assert h2_attempt(proxy.port, tls_context(pki)) != "h2"
    with channel(pki, proxy.address, cert=None) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert_serving(pki, proxy, reader_token)


def test_certificate_from_another_ca_is_refused(
    proxy: ProxyProcess, pki: Pki, reader_token
) -> None:
    ctx = tls_context(pki, pki.files["rogue.pem"], pki.files["rogue.key"])
    assert h2_attempt(proxy.port, ctx) != "h2"
    # Even with a valid token: the token does not replace the certificate.
    with channel(pki, proxy.address, cert="rogue") as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(DESCRIBE_NS)(
            DESCRIBE_DEFAULT, timeout=5, metadata=(("authorization", f"Bearer {reader_token}"),)
        )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert_serving(pki, proxy, reader_token)


def test_expired_client_certificate_is_refused(
    proxy: ProxyProcess, pki: Pki, reader_token, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = issue_client(
        pki,
        tmp_path,
        "expired",
        client=True,
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    assert h2_attempt(proxy.port, tls_context(pki, cert, key)) != "h2"
    not_yet, not_yet_key = issue_client(
        pki,
        tmp_path,
        "not-yet-valid",
        client=True,
        not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=30),
    )
    assert h2_attempt(proxy.port, tls_context(pki, not_yet, not_yet_key)) != "h2"
    assert_serving(pki, proxy, reader_token)


def test_server_only_certificate_is_refused_as_a_client_certificate(
    proxy: ProxyProcess, pki: Pki, reader_token, tmp_path: Path
) -> None:
    # Go's crypto/tls (so Temporal) requires the clientAuth EKU; BoringSSL checks it too.
    cert, key = issue_client(pki, tmp_path, "server-only", server=True, dns_names=("x.test",))
    assert h2_attempt(proxy.port, tls_context(pki, cert, key)) != "h2"
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
    with (
        grpc.secure_channel(
            proxy.address, creds, options=[("grpc.ssl_target_name_override", PROXY_NAME)]
        ) as ch,
        pytest.raises(grpc.RpcError) as caught,
    ):
        ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert_serving(pki, proxy, reader_token)


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(ssl.TLSVersion.TLSv1, id="tls1.0"),
        pytest.param(ssl.TLSVersion.TLSv1_1, id="tls1.1"),
    ],
)
def test_tls_1_0_and_1_1_are_refused(
    proxy: ProxyProcess, pki: Pki, reader_token, version: ssl.TLSVersion
) -> None:
    ctx = tls_context(pki, pki.files["client.pem"], pki.files["client.key"], version=version)
    outcome = h2_attempt(proxy.port, ctx)
    assert outcome != "h2"
    # Refused by the proxy (protocol_version alert) when OpenSSL offered the old version; if
    # the local OpenSSL refuses to offer it at all, the handshake still fails (both are fine).
    assert outcome.startswith("handshake"), outcome
    print(f"{version.name}: {outcome}")
    # TLS 1.2 and 1.3 both work.
    for good in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ok = tls_context(pki, pki.files["client.pem"], pki.files["client.key"])
        ok.minimum_version = ok.maximum_version = good
        assert h2_attempt(proxy.port, ok) == "h2", good
    assert_serving(pki, proxy, reader_token)


def test_plaintext_http2_to_the_tls_port_is_refused(
    proxy: ProxyProcess, pki: Pki, reader_token
) -> None:
    with socket.create_connection((LOOPBACK, proxy.port), timeout=5) as sock:
        sock.sendall(H2_PREFACE + H2_EMPTY_SETTINGS)
        received = b""
        deadline = time.monotonic() + 5
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        closed = time.monotonic() < deadline
    # No HTTP/2 SETTINGS frame came back, and the proxy hung up (at most a TLS alert record).
    assert closed, "the proxy kept a plaintext connection open"
    assert not (len(received) >= 9 and received[3] == 0x04), received[:32]
    assert not received or received[0] == 0x15, received[:32]  # 0x15: TLS alert
    # Plaintext gRPC gets a clean UNAVAILABLE as well.
    with grpc.insecure_channel(proxy.address) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert_serving(pki, proxy, reader_token)


# --------------------------------------------------------------------------- hostile calls


def test_64_kib_authorization_header_gets_a_clean_status(
    proxy: ProxyProcess, pki: Pki, reader_token
) -> None:
    with channel(pki, proxy.address) as ch:
        for size in (64 * 1024, 63 * 1024, 48 * 1024):
            header = "Bearer " + "A" * (size - 7)
            with pytest.raises(grpc.RpcError) as caught:
                ch.unary_unary(DESCRIBE_NS)(
                    DESCRIBE_DEFAULT, timeout=10, metadata=(("authorization", header),)
                )
            code = caught.value.code()
            assert code in CLEAN_REFUSALS, (size, code, caught.value.details())
            if size <= 48 * 1024:  # under the limit: read, and refused as a bad token
                assert code is grpc.StatusCode.PERMISSION_DENIED
                assert caught.value.details() == "Request unauthorized."
    # A real token padded to 32 KiB (large IdP tokens) fits and is honoured.
    big = pki.token("default:read", subject="big", extra_claims={"pad": "x" * 32 * 1024})
    with channel(pki, proxy.address) as ch:
        reply = ch.unary_unary(DESCRIBE_NS)(
            DESCRIBE_DEFAULT, timeout=10, metadata=(("authorization", f"Bearer {big}"),)
        )
        assert b"default" in reply
    assert_serving(pki, proxy, reader_token)


def test_a_thousand_metadata_entries(proxy: ProxyProcess, pki: Pki, reader_token) -> None:
    entries = tuple((f"x-h-{i}", "v") for i in range(1000))
    auth = (("authorization", f"Bearer {reader_token}"),)
    with channel(pki, proxy.address) as ch:
        try:
            reply = ch.unary_unary(DESCRIBE_NS)(
                DESCRIBE_DEFAULT, timeout=10, metadata=entries + auth
            )
            assert b"default" in reply  # under maxHeaderListSize: forwarded and answered
        except grpc.RpcError as exc:
            assert exc.code() in CLEAN_REFUSALS - {grpc.StatusCode.PERMISSION_DENIED}, exc
        # The token placed after 1,000 decoys must not be mistaken for a missing one, and a
        # forged second token after the real one is ignored (the first value counts).
        forged = (("authorization", "Bearer forged"),)
        reply = ch.unary_unary(DESCRIBE_NS)(
            DESCRIBE_DEFAULT, timeout=10, metadata=entries[:200] + auth + forged
        )
        assert b"default" in reply
        with pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(DESCRIBE_NS)(
                DESCRIBE_DEFAULT, timeout=10, metadata=entries[:200] + forged + auth
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert_serving(pki, proxy, reader_token)


def _padded_system_info(size: int) -> bytes:
    # GetSystemInfoRequest has no fields: an unknown field 15 of `size` bytes pads it.
    assert GetSystemInfoRequest().SerializeToString() == b""
    length, pad = size, bytearray()
    while True:
        pad.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return b"\x7a" + bytes(pad) + b"\x00" * size


def test_request_over_max_message_size_is_resource_exhausted(
    proxy: ProxyProcess, pki: Pki, reader_token
) -> None:
    with channel(pki, proxy.address) as ch:
        under = ch.unary_unary(GET_SYSTEM_INFO)(_padded_system_info(MAX_MESSAGE // 2), timeout=10)
        assert under is not None
        for size in (MAX_MESSAGE + 1, 4 * MAX_MESSAGE, 32 * MAX_MESSAGE):
            with pytest.raises(grpc.RpcError) as caught:
                ch.unary_unary(GET_SYSTEM_INFO)(_padded_system_info(size), timeout=10)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, size
    assert_serving(pki, proxy, reader_token)


def test_slow_clients_do_not_block_good_ones(proxy: ProxyProcess, pki: Pki, reader_token) -> None:
    ctx = tls_context(pki, pki.files["client.pem"], pki.files["client.key"])
    stalled: list[socket.socket] = []
    try:
        # 50 TCP connections that send half a TLS ClientHello, 50 TLS connections that send
        # half the HTTP/2 preface, then nothing.
        for _ in range(50):
            s = socket.create_connection((LOOPBACK, proxy.port), timeout=5)
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            stalled.append(s)
        for _ in range(50):
            s = socket.create_connection((LOOPBACK, proxy.port), timeout=5)
            tls = ctx.wrap_socket(s, server_hostname=PROXY_NAME)
            tls.sendall(H2_PREFACE[:12])
            stalled.append(tls)
        # And a long poll holding a call open on a good connection.
        poll = PollActivityTaskQueueRequest(
            namespace="default", task_queue=TaskQueue(name="hostile-slow"), identity="slow"
        ).SerializeToString()
        worker_token = pki.token("default:write", subject="slow-poller")
        with channel(pki, proxy.address) as poll_ch:
            future = poll_ch.unary_unary(POLL_ACTIVITY).future(
                poll, timeout=6, metadata=(("authorization", f"Bearer {worker_token}"),)
            )
            wait_until(
                lambda: sample(proxy.metrics(), "temporal_auth_proxy_inflight_requests") == 1,
                5,
                what="the long poll to be in flight",
            )
            latencies = []
            for _ in range(20):
                started = time.monotonic()
                assert_serving(pki, proxy, reader_token)
                latencies.append(time.monotonic() - started)
            try:
                future.result(timeout=15)  # an empty poll answer at its deadline
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        print(f"good calls beside 100 stalled connections: p50 {statistics.median(latencies):.3f}s")
        assert max(latencies) < 2.0, latencies
    finally:
        for s in stalled:
            with contextlib.suppress(OSError):
                s.close()
    assert_serving(pki, proxy, reader_token)


@pytest.mark.slow
def test_500_bad_certificate_handshakes_while_good_clients_keep_working(
    proxy: ProxyProcess, pki: Pki, reader_token, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = issue_client(
        pki,
        tmp_path,
        "flood-expired",
        client=True,
        not_before=now - dt.timedelta(days=3),
        not_after=now - dt.timedelta(days=1),
    )
    bad_contexts = [
        tls_context(pki),
        tls_context(pki, pki.files["rogue.pem"], pki.files["rogue.key"]),
        tls_context(pki, *expired),
    ]
    outcomes: list[str] = []
    good_latencies: list[float] = []
    good_failures: list[str] = []
    stop = threading.Event()

    def bad(i: int) -> str:
        return h2_attempt(proxy.port, bad_contexts[i % len(bad_contexts)])

    def good() -> None:
        with channel(pki, proxy.address) as persistent:
            n = 0
            while not stop.is_set() and n < 2000:
                n += 1
                started = time.monotonic()
                try:
                    if n % 5 == 0:  # every fifth call on a brand-new connection
                        with channel(pki, proxy.address) as fresh:
                            fresh.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10)
                    else:
                        persistent.unary_unary(DESCRIBE_NS)(
                            DESCRIBE_DEFAULT,
                            timeout=10,
                            metadata=(("authorization", f"Bearer {reader_token}"),),
                        )
                    good_latencies.append(time.monotonic() - started)
                except grpc.RpcError as exc:
                    good_failures.append(f"{exc.code().name}: {exc.details()}")

    good_threads = [threading.Thread(target=good) for _ in range(2)]
    for t in good_threads:
        t.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(bad, range(500), timeout=120))
    finally:
        stop.set()
        for t in good_threads:
            t.join(30)
    flood_seconds = time.monotonic() - started
    accepted = [o for o in outcomes if o == "h2"]
    total_good = len(good_latencies) + len(good_failures)
    lat = sorted(good_latencies)
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99)] if lat else float("nan")
    print(
        f"flood: 500 bad handshakes in {flood_seconds:.1f}s; good calls meanwhile: "
        f"{len(good_latencies)}/{total_good} ok, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert len(outcomes) == 500
    assert not accepted, "a bad certificate was accepted"
    assert not good_failures, good_failures[:5]
    assert total_good >= 20, total_good
    assert p99 < 2.0
    assert_serving(pki, proxy, reader_token)
