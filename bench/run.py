"""`make bench`: one command, side by side, on this machine.

Fronts (each requires a client certificate except `direct`):
  direct       h2load straight to the upstream (plaintext h2c), the baseline
  nginx        nginx `grpc_pass`, `ssl_verify_client on`, 1 worker, the same certificates
  bare         bench/passthrough.py: grpc.aio generic handler, bytes in/out, no auth/metrics
  proxy-noop   this proxy, authorizer and claim mapper `noop` (mTLS only)
  proxy        this proxy, full default pipeline: mTLS, JWT, namespace extraction, authz
  proxy-noretry  as `proxy` with `upstream.transparentRetries: false` (canned upstream only)
  proxy-w2     as `proxy` with `listen.workers: 2` (canned upstream only)
  proxy-base, proxy-noop-base
               `proxy` / `proxy-noop` run from the BASELINE revision (`--baseline`, default the
               commit this round started from), in the same run: each pair's cells alternate
               A B B A per in-flight level so machine drift hits both alike

Upstreams: nghttpd serving a canned gRPC answer (never the bottleneck), and the real Temporal
dev server (GetSystemInfo, rate limits lifted). Load: h2load (client certificate through the
LD_PRELOAD shim bench/h2load_client_cert.c). gRPC status is checked separately: a Python
client sanity pass per front, the DATA byte count h2load received, and the proxy's own
requests_total{code} counter.

Writes bench/results/<timestamp>/results.md, results.json and results.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from baseline import BASELINE_REF, Baseline, checkout, fit_config
from common import (
    CLK_TCK,
    LOOPBACK,
    PYTHON,
    REPO,
    SERVER_NAME,
    Pki,
    Proc,
    ProxyFront,
    cpu_seconds,
    free_port,
    make_pki,
    port_open,
    process_tree,
    proxy_config,
    rss_mib,
    wait_until,
)

HERE = Path(__file__).resolve().parent
BUILD = HERE / ".build"
SHIM = BUILD / "h2load_client_cert.so"
TEMPORAL = str(Path(sys.executable).parent / "temporal")

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
HEALTH = "/grpc.health.v1.Health/Check"
# DescribeNamespaceRequest{namespace: "default"}: namespace-scoped, read access, so the default
# pipeline really extracts the namespace and checks the role.
DESCRIBE_NS_REQUEST = b"\x0a\x07default"
# In flight -> (h2load clients, max concurrent streams per client).
SHAPES = {1: (1, 1), 32: (4, 8), 256: (16, 16)}


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# ------------------------------------------------------------------------------ upstreams


@dataclass
class Upstream:
    name: str
    label: str
    address: str
    method: str
    request: bytes
    proc: Proc
    expected: bytes = b""  # the response message every front must return

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


def start_temporal(work: Path) -> Upstream:
    port = free_port()
    args = [
        TEMPORAL, "server", "start-dev", "--headless", "--ip", LOOPBACK, "--port", str(port),
        "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        "--log-level", "warn", "--db-filename", str(work / "temporal.db"),
    ]  # fmt: skip
    for kv in ("frontend.rps", "frontend.namespaceRPS", "frontend.globalNamespaceRPS"):
        args += ["--dynamic-config-value", f"{kv}=1000000"]
    proc = Proc("temporal", args, work / "temporal.log")
    up = Upstream(
        name="temporal",
        label="Temporal dev server, GetSystemInfo",
        address=f"{LOOPBACK}:{port}",
        method=WF + "GetSystemInfo",
        request=b"",
        proc=proc,
    )

    def healthy() -> bool:
        proc.check()
        with grpc.insecure_channel(up.address) as ch:
            reply = ch.unary_unary(HEALTH)(b"", timeout=1)
        return reply == b"\x08\x01"

    wait_until(healthy, 60, "the Temporal dev server")
    return up


def start_canned(work: Path, body: bytes) -> Upstream:
    """nghttpd (C, nghttp2) answering every call with a fixed gRPC body and grpc-status 0."""
    htdocs = work / "htdocs"
    for path, message in ((WF + "DescribeNamespace", body), (HEALTH, b"\x08\x01")):
        target = htdocs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(frame(message))
    port = free_port()
    proc = Proc(
        "nghttpd",
        ["nghttpd", "--no-tls", "-a", LOOPBACK, "-d", str(htdocs), "-m", "4096",
         "--trailer", "grpc-status: 0", str(port)],
        work / "nghttpd.log",
    )  # fmt: skip
    wait_until(lambda: proc.check() or port_open(port), 10, "nghttpd")
    return Upstream(
        name="canned",
        label="canned answer (nghttpd), DescribeNamespace",
        address=f"{LOOPBACK}:{port}",
        method=WF + "DescribeNamespace",
        request=DESCRIBE_NS_REQUEST,
        proc=proc,
        expected=body,
    )


# --------------------------------------------------------------------------------- fronts


class Front(Protocol):
    name: str
    port: int
    tls: bool

    def pids(self) -> list[int]: ...
    def stop(self) -> None: ...


@dataclass
class Direct:
    port: int
    name: str = "direct"
    tls: bool = False

    def pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        pass


class Nginx:
    tls = True

    def __init__(self, work: Path, pki: Pki, upstream: str) -> None:
        self.name = "nginx"
        self.port = free_port()
        prefix = work / f"nginx-{self.port}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
        server {upstream};
        keepalive 512;
    }}
    server {{
        listen {LOOPBACK}:{self.port} ssl http2;
        ssl_certificate {pki.server_cert};
        ssl_certificate_key {pki.server_key};
        ssl_client_certificate {pki.ca};
        ssl_verify_client on;
        http2_max_concurrent_streams 1024;
        keepalive_requests 1000000;
        location / {{
            grpc_pass grpc://backend;
        }}
    }}
}}
""")
        self.proc = Proc(
            "nginx", ["nginx", "-p", str(prefix), "-e", "stderr", "-c", str(conf)],
            prefix / "nginx.log",
        )  # fmt: skip
        wait_until(lambda: self.proc.check() or port_open(self.port), 10, "nginx")

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.stop()


