"""Micro-benchmark: CPU per `authorize` call of the Cedar authorizer with 20 policies.

In process, no sockets: what `authorization.authorizer: cedar` adds to a call. Five callers
(a worker certificate, the batch service, the payments on-call, an intern, the web UI) make
a Temporal-shaped mix of calls. Scenarios:

- default: Temporal's DefaultAuthorizer alone (the baseline);
- cedar-nocache: every call evaluated by Cedar (`cache=False`), policy-only;
- cedar-cache-mix: decisions cached; the mix has worker calls that repeat (polls, task
  completions, heartbeats) and starts/signals with a new workflow id every time (30 %);
- cedar-nocache-unique / cedar-cache-unique: every call carries a new workflow id, without
  and with the decision cache (there the cache only costs);
- cedar-new-namespace: a caller naming a new namespace every call (policy-only lets any
  credentialed caller reach Cedar with any namespace): the entity-set cache misses;
- default-and-policy: DefaultAuthorizer AND Cedar, cached, the mix.
- wired-policy-only / wired-default-and-policy: the authorizer as `serve` builds it from
  `authorization.cedar` (build_authorizer, the metrics hook counting each decision by policy
  id), cached, the mix: what `authorizer: cedar` costs a call in the proxy.
- peer-attach: the per-call step a token claim mapper adds under cedar (`Claims.peer` from
  the connection's certificate; token claims are copied once per verified token).

Bounded: `--calls` per repetition and `--max-seconds` for the whole run.

    python bench/cedar_authz.py [--calls 20000] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry
from temporalio.api.common.v1 import message_pb2 as common
from temporalio.api.taskqueue.v1 import message_pb2 as taskqueue
from temporalio.api.workflowservice.v1 import request_response_pb2 as rr

from proxy.authz import DefaultAuthorizer
from proxy.authz.build import build_authorizer
from proxy.authz.cedar import CedarAuthorizer, Combine
from proxy.authz.policies import PolicyStore, load_schema
from proxy.claims.exposed import PeerAttacher
from proxy.config.parse import parse_config
from proxy.interfaces import Authorizer
from proxy.methods import HEALTH_CHECK_APIS, lookup
from proxy.metrics import PolicyMetrics
from proxy.model import CallTarget, Claims, PeerIdentity, Role

POLICIES = Path(__file__).resolve().parent / "cedar" / "policies.cedar"
WF = "/temporal.api.workflowservice.v1.WorkflowService/"
NS = "orders"


def callers() -> dict[str, Claims]:
    worker_peer = PeerIdentity(
        subject="CN=orders-worker,OU=workers,O=Acme",
        common_name="orders-worker",
        organizational_units=("workers",),
        uris=("spiffe://acme.io/workers/orders",),
        spiffe_id="spiffe://acme.io/workers/orders",
    )
    writer = {NS: Role.WRITER, "payments": Role.WRITER}
    return {
        "worker": Claims.build(
            subject="spiffe://acme.io/workers/orders",
            auth_type="cert",
            namespaces=writer,
            peer=worker_peer,
        ),
        "batch": Claims.build(subject="batch-service", namespaces=writer),
        "oncall": Claims.build(
            subject="alice", namespaces=writer, token_claims={"groups": ("payments-oncall",)}
        ),
        "intern": Claims.build(
            subject="ida", namespaces={NS: Role.READER}, token_claims={"groups": ("interns",)}
        ),
        "ui": Claims.build(subject="web", namespaces=writer, token_claims={"client": ("web-ui",)}),
    }


def _start(i: int) -> CallTarget:
    request = rr.StartWorkflowExecutionRequest(
        namespace=NS,
        workflow_id=f"order-{i}",
        workflow_type=common.WorkflowType(name="OrderWorkflow"),
        task_queue=taskqueue.TaskQueue(name="orders-q"),
        identity="client@host",
        request_id=f"req-{i}",
        input=common.Payloads(payloads=[common.Payload(data=b"x" * 512)]),
    )
    return CallTarget(
        api_name=WF + "StartWorkflowExecution", namespace=NS, request=request.SerializeToString()
    )


def _signal(i: int) -> CallTarget:
    request = rr.SignalWorkflowExecutionRequest(
        namespace=NS,
        workflow_execution=common.WorkflowExecution(workflow_id=f"order-{i}"),
        signal_name="add-item",
    )
    return CallTarget(
        api_name=WF + "SignalWorkflowExecution", namespace=NS, request=request.SerializeToString()
    )


def _fixed_targets() -> list[CallTarget]:
    poll_wf = rr.PollWorkflowTaskQueueRequest(
        namespace=NS, task_queue=taskqueue.TaskQueue(name="orders-q"), identity="w@host"
    )
    poll_act = rr.PollActivityTaskQueueRequest(
        namespace=NS, task_queue=taskqueue.TaskQueue(name="orders-q"), identity="w@host"
    )
    complete = rr.RespondWorkflowTaskCompletedRequest(
        namespace=NS, task_token=b"t" * 100, identity="w@host"
    )
    heartbeat = rr.RecordActivityTaskHeartbeatRequest(namespace=NS, task_token=b"t" * 100)
    describe = rr.DescribeWorkflowExecutionRequest(
        namespace=NS, execution=common.WorkflowExecution(workflow_id="order-1")
    )
    return [
        CallTarget(api_name=WF + name, namespace=NS, request=m.SerializeToString())
        for name, m in (
            ("PollWorkflowTaskQueue", poll_wf),
            ("PollActivityTaskQueue", poll_act),
            ("RespondWorkflowTaskCompleted", complete),
            ("RecordActivityTaskHeartbeat", heartbeat),
            ("DescribeWorkflowExecution", describe),
        )
    ]


Workload = list[tuple[Claims, CallTarget]]


def mix(n: int, who: dict[str, Claims]) -> Workload:
    """70 % repeating worker/read calls, 30 % starts and signals with a fresh workflow id."""
    fixed = _fixed_targets()
    people = [who["batch"], who["oncall"], who["intern"], who["ui"]]
    calls: Workload = []
    for i in range(n):
        if i % 10 < 7:
            calls.append((who["worker"], fixed[i % len(fixed)]))
        elif i % 10 < 9:
            calls.append((people[i % len(people)], _start(i)))
        else:
            calls.append((people[i % len(people)], _signal(i)))
    return calls


def unique(n: int, who: dict[str, Claims]) -> Workload:
    people = list(who.values())
    return [(people[i % len(people)], _start(i) if i % 2 else _signal(i)) for i in range(n)]


def new_namespaces(n: int, who: dict[str, Claims]) -> Workload:
    """A caller naming a new namespace on every call: every entity set is built afresh."""
    caller = who["oncall"]
    return [
        (caller, CallTarget(api_name=WF + "DescribeNamespace", namespace=f"ns-{i}"))
        for i in range(n)
    ]


def wired(combine: str) -> Authorizer:
    """The Cedar authorizer exactly as the composition root builds it from config."""
    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:1"},
            "authorization": {
                "authorizer": "cedar",
                "claimMapper": "noop",
                "cedar": {"policyFiles": [str(POLICIES)], "combine": combine},
            },
        }
    )
    return build_authorizer(cfg, observe=PolicyMetrics(CollectorRegistry()).observe)


class _PeerAttaching:
    """Times PeerAttacher.attach per call (a token mapper's added step under cedar)."""

    def __init__(self) -> None:
        self._attacher = PeerAttacher()
        self._peer = PeerIdentity(subject="CN=w", common_name="w")

    async def authorize(self, claims: Claims | None, target: CallTarget) -> Any:
        assert claims is not None
        return self._attacher.attach(claims, self._peer)


async def _run(authorizer: Authorizer, calls: Workload) -> float:
    """CPU seconds per call (process time: what the proxy's one core would spend)."""
    started = time.process_time()
    for claims, target in calls:
        await authorizer.authorize(claims, target)
    return (time.process_time() - started) / len(calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    schema = load_schema()
    who = callers()
    default = DefaultAuthorizer(lookup, HEALTH_CHECK_APIS)

    def cedar(cache: bool, combine: Combine = Combine.POLICY_ONLY) -> CedarAuthorizer:
        store = PolicyStore([str(POLICIES)], schema)
        return CedarAuthorizer(
            store,
            combine=combine,
            default=default if combine is Combine.DEFAULT_AND_POLICY else None,
            cache=cache,
        )

    scenarios: list[tuple[str, Callable[[], Authorizer], Callable[[int], Workload]]] = [
        ("default", lambda: default, lambda n: mix(n, who)),
        ("cedar-nocache", lambda: cedar(False), lambda n: mix(n, who)),
        ("cedar-cache-mix", lambda: cedar(True), lambda n: mix(n, who)),
        ("cedar-nocache-unique", lambda: cedar(False), lambda n: unique(n, who)),
        ("cedar-cache-unique", lambda: cedar(True), lambda n: unique(n, who)),
        ("cedar-new-namespace", lambda: cedar(True), lambda n: new_namespaces(n, who)),
        (
            "default-and-policy",
            lambda: cedar(True, Combine.DEFAULT_AND_POLICY),
            lambda n: mix(n, who),
        ),
        ("wired-policy-only", lambda: wired("policy-only"), lambda n: mix(n, who)),
        ("wired-default-and-policy", lambda: wired("default-and-policy"), lambda n: mix(n, who)),
        ("peer-attach", _PeerAttaching, lambda n: mix(n, who)),
    ]
    deadline = time.monotonic() + args.max_seconds
    results: dict[str, Any] = {"policies": 20, "calls": args.calls, "scenarios": {}}
    for name, make, workload in scenarios:
        samples: list[float] = []
        for _ in range(args.repeat):
            if time.monotonic() > deadline:
                break
            authorizer = make()
            # Warm up on calls after the measured ones: fresh workflow ids stay fresh.
            calls = workload(args.calls + 2000)
            asyncio.run(_run(authorizer, calls[args.calls :]))
            samples.append(asyncio.run(_run(authorizer, calls[: args.calls])) * 1e6)
        if not samples:
            break
        results["scenarios"][name] = {
            "median_us": round(statistics.median(samples), 2),
            "min_us": round(min(samples), 2),
            "samples_us": [round(s, 2) for s in samples],
        }
        print(
            f"{name:22s} median {statistics.median(samples):7.2f} us/call  min {min(samples):7.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
