"""N concurrent idle long polls through the proxy; reports the proxy's RSS while it holds them.

The upstream is a grpc.aio server of our own that holds every call like a Temporal long poll
(until released with SIGUSR1, or until the call's deadline is nearly up) and then answers with
an empty message. The proxy runs its full default pipeline (mTLS, JWT, authorization); the
client opens N PollWorkflowTaskQueue calls over a few mTLS connections, waits until the proxy
reports all of them in flight, samples the proxy's RSS, releases the upstream and checks that
every call ended OK. Bounded: `--max-seconds` caps the whole run.

    python bench/longpoll.py --n 10000 [--connections 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from common import (
    LOOPBACK,
    PYTHON,
    SERVER_NAME,
    Proc,
    ProxyFront,
    free_port,
    make_pki,
    proxy_config,
    rss_mib,
    wait_until,
)

METHOD = "/temporal.api.workflowservice.v1.WorkflowService/PollWorkflowTaskQueue"
# PollWorkflowTaskQueueRequest{namespace: "default", task_queue: {name: "bench"}}
REQUEST = b"\x0a\x07default\x12\x07\x0a\x05bench"
HEALTH = "/grpc.health.v1.Health/Check"


# ------------------------------------------------------------------- the holding upstream


async def hold_upstream(port: int) -> None:
    release = asyncio.Event()
    held = 0

    async def poll(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal held
        held += 1
        remaining = context.time_remaining()
        limit = max(0.1, remaining - 1.0) if remaining is not None else None
        try:
            await asyncio.wait_for(release.wait(), limit)
        except TimeoutError:
            pass  # like Temporal: an empty answer just before the deadline
        finally:
            held -= 1
        return b""

    async def health(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"\x08\x01"

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            method = details.method  # type: ignore[attr-defined]
            return grpc.unary_unary_rpc_method_handler(health if method == HEALTH else poll)

    # Several processes share the port: one grpc.aio server process starts cancelling held
    # calls past ~7,000 (measured without the proxy), and the stand-in for Temporal must not
    # be what limits the run.
    # And like Temporal (grpc-go), it takes a burst without grpc-core's pending-call drops.
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.server.max_pending_requests", 50_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
        ]
    )
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    await server.start()
    print("listening", flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, release.set)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


# -------------------------------------------------------------------------------- client


async def open_polls(
    n: int, connections: int, address: str, pki: Any, token: str, timeout: float
) -> tuple[list[grpc.aio.Channel], list[asyncio.Task[Any]]]:
    creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    options = [
        ("grpc.ssl_target_name_override", SERVER_NAME),
        ("grpc.use_local_subchannel_pool", 1),  # one connection per channel
    ]
    channels = [
        grpc.aio.secure_channel(address, creds, options=options) for _ in range(connections)
    ]
    calls = [ch.unary_unary(METHOD) for ch in channels]
    metadata = (("authorization", f"Bearer {token}"),)

    async def one(i: int) -> str:
        try:
            await calls[i % connections](REQUEST, metadata=metadata, timeout=timeout)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))  # noqa: TID251 - gathered below
        if i % 200 == 199:
            await asyncio.sleep(0)  # let the first calls go out while the rest are created
    return channels, tasks


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-longpoll-"))
    work.mkdir(parents=True, exist_ok=True)
    pki = make_pki(work / "pki")
    token = pki.token("default:write")
    up_port = free_port()
    upstreams = [
        Proc(
            f"hold-upstream-{i}",
            [PYTHON, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)],
            work / f"upstream-{i}.log",
        )
        for i in range(args.upstream_procs)
    ]
    proxy: ProxyFront | None = None
    try:
        for up in upstreams:  # all of them, so the proxy's connections spread over them
            wait_until(
                lambda up=up: up.check() or "listening" in up.log_path.read_text(),
                20,
                "the holding upstream",
            )
        cfg = proxy_config(
            pki,
            upstream=f"{LOOPBACK}:{up_port}",
            port=free_port(),
            admin_port=free_port(),
            mode="default",
            channels=args.upstream_channels,
            transparent_retries=args.transparent_retries == "on",
        )
        proxy = ProxyFront(work, "longpoll-proxy", cfg)
        idle = rss_mib(proxy.pids())
        t0 = time.monotonic()
        channels, tasks = await open_polls(
            args.n,
            args.connections,
            f"{LOOPBACK}:{proxy.port}",
            pki,
            token,
            timeout=args.max_seconds + 60,
        )
        deadline = started + args.max_seconds - 20
        held, best, grew = 0.0, 0.0, time.monotonic()
        while time.monotonic() < deadline:
            held = await asyncio.to_thread(proxy.inflight)
            if held >= args.n or all(t.done() for t in tasks):
                break
            if held > best:
                best, grew = held, time.monotonic()
            elif time.monotonic() - grew > 8:
                break  # plateau: report what it holds rather than wait out the budget
            await asyncio.sleep(0.5)
        ramp = time.monotonic() - t0
        await asyncio.sleep(1.0)  # settle, then sample
        held = await asyncio.to_thread(proxy.inflight)
        pids = proxy.pids()
        peak = max(rss_mib(pids) for _ in range(3))
        hwm = rss_mib(pids, "VmHWM")
        early = sum(1 for t in tasks if t.done())
        for up in upstreams:
            up.signal(signal.SIGUSR1)
        remaining = max(5.0, started + args.max_seconds - time.monotonic())
        done, pending = await asyncio.wait(tasks, timeout=remaining)
        for t in pending:
            t.cancel()
        codes: dict[str, int] = {}
        for t in done:
            code = t.result()
            codes[code] = codes.get(code, 0) + 1
        for ch in channels:
            await ch.close(0)
        return {
            "n": args.n,
            "connections": args.connections,
            "upstream_channels": args.upstream_channels,
            "transparent_retries": args.transparent_retries,
            "held": int(held),
            "ended_before_release": early,
            "ok": codes.get("OK", 0),
            "codes": codes,
            "unfinished": len(pending),
            "rss_mib_idle": round(idle, 1),
            "rss_mib_peak": round(peak, 1),
            "vm_hwm_mib": round(hwm, 1),
            "kib_per_call": round((peak - idle) * 1024 / max(1, held), 2),
            "ramp_seconds": round(ramp, 2),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        if proxy is not None:
            proxy.stop()
        for up in upstreams:
            up.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="concurrent long polls")
    parser.add_argument("--connections", type=int, default=50, help="client connections")
    parser.add_argument(
        "--upstream-channels",
        type=int,
        default=1,
        help="proxy upstream.channels (the default, 1, holds 10,000 calls on one connection)",
    )
    parser.add_argument(
        "--transparent-retries", choices=("on", "off"), default="on", help="the proxy's setting"
    )
    parser.add_argument(
        "--upstream-procs", type=int, default=4, help="holding upstream processes (one port)"
    )
    parser.add_argument("--max-seconds", type=float, default=150, help="hard cap on the run")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        asyncio.run(hold_upstream(args.serve_upstream))
        return 0
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    ok = result["held"] >= args.n and result["ok"] == args.n and result["rss_mib_peak"] <= 400
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
