"""Issue 8 end to end: explain agrees with the running proxy, shadow mode, the audit log, the
filtered ListNamespaces and the rate limits, against the real Temporal dev server."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from temporalio.api.common.v1 import WorkflowExecution, WorkflowType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    DescribeWorkflowExecutionRequest,
    GetSystemInfoRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    PollActivityTaskQueueRequest,
    StartWorkflowExecutionRequest,
    StartWorkflowExecutionResponse,
    UpdateNamespaceRequest,
)

from tests.e2e.rig import (
    PROXY_NAME,
    Pki,
    ProxyProcess,
    TemporalDevServer,
    TLSTerminator,
    base_config,
    cli,
    deep_merge,
    jwt_authorization,
    sample,
    wait_until,
)

WS = "/temporal.api.workflowservice.v1.WorkflowService/"
DECISIONS = "temporal_auth_proxy_authz_decisions_total"
RATE_LIMITED = "temporal_auth_proxy_rate_limited_total"


# --------------------------------------------------------------------------------- helpers


def channel(
    pki: Pki, address: str, cert: str = "client", pair: tuple[bytes, bytes] | None = None
) -> grpc.Channel:
    """mTLS to the proxy with the rig's `cert` or with `pair` = (certificate, key) PEM."""
    cert_pem, key_pem = pair or (pki.read(f"{cert}.pem"), pki.read(f"{cert}.key"))
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"), private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.secure_channel(
        address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", PROXY_NAME),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


@dataclass
class Outcome:
    code: grpc.StatusCode
    response: bytes = b""
    details: str = ""

    @property
    def name(self) -> str:
        return str(self.code.name)


def call(
    ch: grpc.Channel,
    method: str,
    request: bytes,
    token: str | None = None,
    timeout: float = 10,
) -> Outcome:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    try:
        response = ch.unary_unary(WS + method)(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), details=exc.details() or "")
    return Outcome(grpc.StatusCode.OK, response)


def start_request(workflow_id: str, namespace: str = "default") -> bytes:
    return StartWorkflowExecutionRequest(
        namespace=namespace,
        workflow_id=workflow_id,
        workflow_type=WorkflowType(name="RolloutNothing"),
        task_queue=TaskQueue(name="rollout-nowhere"),
        request_id=str(uuid.uuid4()),
    ).SerializeToString()


def describe_request(namespace: str = "default") -> bytes:
    return DescribeNamespaceRequest(namespace=namespace).SerializeToString()


def list_request(page_size: int = 100, token: bytes = b"") -> bytes:
    return ListNamespacesRequest(page_size=page_size, next_page_token=token).SerializeToString()


def request_for(method: str, namespace: str) -> bytes:
    if method == "DescribeNamespace":
        return describe_request(namespace)
    if method == "StartWorkflowExecution":
        return start_request(f"rollout-{uuid.uuid4().hex[:10]}", namespace)
    if method == "ListNamespaces":
        return list_request()
    if method == "UpdateNamespace":
        return UpdateNamespaceRequest(namespace=namespace).SerializeToString()
    if method == "GetSystemInfo":
        return GetSystemInfoRequest().SerializeToString()
    raise AssertionError(method)


def names(response: bytes) -> list[str]:
    return [ns.namespace_info.name for ns in ListNamespacesResponse.FromString(response).namespaces]


def explain(
    config: Path, *args: str, token: str | None = None, cert: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", "explain", "--config", str(config), *args]
    if token is not None:
        cmd += ["--token", token]
    if cert is not None:
        cmd += ["--cert", cert]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def explained(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode in (0, 1), result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if body["decision"] == "allow" else 1)
    return body


def events(proxy: ProxyProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in proxy.events() if e.get("event") == name]


def make_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    terminator: TLSTerminator,
    overrides: dict[str, Any],
) -> ProxyProcess:
    cfg = deep_merge(base_config(pki, terminator.port), overrides)
    return ProxyProcess(tmp_path_factory.mktemp("rollout"), cfg)


