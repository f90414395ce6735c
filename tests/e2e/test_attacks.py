"""Attacks one connection can mount on the gRPC port, each beside a good client (issue 14).

The attacker speaks raw HTTP/2 over TLS with the rig's valid client certificate and no token,
so it can do what no gRPC library does: open streams past the advertised limit, reset each
stream right after its HEADERS (CVE-2023-44487), flood PINGs while reading the replies. A good
client on its own connection keeps calling throughout: every call must succeed within 1 s. The
proxy's RSS (from /proc) stays under 300 MiB and returns within 20% of its idle value within
30 s of the attacker leaving. Every load loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import hpack
import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.rig import (
    LOOPBACK,
    PROXY_NAME,
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    deep_merge,
    jwt_authorization,
    mtls_channel,
    sample,
    wait_until,
)

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
GET_SYSTEM_INFO = WF + "GetSystemInfo"
DESCRIBE_NS = WF + "DescribeNamespace"
DESCRIBE_DEFAULT = DescribeNamespaceRequest(namespace="default").SerializeToString()
MiB = 1024 * 1024

# HTTP/2 frame types and codes (RFC 9113).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x8, 0x7, 0xB
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


# ------------------------------------------------------------------------------- attacker


@dataclass
class Seen:
    """What the attacker read back from the proxy."""

    frames: Counter[int] = field(default_factory=Counter)
    resets: Counter[int] = field(default_factory=Counter)  # RST_STREAM error codes
    max_concurrent_streams: int | None = None
    goaway: tuple[int, bytes] | None = None  # error code, debug data
    statuses: dict[int, str] = field(default_factory=dict)  # stream id -> grpc-status
    closed: bool = False


class RawH2:
    """One HTTP/2 connection over TLS that writes whatever frames it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seen = Seen()
        self.next_id = 1
        self._hpack = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._settled = asyncio.Event()  # the proxy's SETTINGS arrived and were acknowledged
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, pki: Pki, port: int) -> RawH2:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=pki.read("ca.pem").decode())
        ctx.load_cert_chain(pki.files["client.pem"], pki.files["client.key"])
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=PROXY_NAME), 10
        )
        writer.write(PREFACE + frame(SETTINGS, 0, 0))
        await asyncio.wait_for(writer.drain(), 10)
        conn = cls(reader, writer)
        # Like any client, acknowledge the proxy's SETTINGS (its stream limit applies then).
        await asyncio.wait_for(conn._settled.wait(), 10)
        return conn

    async def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9 : 9 + length], buf[9 + length :]
                    self._on_frame(kind, flags, sid, payload)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self.seen.closed = True
            self._settled.set()

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        self.seen.frames[kind] += 1
        if kind == HEADERS:  # every block, in order: the decoder's table must stay in step
            fields = dict(self._decoder.decode(payload, raw=True))
            if b"grpc-status" in fields:
                self.seen.statuses[sid] = fields[b"grpc-status"].decode()
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack(">HI", payload[i : i + 6])
                if ident == SETTINGS_MAX_CONCURRENT_STREAMS:
                    self.seen.max_concurrent_streams = value
            self.writer.write(frame(SETTINGS, ACK, 0))
            self._settled.set()
        elif kind == RST_STREAM:
            self.seen.resets[int.from_bytes(payload[:4], "big")] += 1
        elif kind == PING and not flags & ACK:
            self.writer.write(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            self.seen.goaway = (int.from_bytes(payload[4:8], "big"), payload[8:])

    def headers(self, method: str, *, end_stream: bool = False) -> tuple[int, bytes]:
        """A new stream's HEADERS frame for a gRPC call (no token) to `method`."""
        sid, self.next_id = self.next_id, self.next_id + 2
        block = self._hpack.encode(
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", method),
                (":authority", PROXY_NAME),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return sid, frame(HEADERS, flags, sid, block)

    async def send(self, data: bytes, timeout: float = 30) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)

    async def close(self) -> None:
        """Leave as an attacker does: drop the TCP connection, no goodbye."""
        self.writer.transport.abort()
        self._reading.cancel()
        with contextlib.suppress(BaseException):
            await self._reading


# ---------------------------------------------------------------------- good client, RSS


def rss_mib(proxy: ProxyProcess) -> float:
    for line in open(f"/proc/{proxy.proc.pid}/status"):  # noqa: SIM115 - tiny read
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class GoodClient:
    """A trusted worker on its own connection: one call after another, each timed."""

    def __init__(self, pki: Pki, proxy: ProxyProcess, token: str) -> None:
        self._channel = mtls_channel(pki, proxy.address)
        self._md = (("authorization", f"Bearer {token}"),)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def call(self) -> None:
        started = time.monotonic()
        try:
            reply = self._channel.unary_unary(DESCRIBE_NS)(
                DESCRIBE_DEFAULT, timeout=10, metadata=self._md
            )
            assert b"default" in reply
        except grpc.RpcError as exc:
            self.failures.append(f"{exc.code().name}: {exc.details()}")
        self.latencies.append(time.monotonic() - started)

    def _run(self) -> None:
        for _ in range(5000):
            if self._stop.is_set():
                return
            self.call()
            time.sleep(0.02)

    def __enter__(self) -> GoodClient:
        for _ in range(5):  # connected and warm before anything is measured
            self.call()
        self.latencies.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._channel.close()

    def check(self) -> None:
        assert not self.failures, self.failures[:5]
        assert len(self.latencies) >= 20, "the good client barely ran"
        assert max(self.latencies) < 1.0, sorted(self.latencies)[-5:]


# --------------------------------------------------------------------------------- fixture


@pytest.fixture
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    """The default limits, JWT authorization: the attacker has a certificate, no token."""
    cfg = deep_merge(base_config(pki, terminator.port), {"authorization": jwt_authorization(pki)})
    proc = ProxyProcess(tmp_path_factory.mktemp("attacks"), cfg)
    yield proc
    proc.stop()
    assert proc.proc.returncode == 0
    assert "Traceback" not in proc.log_path.read_text(errors="replace")


@pytest.fixture
def token(pki: Pki) -> str:
    return pki.token("default:read", subject="good-worker")


def idle_rss(proxy: ProxyProcess, pki: Pki, token: str) -> float:
    """RSS once the good client's connection is warm and the proxy has settled."""
    with GoodClient(pki, proxy, token) as warm:
        for _ in range(20):
            warm.call()
    time.sleep(1)
    return rss_mib(proxy)


def assert_memory_returns(proxy: ProxyProcess, idle: float) -> float:
    """Within 30 s of the attacker leaving, RSS is back within 20% of idle."""
    deadline = time.monotonic() + 30
    while True:
        now = rss_mib(proxy)
        if now <= idle * 1.2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert now <= idle * 1.2, f"RSS {now:.0f} MiB, idle {idle:.0f} MiB"
    return now


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return sample(proxy.metrics(), name, **labels) or 0.0


# ---------------------------------------------------------------------------------- tests


def test_calls_over_the_process_cap_are_refused_at_once_and_counted(
    start_proxy: ProxyFactory, pki: Pki, token: str
) -> None:
    """`listen.maxConcurrentCalls`: held header-only streams count; the next call, from any
    connection, gets RESOURCE_EXHAUSTED at once (a held one too); leaving frees the slots."""
    cap = 20
    proxy = start_proxy(
        {"authorization": jwt_authorization(pki), "listen": {"maxConcurrentCalls": cap}}
    )
    good = mtls_channel(pki, proxy.address)
    md = (("authorization", f"Bearer {token}"),)

    def good_call() -> tuple[grpc.StatusCode, float, str]:
        started = time.monotonic()
        try:
            good.unary_unary(DESCRIBE_NS)(DESCRIBE_DEFAULT, timeout=10, metadata=md)
            return grpc.StatusCode.OK, time.monotonic() - started, ""
        except grpc.RpcError as exc:
            return exc.code(), time.monotonic() - started, exc.details() or ""

    async def attack() -> None:
        conn = await RawH2.open(pki, proxy.port)
        await conn.send(b"".join(conn.headers(GET_SYSTEM_INFO)[1] for _ in range(cap)))
        wait = time.monotonic() + 10
        while (result := await asyncio.to_thread(good_call))[0] is grpc.StatusCode.OK:
            assert time.monotonic() < wait, "the held streams never counted against the cap"
            await asyncio.sleep(0.1)
        code, took, details = result
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert details == "temporal-auth-proxy: too many calls in flight"
        assert took < 1.0
        # One more header-only stream: answered RESOURCE_EXHAUSTED (8) without its request.
        sid, headers = conn.headers(GET_SYSTEM_INFO)
        await conn.send(headers)
        deadline = time.monotonic() + 5
        while sid not in conn.seen.statuses and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert conn.seen.statuses.get(sid) == "8", conn.seen.statuses
        assert not any(conn.seen.statuses.get(i) for i in range(1, 2 * cap, 2))  # still held
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(attack(), 40))
        rejected = metric(
            proxy, "temporal_auth_proxy_calls_rejected_total", reason="max_concurrent_calls"
        )
        assert rejected >= 2
        requests = "temporal_auth_proxy_requests_total"
        assert metric(proxy, requests, method="DescribeNamespace", code="RESOURCE_EXHAUSTED") >= 1
        assert metric(proxy, requests, method="GetSystemInfo", code="RESOURCE_EXHAUSTED") == 1
        # The attacker left: its slots are free again.
        wait_until(lambda: good_call()[0] is grpc.StatusCode.OK, 10, what="the slots to free")
        wait_until(
            lambda: metric(proxy, "temporal_auth_proxy_calls_abandoned_total") == cap,
            10,
            what="the held streams to count as abandoned",
        )
    finally:
        good.close()


