"""Soak: 2,000 concurrent long polls plus steady short calls for 60 s through the proxy to a real
dev server. No error beyond the expected, proxy RSS flat, every call accounted for.

The session dev server keeps Temporal's default of 1,200 concurrent long polls per namespace
and frontend (`frontend.namespaceCount`), so this module starts its own with that limit lifted
and one task-queue partition (the polls are spread over 40 empty task queues).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    PollActivityTaskQueueRequest,
)

from tests.e2e.rig import (
    LOOPBACK,
    PROXY_NAME,
    TEMPORAL,
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    deep_merge,
    free_port,
    jwt_authorization,
    sample,
    wait_until,
)

pytestmark = pytest.mark.slow

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
POLL = WF + "PollActivityTaskQueue"
GET_SYSTEM_INFO = WF + "GetSystemInfo"
DESCRIBE_NS = WF + "DescribeNamespace"

POLLERS = 2000
TASK_QUEUES = 40
CLIENT_CHANNELS = 8
DURATION = 60.0
POLL_TIMEOUT = 15.0
SHORT_CALLS_PER_SECOND = 25
# The frontend refuses a long poll whose deadline is under 2 s (FAILED_PRECONDITION).
MIN_POLL_TIMEOUT = 3.0
EXPECTED_POLL_CODES = {"OK", "DEADLINE_EXCEEDED", "CANCELLED_AT_DEADLINE"}


# ---------------------------------------------------------------------------- the parts


@pytest.fixture(scope="module")
def soak_temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    workdir = tmp_path_factory.mktemp("soak-temporal")
    port = free_port()
    args = [
        TEMPORAL,
        "server",
        "start-dev",
        "--headless",
        "--ip",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "error",
    ]
    for kv in (
        "frontend.rps=1000000",
        "frontend.namespaceRPS=1000000",
        "frontend.globalNamespaceRPS=1000000",
        "frontend.namespaceCount=100000",
        "frontend.globalNamespaceCount=100000",
        "matching.numTaskqueueReadPartitions=1",
        "matching.numTaskqueueWritePartitions=1",
    ):
        args += ["--dynamic-config-value", kv]
    with open(workdir / "temporal.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        assert proc.poll() is None, "temporal exited"
        result = subprocess.run(
            [TEMPORAL, "operator", "cluster", "health", "--address", f"{LOOPBACK}:{port}"],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    try:
        wait_until(healthy, 60, 0.2, "the soak dev server")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def soak_proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, soak_temporal: int
) -> Iterator[ProxyProcess]:
    term = TLSTerminator(pki, soak_temporal)
    cfg = deep_merge(
        base_config(pki, term.port),
        {"authorization": jwt_authorization(pki), "upstream": {"channels": 4}},
    )
    proxy = ProxyProcess(tmp_path_factory.mktemp("soak-proxy"), cfg)
    try:
        yield proxy
    finally:
        proxy.stop()
        term.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def requests_total(metrics_text: str) -> tuple[float, dict[tuple[str, str], float]]:
    by_label: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "temporal_auth_proxy_requests_total":
                key = (s.labels["method"], s.labels["code"])
                by_label[key] = by_label.get(key, 0.0) + s.value
    return sum(by_label.values()), by_label


# ---------------------------------------------------------------------------- the soak


async def test_long_polls_and_short_calls_for_a_minute(soak_proxy: ProxyProcess, pki: Pki) -> None:
    proxy = soak_proxy
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read("client.key"),
        certificate_chain=pki.read("client.pem"),
    )
    options = [
        ("grpc.ssl_target_name_override", PROXY_NAME),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [
        grpc.aio.secure_channel(proxy.address, creds, options=options)
        for _ in range(CLIENT_CHANNELS)
    ]
    worker = (("authorization", f"Bearer {pki.token('default:write', subject='soak-worker')}"),)
    reader = (("authorization", f"Bearer {pki.token('default:read', subject='soak-reader')}"),)
    polls = [
        PollActivityTaskQueueRequest(
            namespace="default",
            task_queue=TaskQueue(name=f"soak-queue-{q}"),
            identity=f"soak-{q}",
        ).SerializeToString()
        for q in range(TASK_QUEUES)
    ]
    describe = DescribeNamespaceRequest(namespace="default").SerializeToString()

    poll_codes: Counter[str] = Counter()
    odd: dict[str, float] = {}
    short_codes: Counter[str] = Counter()
    sent = 0
    started = time.monotonic()
    end = started + DURATION
    in_flight_polls = 0
    max_in_flight_polls = 0

    async def poller(i: int) -> None:
        nonlocal sent, in_flight_polls, max_in_flight_polls
        call = channels[i % CLIENT_CHANNELS].unary_unary(POLL)
        # Spread the first wave over 2 s so 2,000 calls do not land in one tick.
        await asyncio.sleep(2.0 * i / POLLERS)
        for _ in range(100):  # bounded: ~5 polls each in 60 s
            left = end - time.monotonic()
            if left < MIN_POLL_TIMEOUT:
                return
            sent += 1
            in_flight_polls += 1
            max_in_flight_polls = max(max_in_flight_polls, in_flight_polls)
            timeout = min(POLL_TIMEOUT, left)
            asked = time.monotonic()
            try:
                await call(polls[i % TASK_QUEUES], timeout=timeout, metadata=worker)
                poll_codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                at_deadline = time.monotonic() - asked >= timeout - 0.05
                if code == "CANCELLED" and at_deadline:
                    # The deadline passed and the proxy's cancellation (its server side saw the
                    # deadline first) reached this busy client before the client's own timer.
                    code = "CANCELLED_AT_DEADLINE"
                elif code == "DEADLINE_EXCEEDED" and not at_deadline:
                    code = "DEADLINE_EXCEEDED_EARLY"  # a real failure, never load
                poll_codes[code] += 1
                if code not in EXPECTED_POLL_CODES:
                    odd.setdefault(f"{code}: {exc.details()}", time.monotonic() - started)
                    await asyncio.sleep(0.5)  # no hot loop on an unexpected error
            finally:
                in_flight_polls -= 1

    async def short_calls() -> None:
        nonlocal sent
        n = 0
        while time.monotonic() < end and n < int(DURATION * SHORT_CALLS_PER_SECOND) + 10:
            n += 1
            ch = channels[n % CLIENT_CHANNELS]
            sent += 1
            try:
                if n % 2:
                    await ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10)
                else:
                    await ch.unary_unary(DESCRIBE_NS)(describe, timeout=10, metadata=reader)
                short_codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                short_codes[exc.code().name] += 1
                odd.setdefault(f"{exc.code().name}: {exc.details()}", time.monotonic() - started)
            await asyncio.sleep(1.0 / SHORT_CALLS_PER_SECOND)

    rss: list[tuple[float, int]] = []

    async def watch() -> None:
        while time.monotonic() < end:
            rss.append((time.monotonic() - started, rss_kib(proxy.proc.pid)))
            await asyncio.sleep(1.0)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(poller(i) for i in range(POLLERS)), short_calls(), watch()),
            DURATION + POLL_TIMEOUT + 30,
        )
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))

    def at(second: float) -> int:
        return min(rss, key=lambda p: abs(p[0] - second))[1]

    rss_20, rss_60 = at(20), at(DURATION - 1)
    window = [kib for t, kib in rss if t >= 20]
    print(
        f"soak: {sent} calls, polls {dict(poll_codes)}, short {dict(short_codes)}, "
        f"max polls in flight {max_in_flight_polls}; proxy RSS {rss_20 / 1024:.1f} MiB at 20 s, "
        f"{rss_60 / 1024:.1f} MiB at 60 s (min {min(window) / 1024:.1f}, "
        f"max {max(window) / 1024:.1f}, at 40 s {at(40) / 1024:.1f})"
    )

    assert proxy.proc.poll() is None
    assert max_in_flight_polls >= POLLERS * 0.99, max_in_flight_polls
    assert set(poll_codes) <= EXPECTED_POLL_CODES, (poll_codes, odd)
    assert set(short_codes) == {"OK"}, (short_codes, odd)
    assert short_codes["OK"] >= DURATION * SHORT_CALLS_PER_SECOND * 0.5
    assert sum(poll_codes.values()) >= POLLERS * 2
    # No leak: no more than 10 % growth between 20 s and the end, and no climb inside the
    # window either. Shrinking is fine: the proxy trims freed call state (malloc_trim).
    assert rss_60 <= 1.10 * rss_20, (rss_20, rss_60)
    assert max(window) <= 1.10 * rss_20, (rss_20, max(window))

    # Accounted: the proxy counted exactly what the clients sent, by method and outcome.
    wait_until(
        lambda: sample(proxy.metrics(), "temporal_auth_proxy_inflight_requests") == 0,
        10,
        what="nothing in flight",
    )
    total, by_label = requests_total(proxy.metrics())
    assert total == sent, (total, sent, by_label)
    poll = {code: n for (method, code), n in by_label.items() if method == "PollActivityTaskQueue"}
    # A poll that outlived its deadline: the client sees DEADLINE_EXCEEDED (or, under load, the
    # proxy's cancellation); the proxy counts DEADLINE_EXCEEDED, or CANCELLED when the caller
    # gave up first.
    assert sum(poll.values()) == sum(poll_codes.values()), (poll, poll_codes)
    assert set(poll) <= {"OK", "DEADLINE_EXCEEDED", "CANCELLED"}, poll
    # The frontend answers an empty long poll just before its deadline, so an answer and the
    # deadline race: on a loaded machine the proxy relays (and counts OK) answers the client no
    # longer takes, and the client sees its deadline pass. That is all this side can know, so
    # it checks exactly that: every OK a client saw was relayed as OK, and every OK the client
    # did not see is one of its polls that expired at its deadline (checked above to be no
    # earlier). A poll lost any other way breaks one of the two bounds.
    client_ok = poll_codes["OK"]
    expired = poll_codes["DEADLINE_EXCEEDED"] + poll_codes["CANCELLED_AT_DEADLINE"]
    assert client_ok <= poll.get("OK", 0) <= client_ok + expired, (poll, poll_codes)
    assert (
        by_label.get(("GetSystemInfo", "OK"), 0) + by_label.get(("DescribeNamespace", "OK"), 0)
        == short_codes["OK"]
    ), by_label