@pytest.fixture(scope="module")
def enforcing(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    """JWT + Temporal's default authorizer, enforce mode, no rollout options."""
    proc = make_proxy(tmp_path_factory, pki, terminator, {"authorization": jwt_authorization(pki)})
    yield proc
    proc.stop()


# ------------------------------------------------------------------- explain == the proxy


CALLS = (
    ("DescribeNamespace", "default"),
    ("StartWorkflowExecution", "default"),
    ("ListNamespaces", ""),
    ("UpdateNamespace", "default"),
    ("GetSystemInfo", ""),
)


def tokens(pki: Pki) -> dict[str, str | None]:
    return {
        "reader": pki.token("default:read", subject="explain-reader"),
        "writer": pki.token("default:write", subject="explain-writer"),
        "admin": pki.token("default:admin", subject="explain-admin"),
        "system-admin": pki.token("temporal-system:admin", subject="explain-system"),
        "expired": pki.token("default:admin", subject="explain-expired", ttl=-300),
        "garbage": "not-a-jwt",
        "none": None,
    }


def test_explain_agrees_with_the_running_proxy(enforcing: ProxyProcess, pki: Pki) -> None:
    toks = tokens(pki)
    cases = [(who, tok, m, ns) for who, tok in toks.items() for m, ns in CALLS]
    reader = toks["reader"]
    cases += [
        ("reader", reader, "DescribeNamespace", "other"),
        ("reader", reader, "UpdateNamespace", "other"),
    ]
    with ThreadPoolExecutor(4) as pool:
        explanations = list(
            pool.map(
                lambda c: explain(
                    enforcing.config_path,
                    "--method",
                    c[2],
                    "--namespace",
                    c[3],
                    "--json",
                    token=c[1],
                ),
                cases,
            )
        )
    before = len(events(enforcing, "authz_denied"))
    outcomes = []
    with channel(pki, enforcing.address) as ch:
        for _who, tok, m, ns in cases:
            outcomes.append(call(ch, m, request_for(m, ns), tok))
    table = {}
    denied_reasons = []
    for (who, _tok, m, ns), result, outcome in zip(cases, explanations, outcomes, strict=True):
        body = explained(result)
        proxy_denied = outcome.code is grpc.StatusCode.PERMISSION_DENIED
        assert (body["decision"] == "deny") == proxy_denied, (who, m, ns, body, outcome)
        if proxy_denied:
            assert outcome.details == "Request unauthorized."
            denied_reasons.append((who, m, ns, body["reason"]))
        table[who, m, ns] = body["decision"]
    # The proxy logged the real reason of every denial, in call order: explain names the same.
    wait_until(
        lambda: len(events(enforcing, "authz_denied")) - before == len(denied_reasons),
        10,
        what="the denials in the log",
    )
    logged = [e["reason"] for e in events(enforcing, "authz_denied")[before:]]
    for (who, m, ns, reason), proxy_reason in zip(denied_reasons, logged, strict=True):
        if who != "none":  # see test_explain_without_a_token_names_the_proxy_reason
            assert reason == proxy_reason, (who, m, ns)
    # The matrix means something: spot checks against Temporal's rules.
    assert table["reader", "DescribeNamespace", "default"] == "allow"
    assert table["reader", "DescribeNamespace", "other"] == "deny"
    assert table["reader", "StartWorkflowExecution", "default"] == "deny"
    assert table["writer", "StartWorkflowExecution", "default"] == "allow"
    assert table["admin", "UpdateNamespace", "default"] == "allow"
    assert table["writer", "UpdateNamespace", "default"] == "deny"
    assert table["admin", "ListNamespaces", ""] == "deny"
    assert all(table["system-admin", m, ns] == "allow" for m, ns in CALLS)
    assert all(table["expired", m, ns] == "deny" for m, ns in CALLS)
    assert all(table["garbage", m, ns] == "deny" for m, ns in CALLS)
    assert table["none", "GetSystemInfo", ""] == "allow"
    assert table["none", "DescribeNamespace", "default"] == "deny"
    assert ("expired", "DescribeNamespace", "default", "token_expired") in denied_reasons


def test_explain_with_a_certificate_agrees(enforcing: ProxyProcess, pki: Pki) -> None:
    cert = pki.files["client.pem"]
    reader = pki.token("default:read", subject="explain-cert")
    token_file = enforcing.workdir / "reader.token"
    token_file.write_text(reader)
    no_token = explained(
        explain(
            enforcing.config_path,
            "--method",
            "DescribeNamespace",
            "--namespace",
            "default",
            "--json",
            cert=cert,
        )
    )
    with_token = explained(
        explain(
            enforcing.config_path,
            "--method",
            "DescribeNamespace",
            "--namespace",
            "default",
            "--json",
            "--token-file",
            str(token_file),
            cert=cert,
        )
    )
    health = explained(
        explain(enforcing.config_path, "--method", "GetSystemInfo", "--json", cert=cert)
    )
    assert (no_token["decision"], no_token["reason"]) == ("deny", "insufficient_role")
    assert no_token["claims"]["subject"] == ""
    assert with_token["decision"] == "allow"
    assert health["decision"] == "allow"
    before = len(events(enforcing, "authz_denied"))
    with channel(pki, enforcing.address) as ch:
        assert call(ch, "DescribeNamespace", describe_request()).name == "PERMISSION_DENIED"
        assert call(ch, "DescribeNamespace", describe_request(), reader).name == "OK"
        assert call(ch, "GetSystemInfo", b"").name == "OK"
    wait_until(lambda: len(events(enforcing, "authz_denied")) > before, 10, what="the denial")
    assert events(enforcing, "authz_denied")[before]["reason"] == no_token["reason"]


CERT_RULES = [
    {"spiffeId": "spiffe://e2e.test/ns/*/sa/worker-*", "grants": ["{1}:write"]},
    {"dnsName": "*.readers.rollout.test", "grants": ["{1}:read"]},
]


def test_explain_agrees_for_certificate_identities(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    proxy = start_proxy(
        {
            "authorization": {
                "authorizer": "default",
                "claimMapper": "cert",
                "certificateRules": CERT_RULES,
            }
        }
    )
    reader = pki.ca.issue("rollout-reader", dns_names=("other.readers.rollout.test",), client=True)
    # A certificate without the clientAuth key usage: denied by both (as Go's TLS stack would).
    server_only = pki.ca.issue(
        "rollout-server-only", uris=("spiffe://e2e.test/ns/default/sa/worker-s",), server=True
    )
    certs = {
        "spiffe-writer": (pki.read("client.pem"), pki.read("client.key")),
        "dns-reader": (reader.cert_pem, reader.key_pem),
        "server-only": (server_only.cert_pem, server_only.key_pem),
    }
    paths = {}
    for who, (cert_pem, _key) in certs.items():
        paths[who] = tmp_path / f"{who}.pem"
        paths[who].write_bytes(cert_pem)
    calls = [*CALLS, ("DescribeNamespace", "other"), ("StartWorkflowExecution", "other")]
    cases = [(who, m, ns) for who in certs for m, ns in calls]
    with ThreadPoolExecutor(4) as pool:
        explanations = list(
            pool.map(
                lambda c: explain(
                    proxy.config_path,
                    "--method",
                    c[1],
                    "--namespace",
                    c[2],
                    "--json",
                    cert=str(paths[c[0]]),
                ),
                cases,
            )
        )
    table = {}
    for (who, m, ns), result in zip(cases, explanations, strict=True):
        body = explained(result)
        with channel(pki, proxy.address, pair=certs[who]) as ch:
            outcome = call(ch, m, request_for(m, ns))
        # The certificate without clientAuth is refused already in the handshake (UNAVAILABLE).
        refused = (grpc.StatusCode.PERMISSION_DENIED,) + (
            (grpc.StatusCode.UNAVAILABLE,) if who == "server-only" else ()
        )
        proxy_denied = outcome.code in refused
        assert (body["decision"] == "deny") == proxy_denied, (who, m, ns, body, outcome)
        table[who, m, ns] = body["decision"]
        if who == "spiffe-writer" and body["claims"] is not None:
            assert body["claims"]["subject"] == "spiffe://e2e.test/ns/default/sa/worker-a"
    assert table["spiffe-writer", "StartWorkflowExecution", "default"] == "allow"
    assert table["spiffe-writer", "StartWorkflowExecution", "other"] == "deny"
    assert table["spiffe-writer", "UpdateNamespace", "default"] == "deny"
    assert table["dns-reader", "DescribeNamespace", "other"] == "allow"
    assert table["dns-reader", "StartWorkflowExecution", "other"] == "deny"
    assert table["dns-reader", "DescribeNamespace", "default"] == "deny"
    assert all(table["server-only", m, ns] == "deny" for m, ns in calls)
    assert table["spiffe-writer", "GetSystemInfo", ""] == "allow"


def test_explain_without_a_token_names_the_proxy_reason(enforcing: ProxyProcess, pki: Pki) -> None:
    body = explained(
        explain(
            enforcing.config_path,
            "--method",
            "DescribeNamespace",
            "--namespace",
            "default",
            "--json",
        )
    )
    before = len(events(enforcing, "authz_denied"))
    with channel(pki, enforcing.address) as ch:
        assert call(ch, "DescribeNamespace", describe_request()).name == "PERMISSION_DENIED"
    wait_until(lambda: len(events(enforcing, "authz_denied")) > before, 10, what="the denial")
    assert body["reason"] == events(enforcing, "authz_denied")[before]["reason"]


def test_explain_errors_exit_2(enforcing: ProxyProcess, tmp_path: Path) -> None:
    unknown = explain(
        enforcing.config_path, "--method", WS + "NoSuchMethod", "--namespace", "default"
    )
    assert unknown.returncode == 2
    assert "unknown method" in unknown.stderr
    raw = yaml.safe_load(enforcing.config_path.read_text())
    raw["authorization"]["permissionsRegex"] = "(unclosed"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = explain(bad, "--method", "DescribeNamespace", "--namespace", "default")
    assert result.returncode == 2
    assert result.stdout == ""


# ----------------------------------------------------------------------------- shadow mode


def test_shadow_mode_forwards_counts_and_logs_would_be_denials(
    start_proxy: Any, pki: Pki, temporal: TemporalDevServer
) -> None:
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(pki, mode="shadow"),
            "audit": {"enabled": True, "sink": "stdout", "allowed": "none"},
        }
    )
    reader = pki.token("default:read", subject="shadow-reader")
    workflow_id = f"shadow-{uuid.uuid4().hex[:10]}"
    with channel(pki, proxy.address) as ch:
        started = call(ch, "StartWorkflowExecution", start_request(workflow_id), reader)
        anonymous = call(ch, "DescribeNamespace", describe_request())
        garbage = call(ch, "DescribeNamespace", describe_request("other"), "not-a-jwt")
        allowed = call(ch, "DescribeNamespace", describe_request(), reader)
    # Denied by policy, yet answered by the dev server.
    assert started.name == "OK", started.details
    run_id = StartWorkflowExecutionResponse.FromString(started.response).run_id
    assert run_id
    assert anonymous.name == "OK"
    assert DescribeNamespaceResponse.FromString(anonymous.response).namespace_info.name == "default"
    assert garbage.name == "OK"
    assert DescribeNamespaceResponse.FromString(garbage.response).namespace_info.name == "other"
    assert allowed.name == "OK"
    # The workflow really exists on the server (asked directly, not through the proxy).
    with grpc.insecure_channel(temporal.address) as direct:
        described = direct.unary_unary(WS + "DescribeWorkflowExecution")(
            DescribeWorkflowExecutionRequest(
                namespace="default",
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
            ).SerializeToString(),
            timeout=10,
        )
    assert described

    text = proxy.metrics()
    shadow_deny = {"decision": "deny", "mode": "shadow"}
    # The reader's token and the anonymous call (labelled `none`: no credential counted).
    assert sample(text, DECISIONS, reason="insufficient_role", auth_type="jwt", **shadow_deny) == 1
    assert sample(text, DECISIONS, reason="insufficient_role", auth_type="none", **shadow_deny) == 1
    assert sample(text, DECISIONS, reason="bad_token_format", **shadow_deny) == 1
    assert sample(text, DECISIONS, decision="allow", reason="allowed", mode="shadow") == 1
    assert sample(text, DECISIONS, mode="enforce") is None
    assert (
        sample(
            text,
            "temporal_auth_proxy_requests_total",
            method="StartWorkflowExecution",
            code="OK",
        )
        == 1
    )
    assert sample(text, "temporal_auth_proxy_requests_total", code="PERMISSION_DENIED") is None

    wait_until(lambda: len(events(proxy, "authz_would_deny")) == 3, 10, what="the log")
    would = events(proxy, "authz_would_deny")
    assert [(e["method"], e["namespace"], e["reason"]) for e in would] == [
        ("StartWorkflowExecution", "default", "insufficient_role"),
        ("DescribeNamespace", "default", "insufficient_role"),
        ("DescribeNamespace", "other", "bad_token_format"),
    ]
    assert would[0]["subject"] == "shadow-reader"
    assert all(e["mode"] == "shadow" for e in would)
    assert events(proxy, "authz_denied") == []
    # The audit sink on stdout: the would-be denials, recorded as denials that went through.
    audit = [e for e in proxy.events() if "upstream_status" in e]
    assert [(r["method"], r["decision"], r["mode"], r["upstream_status"]) for r in audit] == [
        ("StartWorkflowExecution", "deny", "shadow", "OK"),
        ("DescribeNamespace", "deny", "shadow", "OK"),
        ("DescribeNamespace", "deny", "shadow", "OK"),
    ]
    assert audit[0]["workflow_id"] == workflow_id
    assert reader.split(".")[2] not in proxy.logs()


