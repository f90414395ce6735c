"""Payload encryption at the proxy, end to end: the real dev server, the real Python SDK worker
and client through the proxy, the real `temporal` CLI. Namespace `other` is encrypted, `default`
is not; histories are read DIRECTLY from the dev server to see what Temporal stores."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution, WorkflowType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest,
    RespondActivityTaskCompletedRequest,
    StartWorkflowExecutionRequest,
)
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
    WithStartWorkflowOperation,
    WorkflowFailureError,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.converter import DataConverter
from temporalio.worker import Worker

from proxy.sdk_codec import EncryptionCodec
from proxy.wire.write import encode_len_field
from tests.e2e import sdk
from tests.e2e.conftest import ProxyFactory
from tests.e2e.enc_workflows import (
    ChildOrder,
    DecliningWorkflow,
    Order,
    OrderWorkflow,
    charge,
    decline,
)
from tests.e2e.rig import (
    LOOPBACK,
    TEMPORAL,
    Pki,
    ProxyProcess,
    TemporalDevServer,
    cli,
    jwt_authorization,
    mtls_channel,
    sample,
    wait_until,
)

ENC_NS = "other"
PLAIN_NS = "default"
KEYS = {"k1": os.urandom(32), "k2": os.urandom(32)}
ENCRYPTED = b"binary/encrypted"
SA_NAME = "EncKeyword"
SA = SearchAttributeKey.for_keyword(SA_NAME)
WF = "/temporal.api.workflowservice.v1.WorkflowService/"
PAYLOAD_TYPE = "temporal.api.common.v1.Payload"
SA_TYPE = "temporal.api.common.v1.SearchAttributes"
T = TypeVar("T")


def enc_overrides(
    key_id: str = "k1", unknown: str = "reject", keys: tuple[str, ...] = ("k1", "k2")
) -> dict[str, Any]:
    return {
        "codec": {
            "enabled": True,
            "keys": {k: base64.b64encode(KEYS[k]).decode() for k in keys},
            "encryptKeyId": key_id,
        },
        "encryption": {"namespaces": {ENC_NS: {"keyId": key_id}}, "unknownFields": unknown},
        "metrics": {"namespaceLabels": [ENC_NS]},
    }


def payloads_in(msg: Message, under_sa: bool = False) -> Iterator[tuple[bool, Any]]:
    """Every Payload under `msg` (any depth, maps included), flagged when inside
    SearchAttributes. Independent of the proxy's own descriptor plan."""
    for fd, value in msg.ListFields():
        mt = fd.message_type
        if mt is None:
            continue
        sa = under_sa or mt.full_name == SA_TYPE
        if mt.GetOptions().map_entry:
            if mt.fields_by_name["value"].message_type is None:
                continue
            items = list(value.values())
        elif fd.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if item.DESCRIPTOR.full_name == PAYLOAD_TYPE:
                yield sa, item
            else:
                yield from payloads_in(item, sa)


async def until(fetch: Callable[[], Awaitable[T]], ok: Callable[[T], bool], seconds: float) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = await fetch()
            if ok(value):
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {seconds} s")
        await asyncio.sleep(0.2)


@dataclass
class Outcome:
    result: dict[str, Any]
    query: dict[str, Any]
    update: str
    failure_details: list[Any]
    memo: str
    search_attribute: str | None
    schedule_arg: Payload
    schedule_memo: str
    executions: list[tuple[str, str]]  # (workflow id, run id) of every run
    listed_memo: str
    schedule_id: str
    with_start: tuple[str, str, dict[str, Any]]  # update-with-start: update, summary, result


