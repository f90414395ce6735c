"""Issue 14 items 3 and 8 over real sockets: the admin port cannot starve the proxy, and callers
cannot flood the log or rotate the audit file.

Each test starts its own proxy from the rig (real dev server, real certificates and tokens).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.rig import (
    LOOPBACK,
    Pki,
    ProxyProcess,
    jwt_authorization,
    mtls_channel,
    sample,
    wait_until,
)

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
GET_SYSTEM_INFO = WF + "GetSystemInfo"
DESCRIBE_NS = WF + "DescribeNamespace"
ATTACK_SOCKETS = 20_000
PROXY_FILE_LIMIT = 4096  # a host where 20,000 sockets are far more than the proxy may open
CLOSED = "temporal_auth_proxy_admin_connections_closed_total"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------------------ slowloris


# The rig lifts the log repeat limit for other tests; these run with the defaults.
DEFAULT_LOG = {"log": {"repeatBurst": 10, "repeatInterval": "10s", "maxValueLength": 1024}}


def test_request_head_sent_byte_by_byte_is_closed_within_30s(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(DEFAULT_LOG)  # default admin timeouts
    s = socket.create_connection((LOOPBACK, proxy.admin_port), timeout=5)
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
    started = time.monotonic()
    closed_after = None
    try:
        for byte in head:
            if time.monotonic() - started > 35:
                break
            try:
                s.sendall(bytes([byte]))
                s.settimeout(0.5)
                if s.recv(1) == b"":  # the server closed: no answer to half a head
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
    finally:
        s.close()
    print(f"slowloris closed after {closed_after}s")
    assert closed_after is not None and closed_after < 30
    assert (sample(proxy.metrics(), CLOSED, reason="header_timeout") or 0) >= 1


# ------------------------------------------------------- 20,000 idle sockets on the admin port


# Holds idle sockets on a port, in a process of its own: each process may open at most its
# hard RLIMIT_NOFILE (20,000 on the project's machines, and not raisable without privilege), so
# the attack is split over two such processes. Bounded: it exits after 60 s whatever happens.
ATTACKER = r"""
import resource, select, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # its own limit, as far as allowed
port, count, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held, deadline = [], time.monotonic() + 30
while len(held) < count and time.monotonic() < deadline:
    s = socket.socket()
    s.setblocking(False)
    # A source address per process, its port picked at connect: the kernel's search for a
    # free port stays short with 10,000 connections.
    s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
    s.bind((source, 0))
    s.connect_ex(("127.0.0.1", port))  # and then nothing, ever
    held.append(s)
print(len(held), flush=True)
select.select([sys.stdin], [], [], 60)
"""


@contextlib.contextmanager
def idle_sockets(port: int, count: int, processes: int = 2) -> Iterator[int]:
    """`count` idle connections to `port`; yields how many were opened."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ATTACKER,
                str(port),
                str(count // processes),
                f"127.0.0.{i + 2}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    try:
        opened = 0
        for proc in procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 40)
            assert ready, "the attacker did not report"
            opened += int(proc.stdout.readline())
        yield opened
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


class GoodClient(threading.Thread):
    """A fresh gRPC connection and a call, again and again, until stopped."""

    def __init__(self, pki: Pki, address: str) -> None:
        super().__init__(daemon=True)
        self.pki, self.address = pki, address
        self.stop = threading.Event()
        self.results: list[tuple[bool, float, str]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 50
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                with mtls_channel(self.pki, self.address) as ch:
                    ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10)
                self.results.append((True, time.monotonic() - started, ""))
            except grpc.RpcError as exc:
                self.results.append((False, time.monotonic() - started, str(exc.details())))
            self.stop.wait(0.2)


def test_20000_idle_admin_sockets_do_not_starve_grpc(start_proxy: ProxyFactory, pki: Pki) -> None:
    proxy = start_proxy(DEFAULT_LOG)
    pid = proxy.proc.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (PROXY_FILE_LIMIT, PROXY_FILE_LIMIT))
    log_before = proxy.log_path.stat().st_size
    good = GoodClient(pki, proxy.address)
    good.start()
    started = time.monotonic()
    try:
        with idle_sockets(proxy.admin_port, ATTACK_SOCKETS) as opened:
            opened_in = time.monotonic() - started
            time.sleep(3)  # let every connection reach the proxy while good calls go on
            proxy_fds = open_fds(pid)
            good.stop.set()
            good.join(20)
    finally:
        good.stop.set()
    ok = [r for r in good.results if r[0]]
    print(
        f"{opened} admin sockets in {opened_in:.1f}s; proxy fds {proxy_fds}; good calls "
        f"{len(ok)}/{len(good.results)}, slowest {max(r[1] for r in good.results):.2f}s"
    )
    assert opened == ATTACK_SOCKETS
    assert len(good.results) >= 10 and len(ok) == len(good.results), good.results
    assert proxy_fds < 1024  # the admin cap (256) and gRPC, never the attacker's 20,000
    wait_until(lambda: proxy.healthy(), 10, what="the admin port to answer again")
    rejected = sample(proxy.metrics(), CLOSED, reason="over_limit") or 0
    assert rejected > ATTACK_SOCKETS / 2
    log_growth = proxy.log_path.stat().st_size - log_before
    print(f"log grew {log_growth} bytes; {int(rejected)} rejected")
    assert log_growth < 64 * 1024