class Bare:
    tls = True

    def __init__(self, work: Path, pki: Pki, upstream: str) -> None:
        self.name = "bare"
        self.port = free_port()
        self.proc = Proc(
            "bare",
            [PYTHON, str(HERE / "passthrough.py"), "--listen", f"{LOOPBACK}:{self.port}",
             "--upstream", upstream, "--cert", str(pki.server_cert), "--key",
             str(pki.server_key), "--client-ca", str(pki.ca)],
            work / f"bare-{self.port}.log",
        )  # fmt: skip
        wait_until(lambda: self.proc.check() or port_open(self.port), 20, "passthrough")

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.stop()


class Proxy:
    tls = True

    def __init__(
        self,
        work: Path,
        pki: Pki,
        upstream: str,
        name: str,
        mode: str,
        workers: int = 1,
        transparent_retries: bool = True,
        baseline: Baseline | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        cfg = proxy_config(
            pki,
            upstream=upstream,
            port=self.port,
            admin_port=free_port(),
            mode=mode,
            workers=workers,
            transparent_retries=transparent_retries,
        )
        self.dropped_keys: tuple[str, ...] = ()
        if baseline is None:
            self.front = ProxyFront(work, f"{name}-{self.port}", cfg)
        else:
            # Same generated config, minus the keys the baseline does not know yet.
            cfg, self.dropped_keys = fit_config(cfg, baseline, work)
            self.front = ProxyFront(work, f"{name}-{self.port}", cfg, source=baseline.source)

    def pids(self) -> list[int]:
        return self.front.pids()

    def requests_by_code(self) -> dict[str, float]:
        return self.front.requests_by_code()

    def stop(self) -> None:
        self.front.stop()


# ------------------------------------------------------------------------ checks and load


def grpc_call(
    front: Front, pki: Pki, up: Upstream, metadata: Sequence[tuple[str, str]], n: int = 3
) -> bytes:
    """Call through `front` with the real gRPC stack and require status OK every time."""
    target = f"{LOOPBACK}:{front.port}"
    if front.tls:
        creds = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        channel = grpc.secure_channel(
            target, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(up.method)
        reply = b""
        for _ in range(n):
            reply, info = call.with_call(up.request, metadata=metadata, timeout=10)
            if info.code() is not grpc.StatusCode.OK:
                raise AssertionError(f"{front.name}: {info.code()}")
    return reply


def expect_denied(front: Front, pki: Pki, up: Upstream) -> None:
    """The default pipeline is really on: without a token a namespace call is refused."""
    try:
        grpc_call(front, pki, up, [], n=1)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.PERMISSION_DENIED:  # type: ignore[attr-defined]
            return
        raise
    raise AssertionError(f"{front.name}: a call without a token was not denied")


@dataclass
class Cell:
    upstream: str
    front: str
    inflight: int
    repeat: int = 0  # baseline pairs: 0 = the first cell (A B B A: 0 0 1 1)
    seconds: float = 0.0
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    front_cpu_s: float = 0.0
    upstream_cpu_s: float = 0.0
    cpu_ms_per_call: float = 0.0  # = CPU seconds per 1,000 calls
    upstream_cpu_ms_per_call: float = 0.0
    rss_mib: float = 0.0
    h2load_cpu_s: float = 0.0
    other_cores: float = 0.0  # CPU used by unrelated processes during the cell
    data_bytes: int = 0
    status_check: str = ""
    notes: list[str] = field(default_factory=list)


_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_TRAFFIC = re.compile(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?, .*?\((\d+)\) data")


def system_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def h2load(
    front: Front,
    up: Upstream,
    pki: Pki,
    work: Path,
    inflight: int,
    *,
    duration: float | None,
    requests: int | None,
    token: str,
    log_file: Path | None,
) -> str:
    clients, streams = SHAPES[inflight]
    body = work / f"request-{up.name}.bin"
    if not body.exists():
        body.write_bytes(frame(up.request))
    scheme = "https" if front.tls else "http"
    args = [
        "h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", f"authorization: Bearer {token}",
    ]  # fmt: skip
    if duration is not None:
        args += ["-D", str(int(duration))]
    else:
        args += ["-n", str(requests)]
    if log_file is not None:
        args += ["--log-file", str(log_file)]
    args.append(f"{scheme}://{LOOPBACK}:{front.port}{up.method}")
    env = dict(os.environ)
    if front.tls:
        env.update(
            LD_PRELOAD=str(SHIM),
            H2LOAD_CLIENT_CERT=str(pki.client_cert),
            H2LOAD_CLIENT_KEY=str(pki.client_key),
        )
    budget = (duration or 30) + 30
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=budget, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    return out.stdout


def run_cell(
    front: Front,
    up: Upstream,
    pki: Pki,
    work: Path,
    inflight: int,
    duration: float,
    token: str,
    repeat: int = 0,
) -> Cell:
    cell = Cell(upstream=up.name, front=front.name, inflight=inflight, repeat=repeat)
    # Warm-up (connections, caches, grpc's lazily built paths), not measured.
    h2load(front, up, pki, work, inflight, duration=None, requests=max(200, 4 * inflight),
           token=token, log_file=None)  # fmt: skip
    pids = front.pids()
    up_pids = process_tree(up.proc.pid)
    before_codes = front.requests_by_code() if isinstance(front, Proxy) else None
    cpu0, up0 = cpu_seconds(pids), cpu_seconds(up_pids)
    sys0, kids0, wall0 = system_cpu(), children_cpu(), time.monotonic()
    log_file = work / f"h2load-{up.name}-{front.name}-{inflight}-{repeat}.log"
    text = h2load(front, up, pki, work, inflight, duration=duration, requests=None,
                  token=token, log_file=log_file)  # fmt: skip
    cpu1, up1 = cpu_seconds(pids), cpu_seconds(up_pids)
    sys1, kids1, wall1 = system_cpu(), children_cpu(), time.monotonic()
    # CPU the rest of the machine used meanwhile (other jobs on a shared box), in cores.
    foreign = (sys1 - sys0) - (cpu1 - cpu0) - (up1 - up0) - (kids1 - kids0)
    cell.other_cores = round(max(0.0, foreign) / (wall1 - wall0), 2)
    cell.h2load_cpu_s = round(kids1 - kids0, 2)
    cell.rss_mib = round(rss_mib(front.pids()), 1)
    finished, requests, traffic = (_FINISHED.search(text), _REQUESTS.search(text),
                                   _TRAFFIC.search(text))  # fmt: skip
    if not (finished and requests and traffic):
        raise RuntimeError(f"cannot parse h2load output:\n{text}")
    cell.seconds = float(finished.group(1))
    cell.done, cell.succeeded = int(requests.group(3)), int(requests.group(4))
    cell.failed = int(requests.group(5)) + int(requests.group(6)) + int(requests.group(7))
    cell.rps = round(cell.succeeded / cell.seconds, 1) if cell.seconds else 0.0
    cell.data_bytes = int(traffic.group(3))
    latencies = sorted(
        int(line.split("\t")[2]) / 1000.0
        for line in log_file.read_text().splitlines()
        if line.count("\t") >= 2
    )
    log_file.unlink()
    cell.p50_ms = round(percentile(latencies, 0.50), 3)
    cell.p99_ms = round(percentile(latencies, 0.99), 3)
    cell.front_cpu_s = round(cpu1 - cpu0, 2)
    cell.upstream_cpu_s = round(up1 - up0, 2)
    if cell.done:
        cell.cpu_ms_per_call = round((cpu1 - cpu0) / cell.done * 1000, 4)
        cell.upstream_cpu_ms_per_call = round((up1 - up0) / cell.done * 1000, 4)

    # gRPC status, which h2load does not read: every answer must carry the full message...
    per_call = len(frame(up.expected))
    problems = []
    if cell.failed:
        problems.append(f"{cell.failed} failed at HTTP level")
    # Calls cut off at the end of the timed run may deliver their message uncounted.
    whole, extra = divmod(cell.data_bytes, per_call)
    if extra or not cell.succeeded <= whole <= cell.succeeded + inflight:
        problems.append(
            f"DATA bytes {cell.data_bytes} for {cell.succeeded} calls of {per_call}"
            " (an error answer carries no message)"
        )
    # ...and the proxy must have counted exactly that many OK calls and nothing else.
    if before_codes is not None and isinstance(front, Proxy):
        after = front.requests_by_code()
        delta = {k: after.get(k, 0) - before_codes.get(k, 0) for k in after}
        # A timed h2load run ends by resetting the calls still in flight: up to `inflight`
        # calls are cut off (CANCELLED, or answered OK after h2load stopped counting).
        ok = delta.get("OK", 0)
        cut = delta.get("CANCELLED", 0) + ok - cell.succeeded
        not_ok = {k: v for k, v in delta.items() if k not in ("OK", "CANCELLED") and v}
        if not_ok or ok < cell.succeeded or cut > inflight:
            problems.append(f"proxy counted {delta}, h2load {cell.succeeded} succeeded")
    cell.status_check = "OK" if not problems else "FAIL: " + "; ".join(problems)
    return cell


# -------------------------------------------------------------------------------- report


def fmt(value: float, digits: int = 2) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:,.{digits}f}")
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(cells: list[Cell], extras: dict[str, Any], out: Path, meta: dict[str, Any]) -> str:
    index = {(c.upstream, c.front, c.inflight): c for c in cells if c.repeat == 0}
    lines = [f"# temporal-auth-proxy benchmark, {meta['started']}", ""]
    lines += [
        f"Machine: {meta['cpus']} CPUs, {meta['python']}, grpcio {meta['grpcio']}, "
        f"{meta['nginx']}, {meta['h2load']}. Every cell: {meta['duration']} s of h2load "
        "after an unmeasured warm-up; load generator, front and upstream share the machine.",
        "",
        "In flight 1 / 32 / 256 = h2load `-c1 -m1` / `-c4 -m8` / `-c16 -m16`. CPU = utime+stime "
        "of the front's processes (/proc/<pid>/stat, all threads and children) over the "
        "measured run, divided by calls: **CPU ms per call = CPU seconds per 1,000 calls**. "
        "RSS = the front's processes after the run. `direct` has no front (plaintext h2c to the "
        "upstream); every other front terminates mTLS with the same server certificate and CA "
        "and forwards plaintext HTTP/2 to the same upstream.",
        "",
    ]
    for upstream in meta["upstreams"]:
        lines += [f"## Upstream: {upstream['label']}", ""]
        lines += [
            "| front | in flight | RPS | p50 ms | p99 ms | +p50 ms vs direct | RPS / direct "
            "| RPS / nginx | CPU s / 1k calls | CPU / nginx | upstream CPU s / 1k | RSS MiB "
            "| other load, cores | status check |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for front in meta["fronts"]:
            for n in SHAPES:
                c = index.get((upstream["name"], front, n))
                if c is None:
                    continue
                d = index.get((upstream["name"], "direct", n))
                g = index.get((upstream["name"], "nginx", n))
                lines.append(
                    f"| {front} | {n} | {fmt(c.rps, 0)} | {fmt(c.p50_ms, 3)} | "
                    f"{fmt(c.p99_ms, 3)} | "
                    f"{fmt(c.p50_ms - d.p50_ms, 3) if d else 'n/a'} | "
                    f"{ratio(c.rps, d.rps) if d else 'n/a'} | "
                    f"{ratio(c.rps, g.rps) if g else 'n/a'} | "
                    f"{fmt(c.cpu_ms_per_call, 3)} | "
                    f"{ratio(c.cpu_ms_per_call, g.cpu_ms_per_call) if g and front != 'direct' else 'n/a'} | "  # noqa: E501
                    f"{fmt(c.upstream_cpu_ms_per_call, 3)} | {fmt(c.rss_mib, 1)} | "
                    f"{fmt(c.other_cores, 2)} | {c.status_check} |"
                )
        lines.append("")
    if extras.get("baseline_pairs"):
        lines += baseline_section(extras["baseline_pairs"], meta)
    lines += ["## Targets from issue 10", ""]
    lines += targets(index, extras)
    lines.append("")
    for key, setting in (
        ("longpoll", "default"),
        ("longpoll_noretry", "`transparentRetries: false`"),
    ):
        if key not in extras:
            continue
        lp = extras[key]
        lines += [f"## Idle long polls, {setting}", ""]
        if "error" in lp:
            lines.append(f"Failed: {lp['error']}")
        else:
            lines.append(
                f"{lp['held']:,} of {lp['n']:,} concurrent PollWorkflowTaskQueue calls held "
                f"through the proxy (default pipeline, {lp['connections']} client connections, "
                f"upstream holding each call until released): proxy RSS "
                f"**{lp['rss_mib_peak']:.0f} MiB** while holding (idle before: "
                f"{lp['rss_mib_idle']:.0f} MiB, {lp['kib_per_call']:.1f} KiB per held call); "
                f"{lp['ok']:,} answered OK after release, ramp {lp['ramp_seconds']:.1f} s."
            )
        lines.append("")
    enc = extras.get("encryption")
    if enc is not None:
        lines += ["## Encryption at the proxy", ""]
        lines.append(enc.get("markdown") or f"Failed: {enc.get('error')}")
        lines.append("")
    lines += ["Plot: ![results](results.png)", ""]
    return "\n".join(lines)


BASE_SUFFIX = "-base"


def compare_baseline(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per (upstream, front, in flight): this revision vs its `-base` twin, every repeat.

    Ratios are this revision / baseline (< 1 is cheaper or faster now); the spread is the
    lowest and highest ratio of the back-to-back pairs, i.e. the run's own noise.
    """
    groups: dict[tuple[str, str, int], dict[int, dict[bool, Cell]]] = {}
    for c in cells:
        is_base = c.front.endswith(BASE_SUFFIX)
        front = c.front.removesuffix(BASE_SUFFIX)
        by_repeat = groups.setdefault((c.upstream, front, c.inflight), {})
        by_repeat.setdefault(c.repeat, {})[is_base] = c
    rows: list[dict[str, Any]] = []
    for (upstream, front, n), repeats in groups.items():
        pairs = [(r[False], r[True]) for _, r in sorted(repeats.items()) if len(r) == 2]
        if not pairs:
            continue
        row: dict[str, Any] = {"upstream": upstream, "front": front, "inflight": n,
                               "pairs": len(pairs)}  # fmt: skip
        for metric in ("cpu_ms_per_call", "p50_ms", "rps"):
            now = [getattr(a, metric) for a, _ in pairs]
            base = [getattr(b, metric) for _, b in pairs]
            per_pair = [a / b for a, b in zip(now, base, strict=True) if b]
            row[metric] = {
                "now": round(sum(now) / len(now), 4),
                "base": round(sum(base) / len(base), 4),
                "ratio": round(sum(now) / sum(base), 3) if sum(base) else math.nan,
                "ratio_min": round(min(per_pair), 3) if per_pair else math.nan,
                "ratio_max": round(max(per_pair), 3) if per_pair else math.nan,
            }
        row["other_cores"] = round(max(c.other_cores for p in pairs for c in p), 2)
        rows.append(row)
    return rows


def baseline_section(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    base = meta.get("baseline") or {}
    lines = [
        f"## This revision vs baseline {base.get('ref', '?')} ({base.get('commit', '?')[:12]})",
        "",
        "Same run, same machine, same config (the baseline's minus the keys it does not know: "
        f"{', '.join(base.get('dropped_keys', [])) or 'none'}). Cells alternate now/base/base/now "
        "per in-flight level; values are means over the pairs, ratio = now / base "
        "(< 1: cheaper or faster now), spread = lowest..highest ratio of one back-to-back pair.",
        "",
        "| upstream | front | in flight | pairs | CPU ms/call now | base | ratio (spread) "
        "| p50 ms now | base | ratio (spread) | RPS ratio | max other load, cores |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        cpu, p50, rps = r["cpu_ms_per_call"], r["p50_ms"], r["rps"]
        lines.append(
            f"| {r['upstream']} | {r['front']} | {r['inflight']} | {r['pairs']} | "
            f"{fmt(cpu['now'], 3)} | {fmt(cpu['base'], 3)} | {fmt(cpu['ratio'])}x "
            f"({fmt(cpu['ratio_min'])}..{fmt(cpu['ratio_max'])}) | "
            f"{fmt(p50['now'], 3)} | {fmt(p50['base'], 3)} | {fmt(p50['ratio'])}x "
            f"({fmt(p50['ratio_min'])}..{fmt(p50['ratio_max'])}) | {fmt(rps['ratio'])}x | "
            f"{fmt(r['other_cores'])} |"
        )
    lines.append("")
    return lines


def targets(index: dict[tuple[str, str, int], Cell], extras: dict[str, Any]) -> list[str]:
    out = ["| target | measured | met |", "|---|---|---|"]

    def get(front: str, n: int, upstream: str = "canned") -> Cell | None:
        return index.get((upstream, front, n))

    full, bare, noop = get("proxy", 32), get("bare", 32), get("proxy-noop", 32)
    if full and bare:
        out.append(
            f"| full pipeline CPU/call <= bare pass-through (32 in flight, canned) | "
            f"{full.cpu_ms_per_call:.3f} vs {bare.cpu_ms_per_call:.3f} ms "
            f"({ratio(full.cpu_ms_per_call, bare.cpu_ms_per_call)}) | "
            f"{'yes' if full.cpu_ms_per_call <= bare.cpu_ms_per_call else 'no'} |"
        )
    one, direct1 = get("proxy", 1), get("direct", 1)
    if one and direct1:
        added = one.p50_ms - direct1.p50_ms
        out.append(
            f"| added p50 at 1 in flight <= 0.6 ms (full pipeline, canned) | {added:.3f} ms | "
            f"{'yes' if added <= 0.6 else 'no'} |"
        )
    if noop and bare:
        saving = 1 - noop.cpu_ms_per_call / bare.cpu_ms_per_call
        out.append(
            f"| noop >= 15% cheaper per call than bare (32 in flight, canned) | "
            f"{saving * 100:.0f}% cheaper | {'yes' if saving >= 0.15 else 'no'} |"
        )
    w1, w2 = get("proxy", 256), get("proxy-w2", 256)
    if w1 and w2:
        grows = w2.rps > w1.rps * 1.1
        flat = w2.cpu_ms_per_call <= w1.cpu_ms_per_call * 1.15
        out.append(
            f"| throughput grows with workers, CPU/call flat (256 in flight) | "
            f"{w1.rps:,.0f} -> {w2.rps:,.0f} RPS; {w1.cpu_ms_per_call:.3f} -> "
            f"{w2.cpu_ms_per_call:.3f} ms/call | {'yes' if grows and flat else 'no'} |"
        )
    lp = extras.get("longpoll")
    if lp and "error" not in lp:
        ok = lp["held"] >= lp["n"] and lp["rss_mib_peak"] <= 400
        out.append(
            f"| {lp['n']:,} idle long polls in <= 400 MiB RSS | {lp['held']:,} held, "
            f"{lp['rss_mib_peak']:.0f} MiB | {'yes' if ok else 'no'} |"
        )
    return out


def plot(
    cells: list[Cell], meta: dict[str, Any], path: Path, pairs: list[dict[str, Any]] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ups = meta["upstreams"]
    rows = len(ups) + (1 if pairs else 0)
    fig, axes = plt.subplots(rows, 3, figsize=(17, 4.6 * rows), squeeze=False)
    index = {(c.upstream, c.front, c.inflight): c for c in cells if c.repeat == 0}
    for row, up in enumerate(ups):
        fronts = [f for f in meta["fronts"] if any(k[:2] == (up["name"], f) for k in index)]
        width = 0.8 / max(1, len(fronts))
        for col, (metric, title, log) in enumerate(
            (
                ("rps", "requests per second", True),
                ("p50_ms", "p50 latency, ms (hatched: p99)", True),
                ("cpu_ms_per_call", "front CPU ms per call (= CPU s / 1k calls)", True),
            )
        ):
            ax = axes[row][col]
            for i, front in enumerate(fronts):
                xs, ys, ys99 = [], [], []
                for j, n in enumerate(SHAPES):
                    c = index.get((up["name"], front, n))
                    if c is None:
                        continue
                    xs.append(j + (i - (len(fronts) - 1) / 2) * width)
                    ys.append(max(getattr(c, metric), 1e-4))
                    ys99.append(max(c.p99_ms, 1e-4))
                if metric == "p50_ms":
                    ax.bar(xs, ys99, width, color=f"C{i}", alpha=0.35, hatch="//")
                bars = ax.bar(xs, ys, width, label=front, color=f"C{i}")
                if metric != "p50_ms":
                    ax.bar_label(bars, fmt="%.3g", fontsize=6, rotation=90, padding=2)
            ax.set_xticks(range(len(SHAPES)), [f"{n} in flight" for n in SHAPES])
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{up['name']}: {title}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            if col == 0:
                ax.legend(fontsize=7)
    if pairs:
        plot_baseline(axes[-1], pairs, meta)
    fig.suptitle(f"temporal-auth-proxy bench {meta['started']} ({meta['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_baseline(axes: Any, pairs: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Last row: now vs baseline (means of the pairs), and the ratios with their spread."""
    labels = [f"{p['upstream'][:3]} {p['front']} @{p['inflight']}" for p in pairs]
    xs = range(len(pairs))
    ref = (meta.get("baseline") or {}).get("ref", "base")
    for ax, metric, title in (
        (axes[0], "cpu_ms_per_call", "front CPU ms per call"),
        (axes[1], "p50_ms", "p50 ms"),
    ):
        now = [p[metric]["now"] for p in pairs]
        base = [p[metric]["base"] for p in pairs]
        ax.bar([x - 0.2 for x in xs], now, 0.4, label="this revision", color="C2")
        bars = ax.bar([x + 0.2 for x in xs], base, 0.4, label=f"baseline {ref}", color="C7")
        ax.bar_label(bars, labels=[f"{n / b:.2f}x" if b else "" for n, b in zip(now, base,
                     strict=True)], fontsize=7, padding=2)  # fmt: skip
        ax.set_xticks(list(xs), labels, rotation=20, fontsize=7, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{title}: now vs baseline (label: ratio)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    for i, (metric, name) in enumerate((("cpu_ms_per_call", "CPU/call"), ("p50_ms", "p50"))):
        mid = [p[metric]["ratio"] for p in pairs]
        lo = [m - p[metric]["ratio_min"] for m, p in zip(mid, pairs, strict=True)]
        hi = [p[metric]["ratio_max"] - m for m, p in zip(mid, pairs, strict=True)]
        ax.errorbar([x + (i - 0.5) * 0.25 for x in xs], mid, yerr=[lo, hi], fmt="o",
                    capsize=3, label=f"{name} now / base", color=f"C{i}")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs), labels, rotation=20, fontsize=7, ha="right")
    ax.set_title("ratio now / baseline (whiskers: lowest..highest pair)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


# ---------------------------------------------------------------------------------- main


def tool_version(args: list[str]) -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description="temporal-auth-proxy benchmark")
    parser.add_argument("--duration", type=int, default=4, help="seconds per cell")
    parser.add_argument("--inflight", default="1,32,256")
    parser.add_argument(
        "--fronts",
        default="direct,nginx,bare,proxy-noop,proxy-noop-base,proxy,proxy-base,proxy-noretry,"
        "proxy-w2",
        help="comma list",
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE_REF,
        help="git revision the `*-base` fronts run (default: this round's start); none to skip",
    )
    parser.add_argument(
        "--baseline-upstreams",
        default="canned",
        help="upstreams that get the `*-base` cells (the Temporal cells are dominated by "
        "Temporal's own latency, and the 10-minute budget is tight)",
    )
    parser.add_argument(
        "--baseline-repeats", type=int, default=2, help="cells per front per pair (A B B A)"
    )
    parser.add_argument("--upstreams", default="canned,temporal")
    parser.add_argument("--longpolls", type=int, default=10_000, help="0 to skip")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--only", choices=["encryption"], default="", help="run one stage alone (CPU only)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.only == "encryption":
        out = args.out or HERE / "results" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out.mkdir(parents=True, exist_ok=True)
        enc = run_encryption(out)
        print(enc.get("markdown") or enc)
        return 0 if "rows" in enc and all(r["met"] for r in enc["rows"]) else 1

    subprocess.run(["sh", str(HERE / "setup.sh"), str(BUILD)], check=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / stamp
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    inflights = [int(x) for x in args.inflight.split(",")]
    for n in inflights:
        if n not in SHAPES:
            parser.error(f"--inflight values must be among {sorted(SHAPES)}")
    front_names = args.fronts.split(",")
    baseline: Baseline | None = None
    if args.baseline == "none":
        front_names = [f for f in front_names if not f.endswith(BASE_SUFFIX)]
    elif any(f.endswith(BASE_SUFFIX) for f in front_names):
        try:
            baseline = checkout(args.baseline, work / "baseline")
        except subprocess.CalledProcessError:
            parser.error(f"--baseline {args.baseline}: no such commit here (--baseline none skips)")
    pki = make_pki(work / "pki")
    token = pki.token("default:read")
    meta: dict[str, Any] = {
        "started": stamp,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "nginx": tool_version(["nginx", "-v"]),
        "h2load": tool_version(["h2load", "--version"]),
        "duration": args.duration,
        "fronts": front_names,
        "upstreams": [],
        "baseline": None if baseline is None else {"ref": baseline.ref, "commit": baseline.commit},
    }
    cells: list[Cell] = []
    extras: dict[str, Any] = {}
    started_procs: list[Proc] = []
    try:
        temporal = start_temporal(work)
        started_procs.append(temporal.proc)
        with grpc.insecure_channel(temporal.address) as ch:
            # The canned upstream serves the real frontend's DescribeNamespace answer.
            describe = ch.unary_unary(WF + "DescribeNamespace")(DESCRIBE_NS_REQUEST, timeout=10)
            temporal.expected = ch.unary_unary(temporal.method)(b"", timeout=10)
        canned = start_canned(work, describe)
        started_procs.append(canned.proc)
        ups = {"canned": canned, "temporal": temporal}
        for up_name in args.upstreams.split(","):
            up = ups[up_name]
            meta["upstreams"].append({"name": up.name, "label": up.label})
            for group in front_groups(front_names, up.name, args.baseline_upstreams):
                cells += run_group(group, work, pki, up, token, inflights, args, baseline, meta)
        up_proc_cpu = {name: cpu_seconds(process_tree(u.proc.pid)) for name, u in ups.items()}
        meta["upstream_total_cpu_s"] = up_proc_cpu
    finally:
        for proc in started_procs:
            proc.stop()

    if args.longpolls > 0:
        for key, retries in (("longpoll", "on"), ("longpoll_noretry", "off")):
            remaining = 600 - 60 - (time.monotonic() - started)
            if remaining < 90:
                extras[key] = {"error": "skipped: not enough of the 10-minute budget left"}
            else:
                extras[key] = run_longpoll(args.longpolls, out, min(remaining, 240), retries)

    if baseline is not None:
        extras["baseline_pairs"] = compare_baseline(cells)
    # Last, with the machine quiet again: CPU per call added by payload encryption.
    extras["encryption"] = run_encryption(out)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "cells": [asdict(c) for c in cells], **extras}, indent=2)
    )
    md = report(cells, extras, out, meta)
    (out / "results.md").write_text(md)
    with contextlib.suppress(ImportError):
        plot(cells, meta, out / "results.png", extras.get("baseline_pairs"))
    print(md)
    print(f"\nwrote {out}/results.md, results.json, results.png "
          f"in {time.monotonic() - started:.0f} s")  # fmt: skip
    failed = [c for c in cells if c.status_check != "OK"]
    return 1 if failed else 0


def front_groups(front_names: list[str], upstream: str, baseline_upstreams: str) -> list[list[str]]:
    """Fronts to run together: `x` with `x-base` when both are asked for, else alone."""
    groups = []
    for name in front_names:
        if name in ("proxy-w2", "proxy-noretry") and upstream != "canned":
            continue
        if name.endswith(BASE_SUFFIX):
            if upstream not in baseline_upstreams.split(","):
                continue
            if name.removesuffix(BASE_SUFFIX) in front_names:
                continue  # runs in its twin's group
        twin = name + BASE_SUFFIX
        if twin in front_names and upstream in baseline_upstreams.split(","):
            groups.append([name, twin])
        else:
            groups.append([name])
    return groups


def run_group(
    group: list[str],
    work: Path,
    pki: Pki,
    up: Upstream,
    token: str,
    inflights: list[int],
    args: argparse.Namespace,
    baseline: Baseline | None,
    meta: dict[str, Any],
) -> list[Cell]:
    """Start the group's fronts, check each, then its cells; a pair alternates A B B A."""
    cells: list[Cell] = []
    with contextlib.ExitStack() as stack:
        fronts: list[Front] = []
        for name in group:
            front = make_front(name, work, pki, up, baseline)
            stack.callback(front.stop)
            fronts.append(front)
            if isinstance(front, Proxy) and front.dropped_keys:
                meta["baseline"]["dropped_keys"] = list(front.dropped_keys)
            reply = grpc_call(front, pki, up, [("authorization", f"Bearer {token}")])
            if reply != up.expected:
                raise AssertionError(f"{front.name} returned different bytes")
            if name in ("proxy", "proxy-w2", "proxy-base") and up.name == "canned":
                expect_denied(front, pki, up)
        repeats = args.baseline_repeats if len(fronts) > 1 else 1
        for n in inflights:
            for r in range(repeats):
                for front in fronts if r % 2 == 0 else fronts[::-1]:
                    cell = run_cell(front, up, pki, work, n, args.duration, token, repeat=r)
                    cells.append(cell)
                    print(
                        f"{up.name:8} {front.name:15} {n:3} in flight: "
                        f"{cell.rps:9,.0f} RPS  p50 {cell.p50_ms:7.3f} ms  "
                        f"p99 {cell.p99_ms:7.3f} ms  CPU {cell.cpu_ms_per_call:.3f} ms/call  "
                        f"RSS {cell.rss_mib:6.1f} MiB  {cell.status_check}",
                        flush=True,
                    )
    return cells


def make_front(
    name: str, work: Path, pki: Pki, up: Upstream, baseline: Baseline | None = None
) -> Front:
    def base() -> Baseline:
        if baseline is None:
            raise ValueError(f"{name} needs --baseline")
        return baseline

    factories: dict[str, Callable[[], Front]] = {
        "direct": lambda: Direct(port=up.port),
        "nginx": lambda: Nginx(work, pki, up.address),
        "bare": lambda: Bare(work, pki, up.address),
        "proxy-noop": lambda: Proxy(work, pki, up.address, name, "noop"),
        "proxy": lambda: Proxy(work, pki, up.address, name, "default"),
        "proxy-noretry": lambda: Proxy(
            work, pki, up.address, name, "default", transparent_retries=False
        ),
        "proxy-w2": lambda: Proxy(work, pki, up.address, name, "default", workers=2),
        "proxy-noop-base": lambda: Proxy(work, pki, up.address, name, "noop", baseline=base()),
        "proxy-base": lambda: Proxy(work, pki, up.address, name, "default", baseline=base()),
    }
    return factories[name]()


def run_encryption(out: Path) -> dict[str, Any]:
    """bench/encryption.py: StartWorkflowExecution (1 KiB input) and PollWorkflowTaskQueue
    (100-event history), encryption on vs a namespace without it, CPU added per call."""
    result = out / "encryption.json"
    cmd = [PYTHON, str(HERE / "encryption.py"), "--json", str(result)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        subprocess.run(cmd, check=False, timeout=180, env=env)
        data: dict[str, Any] = json.loads(result.read_text())
        return data
    except Exception as exc:
        return {"error": repr(exc)}


def run_longpoll(n: int, out: Path, budget: float, retries: str) -> dict[str, Any]:
    result = out / f"longpoll-retries-{retries}.json"
    cmd = [
        *(PYTHON, str(HERE / "longpoll.py"), "--n", str(n), "--json", str(result)),
        *("--workdir", str(out / "work" / f"longpoll-{retries}")),
        *("--max-seconds", str(int(budget)), "--transparent-retries", retries),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        subprocess.run(cmd, check=False, timeout=budget + 30, env=env)
        data: dict[str, Any] = json.loads(result.read_text())
        return data
    except Exception as exc:
        return {"error": repr(exc)}


if __name__ == "__main__":
    raise SystemExit(main())