# ------------------------------------------------------------------------------- audit log


def audit_lines(path: Path, backups: int = 0) -> list[dict[str, Any]]:
    files = [Path(f"{path}.{i}") for i in range(backups, 0, -1)] + [path]
    out = []
    for f in files:
        if f.exists():
            out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def test_audit_log_one_record_per_call_without_credentials(
    start_proxy: Any, pki: Pki, tmp_path: Path
) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir()
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(pki),
            "audit": {"enabled": True, "sink": "file", "path": str(path), "allowed": "all"},
        }
    )
    writer = pki.token("default:write", subject="audit-writer")
    reader = pki.token("default:read", subject="audit-reader")
    system = pki.token("temporal-system:admin", subject="audit-system")
    wf_allowed, wf_denied = (f"audit-{uuid.uuid4().hex[:10]}" for _ in range(2))
    t0 = time.time()
    with channel(pki, proxy.address) as ch:
        got = [
            call(ch, "StartWorkflowExecution", start_request(wf_allowed), writer),
            call(ch, "StartWorkflowExecution", start_request(wf_denied), reader),
            call(ch, "DescribeNamespace", describe_request(), reader),
            call(ch, "DescribeNamespace", describe_request()),
            call(ch, "GetSystemInfo", b""),
            call(ch, "DescribeNamespace", describe_request("no-such-namespace"), system),
        ]
    t1 = time.time()
    assert [o.name for o in got] == [
        "OK",
        "PERMISSION_DENIED",
        "OK",
        "PERMISSION_DENIED",
        "OK",
        "NOT_FOUND",
    ]
    wait_until(lambda: len(audit_lines(path)) >= 6, 10, what="the audit records")
    time.sleep(0.3)  # nothing more may arrive
    records = audit_lines(path)
    assert len(records) == 6
    fields = {
        "time",
        "subject",
        "auth_type",
        "certificate",
        "method",
        "namespace",
        "workflow_id",
        "decision",
        "reason",
        "upstream_status",
        "duration_ms",
    }
    for r in records:
        assert fields <= set(r), r
        when = datetime.datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
        assert t0 - 1 <= when <= t1 + 1
        assert r["duration_ms"] > 0
        assert r["mode"] == "enforce"
        cert = r["certificate"]
        assert "CN=worker-a" in cert["subject"]
        assert cert["spiffe_id"] == "spiffe://e2e.test/ns/default/sa/worker-a"
        assert cert["dns_names"] == ["worker-a.test"]
    summary = [
        (
            r["subject"],
            r["auth_type"],
            r["method"],
            r["namespace"],
            r["workflow_id"],
            r["decision"],
            r["reason"],
            r["upstream_status"],
        )
        for r in records
    ]
    assert summary == [
        ("audit-writer", "jwt", "StartWorkflowExecution", "default", wf_allowed, "allow",
         "allowed", "OK"),
        ("audit-reader", "jwt", "StartWorkflowExecution", "default", wf_denied, "deny",
         "insufficient_role", "PERMISSION_DENIED"),
        ("audit-reader", "jwt", "DescribeNamespace", "default", "", "allow", "allowed", "OK"),
        # No role at all: denied from the claims, the body never read (issue 14); no token:
        # labelled `none`, no credential counted (issue 16).
        ("", "none", "DescribeNamespace", "", "", "deny", "insufficient_role",
         "PERMISSION_DENIED"),
        ("", "none", "GetSystemInfo", "", "", "allow", "health_check", "OK"),
        ("audit-system", "jwt", "DescribeNamespace", "no-such-namespace", "", "allow",
         "allowed", "NOT_FOUND"),
    ]  # fmt: skip
    text = path.read_text()
    assert "Bearer" not in text
    for token in (writer, reader, system):
        for part in token.split("."):
            assert part not in text
    # The audit trail is a separate sink: the proxy log does not carry these records.
    assert not [e for e in proxy.events() if "upstream_status" in e]