async def scenario(client: Client, secret: str) -> Outcome:
    """Activities, a child, signal, query, update, continue-as-new, memo, a search attribute,
    a failure with details and a schedule, all carrying `secret` in payloads only."""
    tag = uuid.uuid4().hex[:8]
    queue, wid, sid = f"enc-{tag}", f"order-{tag}", f"sched-{tag}"
    workflows = [OrderWorkflow, ChildOrder, DecliningWorkflow]
    async with Worker(client, task_queue=queue, workflows=workflows, activities=[charge, decline]):
        handle = await client.start_workflow(
            OrderWorkflow.run,
            args=[Order(secret=secret, amount=5), 1],
            id=wid,
            task_queue=queue,
            memo={"note": f"memo {secret}"},
            search_attributes=TypedSearchAttributes([SearchAttributePair(SA, "sa-visible")]),
        )
        first_run = handle.first_execution_run_id or handle.result_run_id or ""
        # The run after continue-as-new answers rounds == 0; talk to it only then.
        await until(
            lambda: handle.query(OrderWorkflow.state), lambda s: s["rounds"] == 0, seconds=20
        )
        update = await handle.execute_update(OrderWorkflow.set_note, f"note {secret}")
        await handle.signal(OrderWorkflow.approve, f"approver {secret}")
        result = await handle.result()
        query = await handle.query(OrderWorkflow.state)
        desc = await handle.describe()
        memo = await desc.memo_value("note", type_hint=str)
        listed = await until(lambda: _listed_memo(client, wid), lambda m: m is not None, seconds=15)
        declining = await client.start_workflow(
            DecliningWorkflow.run, secret, id=f"decline-{tag}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await declining.result()
        cause = failed.value.cause
        details = list(getattr(getattr(cause, "cause", None), "details", ()))
        schedule = await client.create_schedule(
            sid,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    ChildOrder.run, f"scheduled {secret}", id=f"{sid}-wf", task_queue=queue
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))]),
                state=ScheduleState(paused=True),
            ),
            memo={"m": f"schedule memo {secret}"},
        )
        # Update-with-start (ExecuteMultiOperation), with a summary (user metadata payload).
        start_op = WithStartWorkflowOperation(
            OrderWorkflow.run,
            args=[Order(secret=secret, amount=7), 0],
            id=f"uws-{tag}",
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"summary {secret}",
        )
        uws_update = await client.execute_update_with_start_workflow(
            OrderWorkflow.set_note, f"uws {secret}", start_workflow_operation=start_op
        )
        uws = await start_op.workflow_handle()
        await uws.signal(OrderWorkflow.approve, "uws")
        uws_result = await uws.result()
        uws_summary = await (await uws.describe()).static_summary() or ""
        sdesc = await schedule.describe()
        action = sdesc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        schedule_arg = action.args[0]
        assert isinstance(schedule_arg, Payload)
        schedule_memo = await sdesc.memo_value("m", type_hint=str)
    second_run = desc.run_id
    executions = [
        (wid, first_run),
        (wid, second_run),
        (f"{wid}-child", ""),
        (f"decline-{tag}", ""),
        (f"uws-{tag}", ""),
        (f"uws-{tag}-child", ""),
    ]
    return Outcome(
        result=result,
        query=query,
        update=update,
        failure_details=details,
        memo=memo,
        search_attribute=desc.typed_search_attributes.get(SA),
        schedule_arg=schedule_arg,
        schedule_memo=schedule_memo,
        executions=executions,
        listed_memo=listed or "",
        schedule_id=sid,
        with_start=(uws_update, uws_summary, uws_result),
    )


async def _listed_memo(client: Client, wid: str) -> str | None:
    async for execution in client.list_workflows(f'WorkflowId = "{wid}"'):
        value: str = await execution.memo_value("note", type_hint=str)
        return value
    return None


def check_outcome(out: Outcome, secret: str) -> None:
    assert out.result == {
        "charged": f"charged {secret} 5",
        "child": f"child saw {secret}",
        "approved": f"approver {secret}",
        "note": f"note {secret}",
    }
    assert out.query == {"rounds": 0, "note": f"note {secret}"}
    assert out.update == f"noted note {secret}"
    assert out.failure_details == [{"why": secret}]
    assert out.memo == out.listed_memo == f"memo {secret}"
    assert out.search_attribute == "sa-visible"
    assert out.schedule_arg.metadata["encoding"] == b"json/plain"
    assert json.loads(out.schedule_arg.data) == f"scheduled {secret}"
    assert out.schedule_memo == f"schedule memo {secret}"
    update, summary, result = out.with_start
    assert update == f"noted uws {secret}"
    assert summary == f"summary {secret}"
    assert result["charged"] == f"charged {secret} 7" and result["note"] == f"uws {secret}"


async def direct_histories(
    temporal: TemporalDevServer, namespace: str, executions: list[tuple[str, str]]
) -> list[Any]:
    """The stored histories, read from the dev server itself (no proxy)."""
    client = await Client.connect(temporal.address, namespace=namespace)
    events: list[Any] = []
    for wid, rid in executions:
        history = await client.get_workflow_handle(wid, run_id=rid or None).fetch_history()
        events.extend(history.events)
    return events