# ------------------------------------------------------------- oversized denials vs log, audit

BIG = 8 * 1024 * 1024 - 1024
FLOOD = 1000


def _describe(ch: grpc.Channel, namespace: str, token: str | None) -> grpc.StatusCode:
    md = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        ch.unary_unary(DESCRIBE_NS)(
            DescribeNamespaceRequest(namespace=namespace).SerializeToString(),
            timeout=20,
            metadata=md,
        )
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(path.parent.glob(path.name + "*"), reverse=True):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def test_oversized_denials_keep_the_log_small_and_the_genuine_audit_record(
    start_proxy: ProxyFactory, pki: Pki, tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    proxy: ProxyProcess = start_proxy(
        {
            **DEFAULT_LOG,
            "authorization": jwt_authorization(pki),
            "listen": {"maxMessageSize": 8 * 1024 * 1024},
            # Far smaller than the default 100 MiB x 6 files: without the guards, 1,000
            # oversized denials rotate anything out of it.
            "audit": {
                "enabled": True,
                "sink": "file",
                "path": str(audit_path),
                "maxBytes": 1024 * 1024,
                "backups": 1,
            },
        }
    )
    genuine = pki.token("other:read", subject="genuine-caller")
    attacker = pki.token("default:read", subject="mallory")
    log_before = proxy.log_path.stat().st_size
    with mtls_channel(pki, proxy.address) as ch:
        assert _describe(ch, "default", genuine) is grpc.StatusCode.PERMISSION_DENIED
        started = time.monotonic()
        for i in range(10):  # 8 MiB namespaces: 80 MiB of log before the fix
            assert _describe(ch, f"{i}" + "n" * BIG, attacker) is grpc.StatusCode.PERMISSION_DENIED
            assert _describe(ch, f"{i}" + "n" * BIG, None) is grpc.StatusCode.PERMISSION_DENIED
        padded = "p" * 64 * 1024
        for i in range(FLOOD):
            assert _describe(ch, f"{i}{padded}", attacker) is grpc.StatusCode.PERMISSION_DENIED
        sent_in = time.monotonic() - started

    # Both repeat windows (10 s by default) close and write their counts.
    def mallory_denials() -> int:
        cut = [r for r in _audit_lines(audit_path) if r["subject"] == "mallory"]
        return sum(r.get("suppressed", 1) for r in cut)

    wait_until(lambda: mallory_denials() == FLOOD + 10, 15, what="the audit summary record")
    wait_until(
        lambda: any(e.get("event") == "log_suppressed" for e in proxy.events()),
        15,
        what="the log summary line",
    )
    log_growth = proxy.log_path.stat().st_size - log_before
    records = _audit_lines(audit_path)
    audit_bytes = sum(p.stat().st_size for p in tmp_path.glob("audit.jsonl*"))
    print(
        f"{FLOOD + 20} oversized denials in {sent_in:.1f}s: log +{log_growth} B, "
        f"audit {audit_bytes} B in {len(records)} records"
    )
    assert log_growth < 256 * 1024
    assert any(r["subject"] == "genuine-caller" and r["decision"] == "deny" for r in records)
    assert max(len(json.dumps(r)) for r in records) < 8 * 1024
    cut = [r for r in records if r["subject"] == "mallory"]
    assert all("[truncated" in r["namespace"] for r in cut)
    assert len(cut) < 50  # the rest folded into summary records
    summaries = [e for e in proxy.events() if e.get("event") == "log_suppressed"]
    assert any(e.get("suppressed_event") == "authz_denied" and e["count"] > 900 for e in summaries)
    denied_lines = [e for e in proxy.events() if e.get("event") == "authz_denied"]
    assert all(len(e.get("namespace", "")) < 1100 for e in denied_lines)


def test_soft_file_limit_is_raised_and_an_admin_cap_too_big_for_it_is_reported(
    start_proxy: ProxyFactory,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The proxy starts with a low soft limit, as under many init systems (it inherits ours).
    low = min(max(1024, open_fds(os.getpid()) + 512), hard - 1)  # room for this test's own
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        proxy = start_proxy({"admin": {"maxConnections": hard}})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{proxy.proc.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)], line
    (listening,) = [e for e in proxy.events() if e.get("event") == "admin_listening"]
    assert listening["file_limit"] == hard
    (low,) = [e for e in proxy.events() if e.get("event") == "file_limit_low"]
    assert low["admin_max_connections"] == hard
