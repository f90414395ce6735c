"""Issue 18, end to end: Cedar policies in front of the real dev server and the real SDK.

The issue's examples, with namespace `other` (the dev server's second namespace) playing
`payments`: the payments on-call group may terminate or reset `Payment*` workflows there (nobody
else may terminate or reset there); the batch service may only start workflows on task queues
`batch-*`; nobody but SRE may delete schedules; interns never write and never see the namespace's
config (DescribeNamespace, ListSearchAttributes). Temporal's roles still decide first
(`combine: default-and-policy`), so every caller below holds the role the call needs and only the
policies can refuse it. The same set is checked for signed tokens (groups from a token claim) and
for certificate identities (OU / CN of the client certificate, `claimMapper: cert`). Reload: a
policy file edit is picked up by polling, a bad edit keeps the old set and is counted, SIGHUP
reloads. Shadow mode forwards what a new policy would deny and reports it with the policy id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import (
    DeleteScheduleRequest,
    DescribeNamespaceRequest,
    ResetWorkflowExecutionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from tests.e2e import sdk
from tests.e2e.rig import Pki, ProxyProcess, jwt_authorization, sample, wait_until

NS = "other"  # plays `payments`
DENIED = RPCStatusCode.PERMISSION_DENIED
POLICY_DECISIONS = "temporal_auth_proxy_policy_decisions_total"
RELOADS = "temporal_auth_proxy_policy_reload_total"


def _member(group: str) -> str:
    """A token's `groups` claim, or the certificate's OU: the same people either way."""
    return (
        f'((principal.claims.hasTag("groups") && '
        f'principal.claims.getTag("groups").contains("{group}")) || '
        f"(principal has certificate && "
        f'principal.certificate.organizationalUnits.contains("{group}")))'
    )


POLICIES = f"""\
// Temporal's roles decide everything the policies below do not forbid.
@id("roles-decide")
permit(principal, action, resource);

@id("payments-terminate-reset-oncall-only")
forbid(
  principal,
  action in [Temporal::Action::"TerminateWorkflowExecution",
             Temporal::Action::"ResetWorkflowExecution"],
  resource == Temporal::Namespace::"{NS}"
) unless {{
  context has workflowId && context.workflowId like "Payment*" && {_member("payments-oncall")}
}};

@id("batch-service-only-batch-queues")
forbid(
  principal,
  action in [Temporal::Action::"StartWorkflowExecution",
             Temporal::Action::"SignalWithStartWorkflowExecution",
             Temporal::Action::"ExecuteMultiOperation"],
  resource
) when {{
  principal.subject == "batch-service" ||
  (principal has certificate && principal.certificate.commonName == "batch-service")
}} unless {{ context has taskQueue && context.taskQueue like "batch-*" }};

@id("only-sre-deletes-schedules")
forbid(principal, action == Temporal::Action::"DeleteSchedule", resource)
unless {{ {_member("sre")} }};

@id("interns-never-write")
forbid(principal, action in [Temporal::Action::"Write", Temporal::Action::"Admin"], resource)
when {{ {_member("interns")} }};

