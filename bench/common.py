"""Shared parts of the benchmark: PKI, process handling, /proc accounting, proxy configs.

Loopback only. Every process started here gets its own session so it can be stopped by its
process group without touching anything else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.dev.pki import (
    CertificateAuthority,
    generate_key,
    jwk_from_public_key,
    mint_token,
    private_key_pem,
)

LOOPBACK = "127.0.0.1"
SERVER_NAME = "proxy.test"
PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
KID = "bench-rsa"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # polling until ready
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} ({last!r})")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((LOOPBACK, port)) == 0


# ----------------------------------------------------------------------------------- PKI


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    jwks: Path
    jwt_key_pem: bytes = field(repr=False)

    def token(self, *permissions: str, ttl: int = 3600) -> str:
        return mint_token(
            self.jwt_key_pem, kid=KID, subject="bench", permissions=permissions, ttl_seconds=ttl
        )


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("bench CA")
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    server = ca.issue(
        SERVER_NAME, dns_names=(SERVER_NAME, "localhost"), ip_addresses=(LOOPBACK,), server=True
    )
    client = ca.issue(
        "bench-client", uris=("spiffe://bench.test/ns/default/sa/bench",), client=True
    )
    server.write(directory, "server")
    client.write(directory, "client")
    key = generate_key("rsa")
    jwks = {"keys": [jwk_from_public_key(key.public_key(), KID, "RS256")]}
    (directory / "jwks.json").write_text(json.dumps(jwks))
    return Pki(
        dir=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        jwks=directory / "jwks.json",
        jwt_key_pem=private_key_pem(key),
    )


# ----------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own session, logging to a file; stop() ends its whole group."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{tail}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:
            # The leader is gone; make sure nothing it started lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


# ------------------------------------------------------------------------ /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant (nginx workers, proxy worker processes, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks / CLK_TCK


def rss_mib(pids: Sequence[int], key: str = "VmRSS") -> float:
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


# --------------------------------------------------------------------------------- proxy


def proxy_config(
    pki: Pki,
    *,
    upstream: str,
    port: int,
    admin_port: int,
    mode: str,
    workers: int = 1,
    channels: int = 1,
    transparent_retries: bool = True,
) -> dict[str, Any]:
    """`default`: mTLS + JWT claim mapper + Temporal's authorizer; `noop`: mTLS only."""
    authorization: dict[str, Any] = {"authorizer": "noop", "claimMapper": "noop"}
    if mode == "default":
        authorization = {
            "authorizer": "default",
            "claimMapper": "default",
            "jwtKeyProvider": {"keySourceURIs": [pki.jwks.as_uri()], "refreshInterval": "1m"},
        }
    return {
        "listen": {
            "address": f"{LOOPBACK}:{port}",
            "workers": workers,
            "shutdownGracePeriod": "2s",
            # The long-poll run holds 10,000 calls, past the default cap of 8,000.
            "maxConcurrentCalls": 100_000,
        },
        "upstream": {
            "address": upstream,
            "channels": channels,
            "transparentRetries": transparent_retries,
        },
        "admin": {"address": f"{LOOPBACK}:{admin_port}"},
        "tls": {
            "frontend": {
                "server": {
                    "certFile": str(pki.server_cert),
                    "keyFile": str(pki.server_key),
                    "clientCaFiles": [str(pki.ca)],
                    "requireClientAuth": True,
                }
            }
        },
        "authorization": authorization,
        "log": {"format": "json", "level": "info"},
    }


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ProxyFront:
    """`python -m proxy serve` with a generated config; waits for /readyz."""

    def __init__(
        self, workdir: Path, name: str, config: dict[str, Any], source: Path = REPO
    ) -> None:
        # `source`: the tree whose `proxy` package runs (a baseline checkout for `*-base`);
        # cwd too, since `python -m` puts the cwd ahead of PYTHONPATH.
        self.port = int(config["listen"]["address"].rpartition(":")[2])
        self.admin_port = int(config["admin"]["address"].rpartition(":")[2])
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = Proc(
            name,
            [PYTHON, "-m", "proxy", "serve", "--config", str(path.resolve())],
            workdir / f"{name}.log",
            env={"PYTHONPATH": str(source)},
            cwd=source,
        )

        def ready() -> bool:
            self.proc.check()
            return http_get(self.admin_port, "/readyz", 2)[0] == 200

        try:
            wait_until(ready, 60, f"{name} /readyz")
        except Exception:
            self.proc.stop()
            raise

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def metrics(self) -> str:
        return http_get(self.admin_port, "/metrics")[1].decode()

    def requests_by_code(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                if s.name == "temporal_auth_proxy_requests_total":
                    out[s.labels["code"]] = out.get(s.labels["code"], 0.0) + s.value
        return out

    def inflight(self) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                if s.name == "temporal_auth_proxy_inflight_requests":
                    return float(s.value)
        return 0.0

    def stop(self) -> None:
        self.proc.stop(15)