def test_held_streams_are_bounded_per_connection(proxy: ProxyProcess, pki: Pki, token: str) -> None:
    """30,000 header-only streams on one connection: the announced limit holds the rest off."""
    idle = idle_rss(proxy, pki, token)
    streams = 30_000
    peak = 0.0

    async def attack() -> Seen:
        nonlocal peak
        conn = await RawH2.open(pki, proxy.port)
        limit = conn.seen.max_concurrent_streams
        assert limit is not None and limit <= 1000, limit
        burst = b"".join(conn.headers(GET_SYSTEM_INFO)[1] for _ in range(streams))
        started = time.monotonic()
        for i in range(0, len(burst), 1 << 20):
            await conn.send(burst[i : i + (1 << 20)])
        # Hold them while the good client works, watching memory.
        while time.monotonic() - started < 5:
            peak = max(peak, rss_mib(proxy))
            await asyncio.sleep(0.2)
        await conn.close()
        return conn.seen

    with GoodClient(pki, proxy, token) as good:
        seen = asyncio.run(asyncio.wait_for(attack(), 45))
    good.check()
    print(
        f"held streams: idle {idle:.0f} MiB, peak {peak:.0f} MiB, resets {dict(seen.resets)}, "
        f"good calls {len(good.latencies)}, slowest {max(good.latencies) * 1000:.0f} ms"
    )
    assert peak < 300, peak
    # Everything past the announced limit was refused by the transport, never held.
    assert seen.resets[REFUSED_STREAM] >= streams - 1000, seen.resets
    left = time.monotonic()
    after = assert_memory_returns(proxy, idle)
    print(f"held streams: {after:.0f} MiB {time.monotonic() - left:.1f} s after leaving")
    # The held streams that reached the proxy ended without a request: counted.
    wait_until(
        lambda: metric(proxy, "temporal_auth_proxy_calls_abandoned_total") >= 500,
        10,
        what="the abandoned held streams to be counted",
    )