def test_audit_log_writes_only_and_rotation(start_proxy: Any, pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(pki),
            "audit": {
                "enabled": True,
                "sink": "file",
                "path": str(path),
                "allowed": "writes",
                "maxBytes": 1200,
                "backups": 20,
            },
        }
    )
    writer = pki.token("default:write", subject="rot-writer")
    reader = pki.token("default:read", subject="rot-reader")
    expected = []
    with channel(pki, proxy.address) as ch:
        for i in range(4):
            assert call(ch, "DescribeNamespace", describe_request(), reader).name == "OK"
            wf = f"rot-{i}-{uuid.uuid4().hex[:8]}"
            assert call(ch, "StartWorkflowExecution", start_request(wf), writer).name == "OK"
            expected.append(("StartWorkflowExecution", wf, "allow"))
            if i % 2:
                wf = f"rot-denied-{i}"
                denied = call(ch, "StartWorkflowExecution", start_request(wf), reader)
                assert denied.name == "PERMISSION_DENIED"
                expected.append(("StartWorkflowExecution", wf, "deny"))
        assert call(ch, "DescribeNamespace", describe_request("other"), reader).name == (
            "PERMISSION_DENIED"
        )
        expected.append(("DescribeNamespace", "", "deny"))
        assert call(ch, "GetSystemInfo", b"").name == "OK"  # an allowed read: skipped
    wait_until(lambda: len(audit_lines(path, 20)) >= len(expected), 10, what="audit records")
    time.sleep(0.3)
    records = audit_lines(path, 20)
    assert [(r["method"], r["workflow_id"], r["decision"]) for r in records] == expected
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.jsonl."))
    assert len(backups) >= 2, backups
    for f in [path, *(tmp_path / b for b in backups)]:
        assert f.stat().st_size <= 1200


