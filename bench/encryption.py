"""Micro-benchmark of the payload-encryption engine (proxy.encryption), CPU only, no sockets.

    .venv/bin/python bench/encryption.py [--rounds N] [--json PATH]

`make bench` runs it as its last stage (`bench/run.py --only encryption` runs it alone).

Cases (from issue 17): a StartWorkflowExecution request with a 1 KiB input (encrypt), and a
PollWorkflowTaskQueue response with a 100-event history (decrypt, and encrypt to produce it).
Each case prints the CPU time per call with encryption on, the same body's protobuf
parse + serialize alone, and the budget `40 us + 15 us * payloads`. With encryption off the
engine is not called at all (zero added). Builds messages with temporalio (a test dependency).

The second table is what the forwarder adds per call (proxy/forward.py calls exactly these):
`PayloadEncryption.call(info, namespace)` then `.seal(request)` or `.open(response)`, metrics
and CPU accounting included, for the encrypted namespace (`payments`) and for a namespace
without encryption (`default`: `call` returns None after one dict look-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from temporalio.api.common.v1 import (
    ActivityType,
    Header,
    Memo,
    Payload,
    Payloads,
    SearchAttributes,
    WorkflowExecution,
    WorkflowType,
)
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import (
    ActivityTaskCompletedEventAttributes,
    ActivityTaskScheduledEventAttributes,
    ActivityTaskStartedEventAttributes,
    History,
    HistoryEvent,
    MarkerRecordedEventAttributes,
    TimerFiredEventAttributes,
    TimerStartedEventAttributes,
    WorkflowExecutionSignaledEventAttributes,
    WorkflowExecutionStartedEventAttributes,
    WorkflowTaskCompletedEventAttributes,
    WorkflowTaskScheduledEventAttributes,
    WorkflowTaskStartedEventAttributes,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    PollWorkflowTaskQueueResponse,
    StartWorkflowExecutionRequest,
)

from proxy import methods
from proxy.codec.payload import KeyRing
from proxy.config.parse import parse_config
from proxy.encryption import (
    EncryptionPlan,
    NamespaceKeys,
    decrypt_response,
    encrypt_message,
    encrypt_request,
)
from proxy.encryption.service import PayloadEncryption
from proxy.metrics import EncryptionMetrics

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
# Bounded in count and in time: whichever ends first.
MAX_SECONDS_PER_CASE = 5.0


def _json(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


def start_request() -> bytes:
    return StartWorkflowExecutionRequest(
        namespace="payments",
        workflow_id="order-123",
        workflow_type=WorkflowType(name="OrderWorkflow"),
        task_queue=TaskQueue(name="orders"),
        input=Payloads(payloads=[_json(b'"' + b"x" * 1022 + b'"')]),
        identity="bench@host",
        request_id="4b9c2a6e-0000-4000-8000-000000000000",
    ).SerializeToString()


def _event(i: int, kind: int) -> HistoryEvent:
    e = HistoryEvent(event_id=i, event_type=EventType.ValueType(kind))
    return e


def history_events(n: int = 100) -> list[HistoryEvent]:
    """A plausible workflow: start, then cycles of workflow task, activity, timer, signal."""
    small = _json(b'{"amount": 1234, "currency": "EUR", "customer": "c-42"}')
    events = [
        HistoryEvent(
            event_id=1,
            event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
            workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
                workflow_type=WorkflowType(name="OrderWorkflow"),
                task_queue=TaskQueue(name="orders"),
                input=Payloads(payloads=[small]),
                header=Header(fields={"trace": _json(b'{"span": "abc"}')}),
                memo=Memo(fields={"note": _json(b'"vip"')}),
                search_attributes=SearchAttributes(indexed_fields={"Tier": _json(b'"gold"')}),
            ),
        )
    ]
    cycle = [
        ("wts", WorkflowTaskScheduledEventAttributes(task_queue=TaskQueue(name="orders"))),
        ("wtst", WorkflowTaskStartedEventAttributes(identity="worker-1")),
        ("wtc", WorkflowTaskCompletedEventAttributes(identity="worker-1")),
        (
            "ats",
            ActivityTaskScheduledEventAttributes(
                activity_id="1",
                activity_type=ActivityType(name="charge"),
                task_queue=TaskQueue(name="orders"),
                header=Header(),
                input=Payloads(payloads=[small]),
            ),
        ),
        ("atst", ActivityTaskStartedEventAttributes(identity="worker-1", attempt=1)),
        ("atc", ActivityTaskCompletedEventAttributes(result=Payloads(payloads=[small]))),
        ("ts", TimerStartedEventAttributes(timer_id="t")),
        ("tf", TimerFiredEventAttributes(timer_id="t")),
        (
            "sig",
            WorkflowExecutionSignaledEventAttributes(
                signal_name="approve", input=Payloads(payloads=[small])
            ),
        ),
        (
            "mr",
            MarkerRecordedEventAttributes(
                marker_name="m", details={"data": Payloads(payloads=[small])}
            ),
        ),
    ]
    field_of = {
        "wts": "workflow_task_scheduled_event_attributes",
        "wtst": "workflow_task_started_event_attributes",
        "wtc": "workflow_task_completed_event_attributes",
        "ats": "activity_task_scheduled_event_attributes",
        "atst": "activity_task_started_event_attributes",
        "atc": "activity_task_completed_event_attributes",
        "ts": "timer_started_event_attributes",
        "tf": "timer_fired_event_attributes",
        "sig": "workflow_execution_signaled_event_attributes",
        "mr": "marker_recorded_event_attributes",
    }
    i = 2
    while len(events) < n:
        key, attrs = cycle[(i - 2) % len(cycle)]
        e = HistoryEvent(event_id=i)
        getattr(e, field_of[key]).CopyFrom(attrs)
        events.append(e)
        i += 1
    return events


def poll_response() -> bytes:
    return PollWorkflowTaskQueueResponse(
        task_token=b"t" * 200,
        workflow_execution=WorkflowExecution(workflow_id="order-123", run_id="r"),
        workflow_type=WorkflowType(name="OrderWorkflow"),
        history=History(events=history_events(100)),
        attempt=1,
    ).SerializeToString()


def _per_call(fn: Callable[[], object], rounds: int) -> float:
    """Median CPU seconds per call over batches, bounded by rounds and MAX_SECONDS_PER_CASE."""
    batch = 20
    samples: list[float] = []
    deadline = time.monotonic() + MAX_SECONDS_PER_CASE
    for _ in range(max(1, rounds // batch)):
        t0 = time.process_time()
        for _ in range(batch):
            fn()
        samples.append((time.process_time() - t0) / batch)
        if time.monotonic() > deadline:
            break
    return statistics.median(samples)


class _NoLog:
    def _log(self, event: str, **kw: object) -> None:
        return None

    debug = info = warning = error = _log


def wiring(rounds: int, key: bytes) -> list[dict[str, object]]:
    """Per call, what the forwarder adds: encrypted namespace vs a namespace without it."""
    import base64

    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {"authorizer": "noop", "claimMapper": "noop"},
            "codec": {"keys": {"2026-11": base64.b64encode(key).decode()}},
            "encryption": {"namespaces": {"payments": {"keyId": "2026-11"}}},
            "metrics": {"namespaceLabels": ["payments"]},
        }
    )
    metrics = EncryptionMetrics(CollectorRegistry(), namespace_labels=["payments"])
    svc = PayloadEncryption.build(cfg, metrics=metrics, logger=_NoLog())
    start_info = methods.lookup(WF + "StartWorkflowExecution")
    poll_info = methods.lookup(WF + "PollWorkflowTaskQueue")
    assert start_info is not None and poll_info is not None
    start_body = start_request()
    poll_sealed = encrypt_message(
        svc.plan,
        "temporal.api.workflowservice.v1.PollWorkflowTaskQueueResponse",
        poll_response(),
        svc.settings.keys["payments"],
    )

    def start_on() -> object:
        crypto = svc.call(start_info, "payments")
        assert crypto is not None
        return crypto.seal(start_body)

    def poll_on() -> object:
        crypto = svc.call(poll_info, "payments")
        assert crypto is not None
        return crypto.open(poll_sealed.body)

    cases = [
        ("StartWorkflowExecution, 1 KiB input (request sealed)", 1, start_on, start_info),
        (
            "PollWorkflowTaskQueue, 100-event history (response opened)",
            poll_sealed.encrypted,
            poll_on,
            poll_info,
        ),
    ]
    rows: list[dict[str, object]] = []
    for name, payloads, on, info in cases:
        on_us = _per_call(on, rounds) * 1e6
        off_us = _per_call(lambda info=info: svc.call(info, "default"), rounds * 10) * 1e6
        budget = 40 + 15 * payloads
        rows.append(
            {
                "case": name,
                "payloads": payloads,
                "encrypted_us": round(on_us, 1),
                "other_namespace_us": round(off_us, 2),
                "budget_us": budget,
                "met": on_us <= budget,
            }
        )
    return rows


def markdown(rows: list[dict[str, object]], label: str) -> str:
    lines = [
        f"Encryption at the proxy (API {label}): CPU the forwarder adds per call, median of "
        "batches of 20, on this machine.",
        "",
        "| call | payloads | added, encrypted namespace | added, other namespace "
        "| budget (40 us + 15 us/payload) | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['payloads']} | {r['encrypted_us']} us | "
            f"{r['other_namespace_us']} us | {r['budget_us']} us | "
            f"{'yes' if r['met'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4000)
    parser.add_argument("--json", default="", help="also write the results here")
    ns = parser.parse_args(argv)
    plan = EncryptionPlan.load()
    keys = NamespaceKeys.for_ring(KeyRing({"2026-11": os.urandom(32)}), "2026-11")
    start_body = start_request()
    start_method = WF + "StartWorkflowExecution"
    poll_method = WF + "PollWorkflowTaskQueue"
    poll_plain = poll_response()
    sealed = encrypt_message(
        plan, "temporal.api.workflowservice.v1.PollWorkflowTaskQueueResponse", poll_plain, keys
    )
    start_payloads = encrypt_request(plan, start_method, start_body, keys).encrypted
    poll_payloads = sealed.encrypted
    cases: list[tuple[str, int, Callable[[], object], Callable[[], object]]] = [
        (
            f"StartWorkflowExecution 1 KiB input, encrypt ({len(start_body)} B)",
            start_payloads,
            lambda: encrypt_request(plan, start_method, start_body, keys),
            lambda: StartWorkflowExecutionRequest.FromString(start_body).SerializeToString(),
        ),
        (
            f"PollWorkflowTaskQueue 100 events, decrypt ({len(sealed.body)} B)",
            poll_payloads,
            lambda: decrypt_response(plan, poll_method, sealed.body, keys),
            lambda: PollWorkflowTaskQueueResponse.FromString(sealed.body).SerializeToString(),
        ),
        (
            f"PollWorkflowTaskQueue 100 events, encrypt ({len(poll_plain)} B)",
            poll_payloads,
            lambda: encrypt_message(
                plan,
                "temporal.api.workflowservice.v1.PollWorkflowTaskQueueResponse",
                poll_plain,
                keys,
            ),
            lambda: PollWorkflowTaskQueueResponse.FromString(poll_plain).SerializeToString(),
        ),
        (
            "PollWorkflowTaskQueue 100 events, plaintext response (precheck only)",
            0,
            lambda: decrypt_response(plan, poll_method, poll_plain, keys),
            lambda: None,
        ),
    ]
    print(f"api {plan.version.label()}; per-call CPU, median of batches of 20")
    print(f"{'case':<66} {'payloads':>8} {'engine us':>10} {'parse+ser us':>13} {'budget us':>10}")
    for name, payloads, fn, baseline in cases:
        engine = _per_call(fn, ns.rounds) * 1e6
        base = _per_call(baseline, ns.rounds) * 1e6
        budget = 40 + 15 * payloads
        flag = "ok" if engine <= budget else "OVER"
        print(f"{name:<66} {payloads:>8} {engine:>10.1f} {base:>13.1f} {budget:>10} {flag}")
    rows = wiring(ns.rounds, os.urandom(32))
    md = markdown(rows, plan.version.label())
    print()
    print(md)
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump({"api": plan.version.label(), "rows": rows, "markdown": md}, f, indent=2)
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