def test_rapid_reset_is_bounded_at_the_connection(
    proxy: ProxyProcess, pki: Pki, token: str
) -> None:
    """50,000 open-then-RST_STREAM on one connection (CVE-2023-44487)."""
    idle = idle_rss(proxy, pki, token)
    pairs = 50_000
    peak = 0.0

    async def attack() -> tuple[Seen, float]:
        nonlocal peak
        conn = await RawH2.open(pki, proxy.port)
        started = time.monotonic()
        chunk = 1000
        for _ in range(0, pairs, chunk):
            data = []
            for _ in range(chunk):
                sid, headers = conn.headers(GET_SYSTEM_INFO)
                data.append(headers + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
            await conn.send(b"".join(data))
            peak = max(peak, rss_mib(proxy))
            if conn.seen.closed or time.monotonic() - started > 30:
                break
        took = time.monotonic() - started
        for _ in range(10):
            peak = max(peak, rss_mib(proxy))
            await asyncio.sleep(0.2)
        await conn.close()
        return conn.seen, took

    with GoodClient(pki, proxy, token) as good:
        seen, took = asyncio.run(asyncio.wait_for(attack(), 50))
        left = time.monotonic()
        time.sleep(1)
    good.check()
    print(
        f"rapid reset: {pairs} pairs in {took:.1f} s; idle {idle:.0f} MiB, peak {peak:.0f} MiB; "
        f"resets {dict(seen.resets)} goaway {seen.goaway}; good calls {len(good.latencies)}, "
        f"slowest {max(good.latencies) * 1000:.0f} ms; "
        f"abandoned {metric(proxy, 'temporal_auth_proxy_calls_abandoned_total'):.0f}"
    )
    assert peak < 300, peak
    # Right after the attacker left, a fresh caller is served at once (no lock-out).
    with GoodClient(pki, proxy, token) as fresh:
        fresh.call()
    assert time.monotonic() - left < 5
    assert not fresh.failures and max(fresh.latencies) < 1.0, fresh.latencies
    assert_memory_returns(proxy, idle)
    assert metric(proxy, "temporal_auth_proxy_calls_abandoned_total") > 0


def test_ping_flood_is_cut_off(proxy: ProxyProcess, pki: Pki, token: str) -> None:
    """PINGs as fast as the replies are read: grpc's ping-abuse policy ends the connection."""
    idle = idle_rss(proxy, pki, token)

    def cpu_seconds() -> float:
        fields = open(f"/proc/{proxy.proc.pid}/stat").read().rpartition(")")[2].split()  # noqa: SIM115
        return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in ticks of 10 ms

    async def attack() -> tuple[Seen, int, float]:
        conn = await RawH2.open(pki, proxy.port)
        sent, started = 0, time.monotonic()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            while not conn.seen.closed and sent < 200_000 and time.monotonic() - started < 10:
                await conn.send(
                    b"".join(frame(PING, 0, 0, struct.pack(">Q", sent + i)) for i in range(100)), 5
                )
                sent += 100
                await asyncio.sleep(0)
        elapsed = time.monotonic() - started
        # Wait (bounded) for the server's answer to the flood before leaving ourselves.
        for _ in range(50):
            if conn.seen.closed or conn.seen.goaway is not None:
                break
            await asyncio.sleep(0.1)
        cut_off.append(conn.seen.closed or conn.seen.goaway is not None)
        await conn.close()
        return conn.seen, sent, elapsed

    cut_off: list[bool] = []  # the server ended the connection before the attacker did
    cpu_before = cpu_seconds()
    with GoodClient(pki, proxy, token) as good:
        seen, sent, elapsed = asyncio.run(asyncio.wait_for(attack(), 30))
        time.sleep(1)
    cpu = cpu_seconds() - cpu_before
    good.check()
    print(
        f"ping flood: {sent} sent in {elapsed:.1f} s, acks {seen.frames[PING]}, "
        f"goaway {seen.goaway}, cpu {cpu:.2f} s; good calls {len(good.latencies)}, "
        f"slowest {max(good.latencies) * 1000:.0f} ms"
    )
    # Cut off by the server: grpc-core sends GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and
    # closes. On a loaded machine the close can reset the socket before the client has read
    # that frame, so either is proof; a GOAWAY, when read, must be that one.
    assert cut_off == [True], seen
    if seen.goaway is not None:
        assert seen.goaway[0] == ENHANCE_YOUR_CALM and seen.goaway[1] == b"too_many_pings"
    assert rss_mib(proxy) < 300
    assert_memory_returns(proxy, idle)


# ------------------------------------------------------- keepalives still welcome (item 10)


def proxy_connections(port: int) -> frozenset[int]:
    """Client-side ports of the established TCP connections to `port` on this host."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                local, remote, state = line.split()[1:4]
                if state == "01" and int(remote.rpartition(":")[2], 16) == port:
                    ports.add(int(local.rpartition(":")[2], 16))
    return frozenset(ports)


IDLE_SECONDS = 170
# grpc-core's http_keepalive trace: `I1130 10:31:44.611234 24555 frame_ping.cc:106]
# SERVER[0x7f63...]: received ping 1452...: now=... ping_strikes=0`
PING_TRACE = re.compile(
    r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*SERVER\[(\w+)\]: received ping .*ping_strikes=(\d+)",
    re.MULTILINE,
)


def keepalive_pings(log: str) -> list[tuple[float, str, int]]:
    """(unix time, transport, strikes so far) of every PING the proxy received."""
    year = time.gmtime().tm_year
    out = []
    for day, clock, transport, strikes in PING_TRACE.findall(log):
        when = time.mktime(time.strptime(f"{year}{day} {clock[:8]}", "%Y%m%d %H:%M:%S"))  # local
        out.append((when + float("0" + clock[8:]), transport, int(strikes)))
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sdk_and_cli_keepalives_survive_three_idle_minutes(
    start_proxy: ProxyFactory, pki: Pki
) -> None:
    """The ping policy still welcomes Temporal's clients: a Python SDK worker (SDK core pings
    every 30 s), an SDK client making no call, and a CLI long poll (Go, every 30 s) sit idle
    through the proxy for ~3 minutes on their first connections (none dropped, none GOAWAY'd),
    then work completes."""
    from temporalio.worker import Worker

    from tests.e2e.rig import cli
    from tests.e2e.sdk import connect
    from tests.e2e.workflows import GreetingWorkflow, greet

    # grpc-core's keepalive trace shows each PING the proxy receives, so the test knows the
    # clients really pinged through the idle minutes.
    proxy = start_proxy(
        {"authorization": jwt_authorization(pki)},
        env={"GRPC_TRACE": "http_keepalive", "GRPC_VERBOSITY": "INFO"},
    )
    token = pki.token("default:write", subject="idle-worker")
    worker_queue, cli_queue, cli_wf = "idle-worker-tq", "idle-cli-tq", "idle-cli-wf"
    started = cli(
        pki, proxy.address, "workflow", "start", "--type", "GreetingWorkflow",
        "--task-queue", cli_queue, "--workflow-id", cli_wf, "--input", '"cli"', token=token,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    cli_result: list[subprocess.CompletedProcess[str]] = []
    waiter = threading.Thread(
        target=lambda: cli_result.append(
            cli(pki, proxy.address, "workflow", "result", "--workflow-id", cli_wf,
                token=token, timeout=IDLE_SECONDS + 60)
        ),
        daemon=True,
    )  # fmt: skip

    idle: list[float] = []  # wall clock, start and end of the idle minutes

    async def scenario() -> tuple[set[frozenset[int]], str]:
        client = await connect(pki, proxy.address, token=token)
        # A client that makes no call at all in the idle minutes: only its keepalive pings
        # cross its connection (the case grpc's default policy would strike and GOAWAY).
        quiet = await connect(pki, proxy.address, token=token)
        kinds = {"workflows": [GreetingWorkflow], "activities": [greet]}
        async with Worker(client, task_queue=worker_queue, **kinds):
            waiter.start()  # the CLI long-polls the result of a workflow nobody runs yet
            await asyncio.sleep(5)
            seen: set[frozenset[int]] = set()
            idle.append(time.time())
            until = time.monotonic() + IDLE_SECONDS
            while time.monotonic() < until:
                now = proxy_connections(proxy.port)
                if now not in seen:
                    print(f"connections at {time.strftime('%H:%M:%S')}: {sorted(now)}")
                seen.add(now)
                await asyncio.sleep(2)
            idle.append(time.time())
            assert waiter.is_alive() and not cli_result, cli_result
            # Idle is over: the same worker runs a workflow, and a worker for the CLI's queue
            # (same client, same connection) completes the workflow the CLI is waiting on.
            greeting = await client.execute_workflow(
                GreetingWorkflow.run, "sdk", id="idle-sdk-wf", task_queue=worker_queue
            )
            assert (
                await quiet.workflow_service.get_system_info(GetSystemInfoRequest())
            ).server_version
            seen.add(proxy_connections(proxy.port))  # the CLI still waits on its connection
            async with Worker(client, task_queue=cli_queue, **kinds):
                await asyncio.to_thread(waiter.join, 30)
        return seen, greeting

    seen, greeting = asyncio.run(scenario())
    assert greeting == "Hello, sdk!"
    assert cli_result and cli_result[0].returncode == 0, cli_result
    assert "Hello, cli!" in cli_result[0].stdout
    # One set of connections from start to end: the SDK's and the CLI's (no reconnects).
    assert len(seen) == 1, seen
    assert len(next(iter(seen))) >= 3, seen
    # Both clients pinged during the idle minutes, and no ping ever counted as a strike.
    pings = [p for p in keepalive_pings(proxy.logs()) if idle[0] <= p[0] <= idle[1]]
    assert len({transport for _, transport, _ in pings}) >= 2, pings
    assert len(pings) >= 2 * (IDLE_SECONDS // 30 - 1), pings
    assert all(strikes == 0 for _, _, strikes in pings), pings
    print(f"keepalives: {len(pings)} pings on {len({t for _, t, _ in pings})} connections")