# ---------------------------------------------------------------- filtered ListNamespaces


def test_filtered_list_namespaces_against_the_dev_server(
    start_proxy: Any, pki: Pki, temporal: TemporalDevServer, enforcing: ProxyProcess
) -> None:
    proxy = start_proxy({"authorization": jwt_authorization(pki, filterListNamespaces=True)})
    reader = pki.token("default:read", subject="list-reader")
    with grpc.insecure_channel(temporal.address) as direct:
        everything = direct.unary_unary(WS + "ListNamespaces")(list_request(), timeout=10)
    all_names = set(names(everything))
    assert {"default", "other", "temporal-system"} <= all_names
    direct_default = next(
        ns
        for ns in ListNamespacesResponse.FromString(everything).namespaces
        if ns.namespace_info.name == "default"
    )

    with channel(pki, proxy.address) as ch:
        only_default = call(ch, "ListNamespaces", list_request(), reader)
        assert only_default.name == "OK", only_default.details
        assert names(only_default.response) == ["default"]
        # The kept entry is the server's own, unchanged.
        assert ListNamespacesResponse.FromString(only_default.response).namespaces[0] == (
            direct_default
        )
        two = call(ch, "ListNamespaces", list_request(), pki.token("default:read", "other:write"))
        assert sorted(names(two.response)) == ["default", "other"]
        system_reader = call(
            ch, "ListNamespaces", list_request(), pki.token("temporal-system:read")
        )
        assert set(names(system_reader.response)) == all_names
        worker_only = call(ch, "ListNamespaces", list_request(), pki.token("other:worker"))
        assert worker_only.name == "PERMISSION_DENIED"
        assert call(ch, "ListNamespaces", list_request()).name == "PERMISSION_DENIED"
        # Paging: the proxy pages upstream itself; its token never holds a hidden id.
        seen, pages, token = [], 0, b""
        while True:
            page = call(ch, "ListNamespaces", list_request(1, token), reader)
            assert page.name == "OK", page.details
            parsed = ListNamespacesResponse.FromString(page.response)
            seen += [ns.namespace_info.name for ns in parsed.namespaces]
            pages += 1
            token = parsed.next_page_token
            if not token or pages > 20:
                break
        assert seen == ["default"]
        assert pages == 1  # one readable namespace: one page, no token
    # Without the option a namespace reader may not list at all (Temporal's rule).
    with channel(pki, enforcing.address) as ch:
        assert call(ch, "ListNamespaces", list_request(), reader).name == "PERMISSION_DENIED"
    # The real CLI, with namespace-scoped credentials.
    listed = cli(pki, proxy.address, "operator", "namespace", "list", "-o", "json", token=reader)
    assert listed.returncode == 0, listed.stderr
    assert "default" in listed.stdout
    assert '"other"' not in listed.stdout and "temporal-system" not in listed.stdout
    admin = cli(
        pki,
        proxy.address,
        "operator",
        "namespace",
        "list",
        "-o",
        "json",
        token=pki.token("temporal-system:read"),
    )
    assert admin.returncode == 0, admin.stderr
    assert '"other"' in admin.stdout and "temporal-system" in admin.stdout