@id("interns-no-namespace-config")
forbid(
  principal,
  action in [Temporal::Action::"DescribeNamespace",
             Temporal::Action::"OperatorService/ListSearchAttributes"],
  resource
) when {{ {_member("interns")} }};
"""

CERT_RULES = [
    # Every test certificate below is a writer in NS; the policies narrow that.
    {"commonName": "cedar-*", "grants": [f"{NS}:write"]},
    {"commonName": "batch-service", "grants": [f"{NS}:write"]},
]


def write_policies(tmp_path: Path, text: str = POLICIES, name: str = "main.cedar") -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def cedar_section(tmp_path: Path, **over: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "policyFiles": [str(tmp_path / "policies" / "*.cedar")],
        "combine": "default-and-policy",
        "tokenClaims": ["groups"],
    }
    section.update(over)
    return section


async def code(call: Awaitable[Any]) -> RPCStatusCode | None:
    """None when the call succeeded, else its status code."""
    try:
        await call
    except RPCError as exc:
        return exc.status
    return None


async def start(client: Client, workflow_id: str, task_queue: str = "nowhere") -> Any:
    return await client.start_workflow(
        "Nothing",
        id=workflow_id,
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=5),
    )


def reset_request(workflow_id: str) -> ResetWorkflowExecutionRequest:
    return ResetWorkflowExecutionRequest(
        namespace=NS,
        workflow_execution=WorkflowExecution(workflow_id=workflow_id),
        reason="e2e",
        workflow_task_finish_event_id=3,
        request_id=str(uuid.uuid4()),
    )


def denials(proxy: ProxyProcess, event: str = "authz_denied") -> list[dict[str, Any]]:
    return [e for e in proxy.events() if e.get("event") == event]


async def check_policy_set(pki: Pki, proxy: ProxyProcess, identity: dict[str, Any]) -> None:
    """The examples, for callers given as {role: connect kwargs} (tokens or certificates)."""

    async def client(who: str) -> Client:
        return await sdk.connect(pki, proxy.address, namespace=NS, **identity[who])

    writer, oncall = await client("writer"), await client("oncall")
    batch, sre, intern = await client("batch"), await client("sre"), await client("intern")
    suffix = uuid.uuid4().hex[:8]

    # payments on-call: terminate / reset Payment* only; nobody else terminates there.
    for wf_id in (f"Payment-{suffix}", f"Order-{suffix}", f"Payment-{suffix}-b"):
        await start(writer, wf_id)
    assert await code(writer.get_workflow_handle(f"Payment-{suffix}").terminate()) == DENIED
    assert await code(oncall.get_workflow_handle(f"Order-{suffix}").terminate()) == DENIED
    assert await code(oncall.get_workflow_handle(f"Payment-{suffix}").terminate()) is None
    # Reset reaches the server (which refuses this history), the writer's does not.
    reset = oncall.workflow_service.reset_workflow_execution
    assert await code(reset(reset_request(f"Payment-{suffix}-b"))) not in (None, DENIED)
    reset = writer.workflow_service.reset_workflow_execution
    assert await code(reset(reset_request(f"Payment-{suffix}-b"))) == DENIED

    # batch service: starts on batch-* queues only; others start anywhere.
    assert await code(start(batch, f"nightly-{suffix}", "batch-nightly")) is None
    assert await code(start(batch, f"adhoc-{suffix}", "orders")) == DENIED
    assert await code(start(writer, f"adhoc-{suffix}", "orders")) is None

    # schedules: only SRE deletes (the SRE's call reaches the server: no such schedule).
    delete = DeleteScheduleRequest(namespace=NS, schedule_id=f"sched-{suffix}")
    assert await code(writer.workflow_service.delete_schedule(delete)) == DENIED
    assert await code(sre.workflow_service.delete_schedule(delete)) == RPCStatusCode.NOT_FOUND

    # interns: read, never write, never the namespace's config.
    assert await code(intern.count_workflows()) is None
    assert await code(start(intern, f"intern-{suffix}")) == DENIED
    describe = intern.workflow_service.describe_namespace
    assert await code(describe(DescribeNamespaceRequest(namespace=NS))) == DENIED
    attrs = intern.operator_service.list_search_attributes
    assert await code(attrs(ListSearchAttributesRequest(namespace=NS))) == DENIED
    assert (
        await code(
            writer.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=NS))
        )
        is None
    )

    # Each denial names the deciding policy, in the log and in the metric.
    by_policy = {tuple(e.get("policies", ())) for e in denials(proxy)}
    for pid in (
        "payments-terminate-reset-oncall-only",
        "batch-service-only-batch-queues",
        "only-sre-deletes-schedules",
        "interns-never-write",
        "interns-no-namespace-config",
    ):
        assert (pid,) in by_policy, (pid, by_policy)
        assert (sample(proxy.metrics(), POLICY_DECISIONS, decision="deny", policy=pid) or 0) >= 1
    assert all(e["reason"] == "policy_denied" for e in denials(proxy))
    assert (
        sample(proxy.metrics(), POLICY_DECISIONS, decision="allow", policy="roles-decide") or 0
    ) >= 1


async def test_policies_allow_and_deny_as_written_for_tokens(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    write_policies(tmp_path)
    proxy = start_proxy(
        {"authorization": jwt_authorization(pki, authorizer="cedar", cedar=cedar_section(tmp_path))}
    )

    def token(subject: str, *groups: str, role: str = "write") -> dict[str, Any]:
        extra = {"groups": list(groups)} if groups else None
        return {"token": pki.token(f"{NS}:{role}", subject=subject, extra_claims=extra)}

    await check_policy_set(
        pki,
        proxy,
        {
            "writer": token("dev-1"),
            "oncall": token("oncall-1", "payments-oncall"),
            "batch": token("batch-service"),
            "sre": token("sre-1", "sre"),
            "intern": token("intern-1", "interns"),
        },
    )


def _cert(pki: Pki, name: str, *ous: str) -> str:
    if f"{name}.pem" not in pki.files:
        cert = pki.ca.issue(name, client=True, organizational_units=ous)
        cert_path, key_path = cert.write(pki.dir, name)
        pki.files[f"{name}.pem"] = str(cert_path)
        pki.files[f"{name}.key"] = str(key_path)
    return name


async def test_policies_allow_and_deny_as_written_for_certificates(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    write_policies(tmp_path)
    proxy = start_proxy(
        {
            "authorization": {
                "authorizer": "cedar",
                "claimMapper": "cert",
                "certificateRules": CERT_RULES,
                "cedar": cedar_section(tmp_path, tokenClaims=[]),
            }
        }
    )
    await check_policy_set(
        pki,
        proxy,
        {
            "writer": {"cert": _cert(pki, "cedar-dev", "developers")},
            "oncall": {"cert": _cert(pki, "cedar-oncall", "payments-oncall")},
            "batch": {"cert": _cert(pki, "batch-service")},
            "sre": {"cert": _cert(pki, "cedar-sre", "sre")},
            "intern": {"cert": _cert(pki, "cedar-intern", "interns")},
        },
    )


BASELINE = '@id("roles-decide")\npermit(principal, action, resource);\n'
NO_SCHEDULE_DELETES = (
    '@id("no-schedule-deletes")\n'
    'forbid(principal, action == Temporal::Action::"DeleteSchedule", resource);\n'
)


async def test_policy_edits_are_picked_up_and_a_bad_edit_keeps_the_old_set(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    path = write_policies(tmp_path, BASELINE)
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(
                pki, authorizer="cedar", cedar=cedar_section(tmp_path, reloadInterval="200ms")
            )
        }
    )
    client = await sdk.connect(pki, proxy.address, namespace=NS, token=pki.token(f"{NS}:write"))
    delete = DeleteScheduleRequest(namespace=NS, schedule_id="no-such-schedule")

    async def delete_code() -> RPCStatusCode | None:
        return await code(client.workflow_service.delete_schedule(delete))

    assert await delete_code() == RPCStatusCode.NOT_FOUND  # forwarded

    # A good edit: polled, validated, swapped in.
    path.write_text(BASELINE + NO_SCHEDULE_DELETES)
    deadline = time.monotonic() + 15
    while await delete_code() != DENIED:
        assert time.monotonic() < deadline, "the edit was not picked up"
        await asyncio.sleep(0.1)
    assert sample(proxy.metrics(), RELOADS, result="success") == 1
    assert sample(proxy.metrics(), "temporal_auth_proxy_policies") == 2
    assert any(e["event"] == "policies_reloaded" for e in proxy.events())

    # A bad edit (line 4 does not parse): the old set keeps serving, the failure is counted.
    path.write_text(BASELINE + NO_SCHEDULE_DELETES + '@id("broken")\npermit(principal, action;\n')
    wait_until(
        lambda: sample(proxy.metrics(), RELOADS, result="failure") == 1, 15, 0.1, "the failure"
    )
    failed = [e for e in proxy.events() if e["event"] == "policies_reload_failed"]
    assert failed[-1]["file"] == str(path)
    assert failed[-1]["line"] == 5
    assert failed[-1]["policy_id"] == "broken"
    assert await delete_code() == DENIED  # the old set, with its forbid
    assert await code(client.count_workflows()) is None
    assert sample(proxy.metrics(), "temporal_auth_proxy_policies") == 2

    # SIGHUP reloads at once (the files are unchanged: the poll alone would not).
    path.write_text(BASELINE)
    wait_until(lambda: sample(proxy.metrics(), RELOADS, result="success") == 2, 15, 0.1, "the fix")
    assert await delete_code() == RPCStatusCode.NOT_FOUND
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: sample(proxy.metrics(), RELOADS, result="success") == 3, 15, 0.1, "SIGHUP")


async def test_shadow_mode_reports_what_a_new_policy_would_deny(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    write_policies(tmp_path, BASELINE + NO_SCHEDULE_DELETES)
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(
                pki, authorizer="cedar", mode="shadow", cedar=cedar_section(tmp_path)
            )
        }
    )
    client = await sdk.connect(pki, proxy.address, namespace=NS, token=pki.token(f"{NS}:write"))
    delete = DeleteScheduleRequest(namespace=NS, schedule_id="shadowed")
    # Forwarded (the server answers NOT_FOUND), and reported with the policy that would deny.
    assert await code(client.workflow_service.delete_schedule(delete)) == RPCStatusCode.NOT_FOUND
    would = denials(proxy, "authz_would_deny")
    assert [(e["method"], e["reason"], e["policies"]) for e in would] == [
        ("DeleteSchedule", "policy_denied", ["no-schedule-deletes"])
    ]
    metrics = proxy.metrics()
    shadow = sample(
        metrics,
        "temporal_auth_proxy_authz_decisions_total",
        decision="deny",
        reason="policy_denied",
        mode="shadow",
    )
    assert shadow == 1
    assert sample(metrics, POLICY_DECISIONS, decision="deny", policy="no-schedule-deletes") == 1
    assert await code(client.count_workflows()) is None
    assert len(denials(proxy, "authz_would_deny")) == 1


def codec_post(proxy: ProxyProcess, path: str, token: str) -> int:
    payload = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}, "data": ""}
    req = urllib.request.Request(
        f"{proxy.admin_url}{path}",
        data=json.dumps({"payloads": [payload]}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def test_codec_server_decisions_go_through_the_policies(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    write_policies(
        tmp_path,
        BASELINE
        + '@id("decode-support-only")\n'
        + 'forbid(principal, action in [Temporal::Action::"Codec/Decode"], resource)\n'
        + 'unless { principal.claims.hasTag("groups") && '
        + 'principal.claims.getTag("groups").contains("support") };\n',
    )
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(
                pki, authorizer="cedar", cedar=cedar_section(tmp_path)
            ),
            "codec": {
                "enabled": True,
                "keys": {"k": base64.b64encode(bytes(range(32))).decode()},
                "encryptKeyId": "k",
            },
        }
    )
    reader = pki.token(f"{NS}:read", subject="reader")
    support = pki.token(f"{NS}:read", subject="helper", extra_claims={"groups": ["support"]})
    assert codec_post(proxy, f"/{NS}/decode", reader) == 403
    assert codec_post(proxy, f"/{NS}/decode", support) == 200
    assert codec_post(proxy, f"/{NS}/encode", support) == 403  # Temporal's roles: writer
    [denied] = [
        e
        for e in proxy.events()
        if e.get("event") == "codec_denied" and e.get("operation") == "decode"
    ]
    assert denied["policies"] == ["decode-support-only"]
    assert denied["subject"] == "reader"
    metrics = proxy.metrics()
    assert sample(metrics, POLICY_DECISIONS, decision="deny", policy="decode-support-only") == 1