def payload_bytes(events: list[Any]) -> list[tuple[tuple[tuple[str, bytes], ...], bytes]]:
    """Every payload's metadata and data bytes (map order is not part of a payload's value:
    protobuf writes map entries in any order, with or without the proxy)."""
    return sorted(
        (tuple(sorted(p.metadata.items())), p.data) for e in events for _, p in payloads_in(e)
    )


async def ensure_search_attribute(pki: Pki, proxy: ProxyProcess) -> None:
    """Create EncKeyword in both namespaces with the real CLI through the proxy."""
    for ns in (ENC_NS, PLAIN_NS):
        await asyncio.to_thread(
            cli,
            pki,
            proxy.address,
            "operator",
            "search-attribute",
            "create",
            "--name",
            SA_NAME,
            "--type",
            "Keyword",
            "--namespace",
            ns,
        )
        listed = await asyncio.to_thread(
            cli, pki, proxy.address, "operator", "search-attribute", "list", "--namespace", ns
        )
        assert SA_NAME in listed.stdout, listed.stdout + listed.stderr


def cli_data(stdout: str) -> list[bytes]:
    """Every payload `data` of the CLI's JSON output, decoded."""
    found: list[bytes] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    found.append(base64.b64decode(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in stdout.splitlines() or [stdout]:
        try:
            walk(json.loads(line))
        except ValueError:
            walk(json.loads(stdout))
            break
    return found


# ------------------------------------------------------------------------------ tests


async def test_encrypted_namespace_end_to_end(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    proxy = await asyncio.to_thread(start_proxy, enc_overrides())
    await ensure_search_attribute(pki, proxy)
    secret = f"s3cret-{uuid.uuid4().hex[:10]}"

    # Encrypted namespace: everything correct as the SDK sees it through the proxy.
    enc_client = await sdk.connect(pki, proxy.address, namespace=ENC_NS)
    enc = await scenario(enc_client, secret)
    check_outcome(enc, secret)

    # What Temporal stores: no plaintext payload, every payload sealed with k1, SAs readable.
    events = await direct_histories(temporal, ENC_NS, enc.executions)
    found = [(sa, p) for e in events for sa, p in payloads_in(e)]
    sealed = [p for sa, p in found if not sa]
    assert len(sealed) >= 15, len(sealed)
    for p in sealed:
        assert p.metadata["encoding"] == ENCRYPTED, p
        assert p.metadata["encryption-key-id"] == b"k1"
    assert any(sa and b"sa-visible" in p.data for sa, p in found)
    for e in events:
        assert secret.encode() not in e.SerializeToString(), e
    # The schedule as stored: its action input and memo are sealed too.
    direct_enc = await Client.connect(temporal.address, namespace=ENC_NS)
    stored = (await direct_enc.get_schedule_handle(enc.schedule_id).describe()).raw_description
    stored_payloads = [
        *stored.schedule.action.start_workflow.input.payloads,
        *stored.memo.fields.values(),
    ]
    assert len(stored_payloads) == 2
    assert all(p.metadata["encoding"] == ENCRYPTED for p in stored_payloads)
    assert secret.encode() not in stored.SerializeToString()
    await direct_enc.get_schedule_handle(enc.schedule_id).delete()

    # The CLI straight at the server shows ciphertext; with the proxy's Codec Server, plaintext.
    wid, rid = enc.executions[1]
    show = [TEMPORAL, "workflow", "show", "--workflow-id", wid, "--run-id", rid]
    show += ["--namespace", ENC_NS, "--address", temporal.address, "--output", "json"]
    raw = await asyncio.to_thread(subprocess.run, show, capture_output=True, text=True, timeout=30)
    assert raw.returncode == 0, raw.stderr
    assert not any(secret.encode() in d for d in cli_data(raw.stdout))
    codec = [*show, "--codec-endpoint", f"http://{LOOPBACK}:{proxy.admin_port}"]
    dec = await asyncio.to_thread(subprocess.run, codec, capture_output=True, text=True, timeout=30)
    assert dec.returncode == 0, dec.stderr
    assert json.dumps(f"charged {secret} 5").encode() in cli_data(dec.stdout)
    # And the CLI through the proxy sees plaintext without any codec.
    through = await asyncio.to_thread(
        cli, pki, proxy.address, "workflow", "show", "--workflow-id", wid, "--run-id", rid,
        "--namespace", ENC_NS, "--output", "json",
    )  # fmt: skip
    assert through.returncode == 0, through.stderr
    assert json.dumps(f"charged {secret} 5").encode() in cli_data(through.stdout)

    # The namespace without encryption: correct, and stored exactly as without the proxy.
    plain_client = await sdk.connect(pki, proxy.address, namespace=PLAIN_NS)
    plain = await scenario(plain_client, secret)
    check_outcome(plain, secret)
    direct_client = await Client.connect(temporal.address, namespace=PLAIN_NS)
    baseline = await scenario(direct_client, secret)
    check_outcome(baseline, secret)
    await plain_client.get_schedule_handle(plain.schedule_id).delete()
    await direct_client.get_schedule_handle(baseline.schedule_id).delete()
    via_proxy = payload_bytes(await direct_histories(temporal, PLAIN_NS, plain.executions))
    without = payload_bytes(await direct_histories(temporal, PLAIN_NS, baseline.executions))
    assert via_proxy == without
    assert not any(dict(md).get("encoding") == ENCRYPTED for md, _ in via_proxy)

    metrics = proxy.metrics()
    name = "temporal_auth_proxy_encryption_payloads_total"
    assert (sample(metrics, name, namespace=ENC_NS, outcome="encrypted") or 0) >= 10
    assert (sample(metrics, name, namespace=ENC_NS, outcome="decrypted") or 0) >= 10
    assert sample(metrics, name, namespace="_other_", outcome="encrypted") == 0
    cpu = "temporal_auth_proxy_encryption_cpu_seconds_count"
    assert (sample(metrics, cpu, method_class="poll", direction="response") or 0) > 0
    assert (sample(metrics, cpu, method_class="write", direction="request") or 0) > 0
    info = next(e for e in proxy.events() if e.get("event") == "listening")
    assert info["temporal_api"].startswith("temporalio-")
    assert info["encrypted_namespaces"] == [ENC_NS]
    assert sample(metrics, "temporal_auth_proxy_build_info", temporal_api=info["temporal_api"])


def _start_raw(namespace: str, secret: str, extra: bytes = b"") -> bytes:
    tag = uuid.uuid4().hex[:8]
    req = StartWorkflowExecutionRequest(
        namespace=namespace,
        workflow_id=f"raw-{tag}",
        workflow_type=WorkflowType(name="Nobody"),
        task_queue=TaskQueue(name=f"nobody-{tag}"),
        input=Payloads(
            payloads=[
                Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(secret).encode())
            ]
        ),
        request_id=str(uuid.uuid4()),
    )
    return req.SerializeToString() + extra


def _call(pki: Pki, proxy: ProxyProcess, method: str, body: bytes, **kw: Any) -> bytes:
    with mtls_channel(pki, proxy.address) as ch:
        reply: bytes = ch.unary_unary(WF + method)(body, timeout=10, **kw)
        return reply


async def test_refusals_unknown_fields_no_namespace_and_undecryptable(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    proxy = await asyncio.to_thread(start_proxy, enc_overrides())
    unknown = encode_len_field(999, b"\x0a\x03abc")

    # An unknown length-delimited field in a request to the encrypted namespace: refused.
    with pytest.raises(grpc.RpcError) as refused:
        _call(pki, proxy, "StartWorkflowExecution", _start_raw(ENC_NS, "u", unknown))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "StartWorkflowExecution" in refused.value.details()
    assert "999" in refused.value.details()
    # The namespace without encryption forwards it untouched (the server ignores it).
    _call(pki, proxy, "StartWorkflowExecution", _start_raw(PLAIN_NS, "u", unknown))

    # A task-token call without a namespace cannot be encrypted: refused, clearly.
    token_call = RespondActivityTaskCompletedRequest(
        task_token=b"opaque", result=Payloads(payloads=[Payload(data=b'"secret"')])
    ).SerializeToString()
    with pytest.raises(grpc.RpcError) as no_ns:
        _call(pki, proxy, "RespondActivityTaskCompleted", token_call)
    assert no_ns.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "without a namespace" in no_ns.value.details()

    # Payloads stored under a key the proxy does not have, or tampered: the call fails and no
    # ciphertext or plaintext is returned as if it were the payload.
    direct = await Client.connect(temporal.address, namespace=ENC_NS)
    for kid, reason in ((b"nope", "unknown_key"), (b"k1", "authentication")):
        bad = Payload(
            metadata={"encoding": ENCRYPTED, "encryption-key-id": kid}, data=os.urandom(64)
        )
        wid = f"bad-{reason}-{uuid.uuid4().hex[:6]}"
        await direct.workflow_service.start_workflow_execution(
            StartWorkflowExecutionRequest(
                namespace=ENC_NS,
                workflow_id=wid,
                workflow_type=WorkflowType(name="Nobody"),
                task_queue=TaskQueue(name="nobody"),
                input=Payloads(payloads=[bad]),
                request_id=str(uuid.uuid4()),
            )
        )
        history = GetWorkflowExecutionHistoryRequest(
            namespace=ENC_NS, execution=WorkflowExecution(workflow_id=wid)
        ).SerializeToString()
        with pytest.raises(grpc.RpcError) as lost:
            _call(pki, proxy, "GetWorkflowExecutionHistory", history)
        assert lost.value.code() == grpc.StatusCode.DATA_LOSS
        assert lost.value.details() == (
            f"temporal-auth-proxy: payload cannot be decrypted ({reason})"
        )

    metrics = proxy.metrics()
    fail = "temporal_auth_proxy_encryption_failures_total"
    assert sample(metrics, fail, namespace=ENC_NS, reason="unknown_field") == 1
    assert sample(metrics, fail, namespace="_other_", reason="no_namespace") == 1
    assert sample(metrics, fail, namespace=ENC_NS, reason="decrypt_unknown_key") == 1
    assert sample(metrics, fail, namespace=ENC_NS, reason="decrypt_authentication") == 1
    unknown_total = "temporal_auth_proxy_encryption_unknown_fields_total"
    assert sample(metrics, unknown_total, namespace=ENC_NS, action="rejected") == 1
    refusals = [e for e in proxy.events() if e.get("event") == "encryption_refused"]
    assert {e["reason"] for e in refusals} == {
        "unknown_field",
        "no_namespace",
        "decrypt_unknown_key",
        "decrypt_authentication",
    }


async def test_authorization_comes_first_and_forward_mode_counts(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    cfg = enc_overrides(unknown="forward")
    cfg["authorization"] = jwt_authorization(pki)
    proxy = await asyncio.to_thread(start_proxy, cfg)
    unknown = encode_len_field(999, b"\x0a\x03abc")
    reader = [("authorization", f"Bearer {pki.token(f'{ENC_NS}:read')}")]
    writer = [("authorization", f"Bearer {pki.token(f'{ENC_NS}:write')}")]

    # Denied first: never parsed for payloads (no encryption failure, no unknown-field count).
    with pytest.raises(grpc.RpcError) as denied:
        _call(
            pki, proxy, "StartWorkflowExecution", _start_raw(ENC_NS, "d", unknown), metadata=reader
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    metrics = proxy.metrics()
    unknown_total = "temporal_auth_proxy_encryption_unknown_fields_total"
    assert sample(metrics, unknown_total, namespace=ENC_NS, action="forwarded") == 0

    # unknownFields: forward passes the call, counts it, and still seals the known payloads.
    secret = f"fwd-{uuid.uuid4().hex[:8]}"
    body = _start_raw(ENC_NS, secret, unknown)
    _call(pki, proxy, "StartWorkflowExecution", body, metadata=writer)
    wid = StartWorkflowExecutionRequest.FromString(body).workflow_id
    assert sample(proxy.metrics(), unknown_total, namespace=ENC_NS, action="forwarded") == 1
    events = await direct_histories(temporal, ENC_NS, [(wid, "")])
    stored = [p for e in events for sa, p in payloads_in(e) if not sa]
    assert stored and all(p.metadata["encoding"] == ENCRYPTED for p in stored)
    assert all(secret.encode() not in e.SerializeToString() for e in events)


async def test_key_rotation_by_sighup(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    # k2 does not exist yet: it arrives with the rotation, for the proxy and its Codec Server.
    proxy = await asyncio.to_thread(start_proxy, enc_overrides("k1", keys=("k1",)))
    client = await sdk.connect(pki, proxy.address, namespace=ENC_NS)

    async def run(secret: str) -> tuple[str, set[bytes]]:
        queue, wid = f"rot-{uuid.uuid4().hex[:8]}", f"rot-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[ChildOrder]):
            assert (
                await client.execute_workflow(ChildOrder.run, secret, id=wid, task_queue=queue)
                == f"child saw {secret}"
            )
        events = await direct_histories(temporal, ENC_NS, [(wid, "")])
        kids = {
            p.metadata["encryption-key-id"] for e in events for sa, p in payloads_in(e) if not sa
        }
        return wid, kids

    old_wid, kids = await run("before")
    assert kids == {b"k1"}

    def reload(config: dict[str, Any], event: str) -> None:
        before = sum(1 for e in proxy.events() if e.get("event") == event)
        proxy.config_path.write_text(yaml.safe_dump(config))
        proxy.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: sum(1 for e in proxy.events() if e.get("event") == event) > before,
            10,
            0.1,
            event,
        )

    rotated = {**proxy.config, **enc_overrides("k2")}
    await asyncio.to_thread(reload, rotated, "encryption_reloaded")
    new_wid, kids = await run("after")
    assert kids == {b"k2"}
    # Old histories still decrypt (k1 stays in the ring).
    assert await client.get_workflow_handle(old_wid).result() == "child saw before"
    # The Codec Server rotated too: the CLI straight at the server decodes both histories.
    for wid, secret in ((old_wid, "before"), (new_wid, "after")):
        show = [TEMPORAL, "workflow", "show", "--workflow-id", wid, "--namespace", ENC_NS]
        show += ["--address", temporal.address, "--output", "json"]
        show += ["--codec-endpoint", f"http://{LOOPBACK}:{proxy.admin_port}"]
        done = await asyncio.to_thread(
            subprocess.run, show, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert json.dumps(f"child saw {secret}").encode() in cli_data(done.stdout)
    assert not [e for e in proxy.events() if e.get("event") == "restart_required"]

    # A bad reload keeps the running settings: logged, counted, k2 still in use.
    broken = dict(rotated)
    broken["encryption"] = {"namespaces": {ENC_NS: {"keyId": "k9"}}}
    await asyncio.to_thread(reload, broken, "encryption_reload_failed")
    failed = [e for e in proxy.events() if e.get("event") == "encryption_reload_failed"]
    assert failed[-1]["path"] == f"encryption.namespaces.{ENC_NS}.keyId"
    reloads = "temporal_auth_proxy_encryption_reload_total"
    assert sample(proxy.metrics(), reloads, result="failure") == 1
    _, kids = await run("still")
    assert kids == {b"k2"}

    # Other sections are not applied by SIGHUP: the proxy says a restart is needed.
    other = dict(rotated)
    other["log"] = {**rotated["log"], "maxValueLength": 2048}
    await asyncio.to_thread(reload, other, "restart_required")
    needed = [e for e in proxy.events() if e.get("event") == "restart_required"]
    assert needed[-1]["sections"] == ["log"]


async def test_sighup_reaches_every_worker(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    """With `listen.workers: 2` the supervisor passes SIGHUP on (it used to die of it)."""
    cfg = enc_overrides("k1")
    cfg["listen"] = {"address": f"{LOOPBACK}:0", "shutdownGracePeriod": "10s", "workers": 2}
    proxy = await asyncio.to_thread(start_proxy, cfg)

    def count(event: str) -> int:
        return sum(1 for e in proxy.events() if e.get("event") == event)

    wait_until(lambda: count("listening") == 2, 20, 0.1, "two workers listening")
    proxy.config_path.write_text(yaml.safe_dump({**proxy.config, **enc_overrides("k2")}))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: count("encryption_reloaded") == 2, 20, 0.1, "both workers reloading")
    assert proxy.proc.poll() is None
    client = await sdk.connect(pki, proxy.address, namespace=ENC_NS)
    queue, wid = f"w2-{uuid.uuid4().hex[:8]}", f"w2-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[ChildOrder]):
        result = await client.execute_workflow(ChildOrder.run, "two", id=wid, task_queue=queue)
    assert result == "child saw two"
    events = await direct_histories(temporal, ENC_NS, [(wid, "")])
    kids = {p.metadata["encryption-key-id"] for e in events for sa, p in payloads_in(e) if not sa}
    assert kids == {b"k2"}


async def test_worker_side_codec_combines(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    """A worker and client that already encrypt (proxy.sdk_codec, same ring): their payloads
    pass the proxy unchanged, responses are opened by the proxy, the codec passes plaintext."""
    proxy = await asyncio.to_thread(start_proxy, enc_overrides("k1"))
    converter = DataConverter(payload_codec=EncryptionCodec({"k2": KEYS["k2"]}, "k2"))
    client = await sdk.connect(pki, proxy.address, namespace=ENC_NS, data_converter=converter)
    queue, wid = f"codec-{uuid.uuid4().hex[:8]}", f"codec-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[ChildOrder]):
        result = await client.execute_workflow(ChildOrder.run, "both", id=wid, task_queue=queue)
    assert result == "child saw both"
    events = await direct_histories(temporal, ENC_NS, [(wid, "")])
    stored = [p for e in events for sa, p in payloads_in(e) if not sa]
    # Sealed once, by the worker's codec (k2); the proxy passed them as they were.
    assert stored and {p.metadata["encryption-key-id"] for p in stored} == {b"k2"}
    text = proxy.metrics()
    name = "temporal_auth_proxy_encryption_payloads_total"
    assert (sample(text, name, namespace=ENC_NS, outcome="already_encrypted") or 0) >= 2
    assert sample(text, name, namespace=ENC_NS, outcome="encrypted") == 0
    assert (sample(text, name, namespace=ENC_NS, outcome="decrypted") or 0) >= 2


async def test_payload_flood_is_bounded_and_a_good_client_keeps_working(
    start_proxy: ProxyFactory, pki: Pki, temporal: TemporalDevServer
) -> None:
    """Hostile: a caller allowed to write the encrypted namespace sends requests of 10,001 empty
    payloads (2 bytes each on the wire, ~5 us each to seal). Each is refused INVALID_ARGUMENT
    at the bound; a good client's calls beside it all succeed, none slower than 1 s."""
    proxy = await asyncio.to_thread(start_proxy, enc_overrides())
    flood = StartWorkflowExecutionRequest(
        namespace=ENC_NS,
        workflow_id="flood",
        workflow_type=WorkflowType(name="Nobody"),
        task_queue=TaskQueue(name="nobody"),
        input=Payloads(payloads=[Payload() for _ in range(10_001)]),
        request_id=str(uuid.uuid4()),
    ).SerializeToString()
    stop = threading.Event()
    codes: list[grpc.StatusCode] = []
    slowest: list[float] = []

    def attack() -> None:
        with mtls_channel(pki, proxy.address) as ch:
            call = ch.unary_unary(WF + "StartWorkflowExecution")
            for _ in range(15):  # bounded in count and (below) in time
                if stop.is_set():
                    return
                try:
                    call(flood, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

    def good() -> None:
        with mtls_channel(pki, proxy.address) as ch:
            call = ch.unary_unary(WF + "StartWorkflowExecution")
            for i in range(40):
                if stop.is_set():
                    return
                t0 = time.monotonic()
                call(_start_raw(ENC_NS, f"good-{i}"), timeout=10)
                slowest.append(time.monotonic() - t0)

    def run_all() -> None:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(attack) for _ in range(4)] + [pool.submit(good)]
            try:
                for f in futures:
                    f.result(timeout=40)
            finally:
                stop.set()

    await asyncio.to_thread(run_all)
    assert codes and set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, set(codes)
    assert len(slowest) == 40 and max(slowest) < 1.0, max(slowest)
    failures = "temporal_auth_proxy_encryption_failures_total"
    text = proxy.metrics()
    assert sample(text, failures, namespace=ENC_NS, reason="limit_exceeded") == len(codes)


async def test_sighup_with_cedar_reloads_policies_and_encryption(
    start_proxy: ProxyFactory, pki: Pki, tmp_path: Path
) -> None:
    """`authorizer: cedar` installs its own SIGHUP handler: it must still reload encryption."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "all.cedar").write_text('@id("all")\npermit(principal, action, resource);\n')
    cfg = enc_overrides("k1")
    cfg["authorization"] = jwt_authorization(
        pki,
        authorizer="cedar",
        cedar={"policyFiles": [str(policies / "*.cedar")], "combine": "default-and-policy"},
    )
    proxy = await asyncio.to_thread(start_proxy, cfg)
    proxy.config_path.write_text(yaml.safe_dump({**proxy.config, **enc_overrides("k2")}))
    proxy.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        events = {e.get("event") for e in proxy.events()}
        return {"encryption_reloaded", "policies_reloaded"} <= events

    wait_until(reloaded, 15, 0.1, "policies and encryption reloaded")