# ----------------------------------------------------------------------------- rate limits


def test_rate_limits(start_proxy: Any, pki: Pki) -> None:
    proxy = start_proxy(
        {
            "authorization": jwt_authorization(pki),
            "rateLimits": {
                "enabled": True,
                "perSubject": {"rate": 0.01, "burst": 3},
                "perNamespace": {"rate": 0.01, "burst": 8},
            },
        }
    )
    a = pki.token("default:write", "other:write", subject="rl-a")
    b = pki.token("default:write", subject="rl-b")
    with channel(pki, proxy.address) as ch:
        assert [call(ch, "DescribeNamespace", describe_request(), a).name for _ in range(3)] == [
            "OK"
        ] * 3
        limited = call(ch, "DescribeNamespace", describe_request(), a)
        assert limited.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limited.details == "temporal-auth-proxy: rate limit exceeded (subject)"
        # Another subject is unaffected.
        assert [call(ch, "DescribeNamespace", describe_request(), b).name for _ in range(3)] == [
            "OK"
        ] * 3
        # Long polls are exempt by default: the exhausted subject still polls (short deadline).
        poll = PollActivityTaskQueueRequest(
            namespace="default", task_queue=TaskQueue(name="rollout-rl-poll"), identity="rl"
        ).SerializeToString()
        polled = call(ch, "PollActivityTaskQueue", poll, a, timeout=2)
        assert polled.code not in (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), polled
        # A denied call is refused as a denial, not counted against the limits.
        assert call(ch, "DescribeNamespace", describe_request(), None).name == "PERMISSION_DENIED"
        # The namespace bucket is shared: 8 calls to `other` from three subjects, then none.
        others = [pki.token("other:read", subject=f"rl-ns-{i}") for i in range(3)]
        results = [
            call(ch, "DescribeNamespace", describe_request("other"), tok).name
            for tok in (others[0],) * 3 + (others[1],) * 3 + (others[2],) * 2
        ]
        assert results == ["OK"] * 8
        by_ns = call(ch, "DescribeNamespace", describe_request("other"), others[2])
        assert by_ns.details == "temporal-auth-proxy: rate limit exceeded (namespace)"
        assert call(ch, "DescribeNamespace", describe_request(), others[2]).name == (
            "PERMISSION_DENIED"  # no role in default: the policy still applies first
        )
    text = proxy.metrics()
    assert sample(text, RATE_LIMITED, scope="subject") == 1
    assert sample(text, RATE_LIMITED, scope="namespace") == 1
    assert (
        sample(
            text,
            "temporal_auth_proxy_requests_total",
            method="DescribeNamespace",
            code="RESOURCE_EXHAUSTED",
        )
        == 2
    )


def test_rate_limits_per_certificate_subject(start_proxy: Any, pki: Pki) -> None:
    proxy = start_proxy(
        {"rateLimits": {"enabled": True, "perSubject": {"rate": 0.01, "burst": 2}}}
    )  # noop claim mapper and authorizer: the certificate is the only identity
    other = pki.ca.issue("worker-b", dns_names=("worker-b.test",), client=True)
    with channel(pki, proxy.address) as a:
        assert [call(a, "DescribeNamespace", describe_request()).name for _ in range(3)] == [
            "OK",
            "OK",
            "RESOURCE_EXHAUSTED",
        ]
    with channel(pki, proxy.address, pair=(other.cert_pem, other.key_pem)) as b:
        assert call(b, "DescribeNamespace", describe_request()).name == "OK"
