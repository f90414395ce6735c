"""proxy.gate: the denial status bytes and the Gate, with real parts and no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry
from temporalio.api.errordetails.v1 import PermissionDeniedFailure
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    StartWorkflowExecutionRequest,
)

from proxy import methods
from proxy.authz import DefaultAuthorizer
from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.dev.pki import generate_key, mint_token, private_key_pem
from proxy.gate import Gate, Mode
from proxy.keys.jwks import StaticKeyProvider
from proxy.metrics import ProxyMetrics
from proxy.model import (
    Access,
    AuthInfo,
    CallTarget,
    Claims,
    Decision,
    MethodInfo,
    PeerIdentity,
    Reason,
    Result,
    Role,
    Scope,
)
from proxy.wire.write import DENIED_MESSAGE, PERMISSION_DENIED_TYPE_URL, denial_status_bytes

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OP = "/temporal.api.operatorservice.v1.OperatorService/"
KID = "k1"
DECISIONS = "temporal_auth_proxy_authz_decisions_total"

_RSA = generate_key("rsa")
_RSA_PEM = private_key_pem(_RSA)
_OTHER_RSA_PEM = private_key_pem(generate_key("rsa"))


def bearer(*permissions: str, subject: str = "alice", pem: bytes = _RSA_PEM, **kw: Any) -> str:
    return "Bearer " + mint_token(pem, kid=KID, subject=subject, permissions=permissions, **kw)


def method(short: str, prefix: str = WF) -> MethodInfo:
    info = methods.lookup(prefix + short)
    assert info is not None, short
    return info


def start_request(namespace: str) -> bytes:
    return StartWorkflowExecutionRequest(namespace=namespace, workflow_id="wf").SerializeToString()


class EventLog:
    """A logger that records (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._record("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._record("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._record("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._record("error", event, **kw)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]

    def text(self) -> str:
        return repr(self.events)


class Harness:
    def __init__(
        self,
        *,
        mapper: Any = None,
        authorizer: Any = None,
        peer_always_verified: bool = False,
        mode: Mode = "enforce",
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(
            self.registry, method_names=[m.short_name for m in methods.all_methods()]
        )
        self.log = EventLog()
        self.gate = Gate(
            claim_mapper=mapper
            if mapper is not None
            else DefaultJWTClaimMapper(StaticKeyProvider({KID: _RSA.public_key()})),
            authorizer=authorizer
            if authorizer is not None
            else DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS),
            metrics=self.metrics,
            logger=self.log,
            peer_always_verified=peer_always_verified,
            mode=mode,
        )

    def decisions(self, decision: str, reason: str, auth_type: str, mode: str = "enforce") -> float:
        labels = {"decision": decision, "reason": reason, "auth_type": auth_type, "mode": mode}
        return self.registry.get_sample_value(DECISIONS, labels) or 0.0


class RaisingMapper:
    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        raise RuntimeError("mapper plugin bug")


class RaisingAuthorizer:
    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        raise RuntimeError("authorizer plugin bug")


class AllowEverything:
    """An authorizer that would allow anything; a mapper failure must still deny."""

    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        return Result(decision=Decision.ALLOW, reason=Reason.NOOP)


# --------------------------------------------------------------------------- denial bytes


def test_denial_status_is_a_google_rpc_status_with_a_permission_denied_failure() -> None:
    status = status_pb2.Status.FromString(denial_status_bytes())
    assert status.code == 7
    assert status.message == "Request unauthorized." == DENIED_MESSAGE
    assert len(status.details) == 1
    detail = status.details[0]
    assert detail.type_url == (
        "type.googleapis.com/temporal.api.errordetails.v1.PermissionDeniedFailure"
    )
    assert detail.type_url == PERMISSION_DENIED_TYPE_URL
    failure = PermissionDeniedFailure()
    assert detail.Unpack(failure)
    assert failure.reason == ""
    # Round trip: exactly the bytes protobuf itself would write.
    assert status.SerializeToString() == denial_status_bytes()


def test_denial_status_carries_a_reason_when_given() -> None:
    status = status_pb2.Status.FromString(denial_status_bytes("why" * 100))
    failure = PermissionDeniedFailure()
    assert status.details[0].Unpack(failure)
    assert failure.reason == "why" * 100
    assert status.code == 7 and status.message == DENIED_MESSAGE


# --------------------------------------------------------------------------- the gate


async def test_writer_is_allowed_to_start_in_its_namespace() -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("default"), token=bearer("default:write")
    )
    assert verdict.allowed
    assert verdict.result.reason is Reason.ALLOWED
    assert verdict.namespace == "default"
    assert verdict.claims is not None and verdict.claims.subject == "alice"
    assert h.decisions("allow", "allowed", "jwt") == 1
    assert h.decisions("deny", "insufficient_role", "jwt") == 0
    # The allow path logs nothing.
    assert h.log.events == []


async def test_reader_is_denied_a_write_with_an_authz_denied_event() -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"),
        start_request("default"),
        token=bearer("default:read", subject="bob"),
    )
    assert not verdict.allowed
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert h.decisions("deny", "insufficient_role", "jwt") == 1
    assert h.decisions("allow", "allowed", "jwt") == 0
    assert h.log.named("authz_denied") == [
        {
            "subject": "bob",
            "auth_type": "jwt",
            "method": "StartWorkflowExecution",
            "namespace": "default",
            "reason": "insufficient_role",
            "mode": "enforce",
        }
    ]


async def test_namespace_role_is_for_that_namespace_only() -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("other"), token=bearer("default:admin")
    )
    assert not verdict.allowed
    assert verdict.namespace == "other"


async def test_namespace_admin_is_denied_cluster_scope_and_system_admin_is_allowed() -> None:
    h = Harness()
    list_clusters = method("ListClusters", OP)
    denied = await h.gate.check(list_clusters, b"", token=bearer("default:admin"))
    allowed = await h.gate.check(list_clusters, b"", token=bearer("temporal-system:admin"))
    assert not denied.allowed and denied.result.reason is Reason.INSUFFICIENT_ROLE
    assert allowed.allowed


async def test_repeated_namespace_field_last_occurrence_wins() -> None:
    h = Harness()
    start = method("StartWorkflowExecution")
    token = bearer("default:write")
    denied = await h.gate.check(
        start, start_request("default") + start_request("other"), token=token
    )
    allowed = await h.gate.check(
        start, start_request("other") + start_request("default"), token=token
    )
    assert (denied.allowed, denied.namespace) == (False, "other")
    assert (allowed.allowed, allowed.namespace) == (True, "default")


async def test_no_token_and_no_certificate_is_no_credentials() -> None:
    h = Harness()
    describe = DescribeNamespaceRequest(namespace="default").SerializeToString()
    verdict = await h.gate.check(method("DescribeNamespace"), describe)
    assert not verdict.allowed
    assert verdict.claims is None
    assert verdict.result.reason is Reason.NO_CREDENTIALS
    assert h.decisions("deny", "no_credentials", "none") == 1
    (event,) = h.log.named("authz_denied")
    assert event["subject"] == "" and event["auth_type"] == "none"


async def test_no_credentials_still_passes_the_health_apis() -> None:
    h = Harness()
    verdict = await h.gate.check(method("GetSystemInfo"), b"")
    assert verdict.allowed and verdict.result.reason is Reason.HEALTH_CHECK
    assert h.decisions("allow", "health_check", "none") == 1


@pytest.mark.parametrize(
    ("always_verified", "peer"),
    [(True, None), (False, PeerIdentity(subject="CN=worker-a", common_name="worker-a"))],
    ids=["require-client-auth", "verified-peer"],
)
async def test_certificate_without_token_gives_empty_claims_labelled_none(
    always_verified: bool, peer: PeerIdentity | None
) -> None:
    h = Harness(peer_always_verified=always_verified)
    describe = DescribeNamespaceRequest(namespace="default").SerializeToString()
    verdict = await h.gate.check(method("DescribeNamespace"), describe, peer=peer)
    assert not verdict.allowed
    # Temporal's empty claims and reason; the label says no credential counted (issue 16).
    assert verdict.claims == Claims(auth_type="none")
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert h.decisions("deny", "insufficient_role", "none") == 1
    assert h.decisions("deny", "insufficient_role", "jwt") == 0
    assert h.decisions("deny", "no_credentials", "none") == 0


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (bearer("default:write", ttl_seconds=-1), Reason.TOKEN_EXPIRED),
        (bearer("default:write", pem=_OTHER_RSA_PEM), Reason.BAD_SIGNATURE),
        ("Basic abc", Reason.BAD_TOKEN_FORMAT),
        ("Bearer not.a.jwt", Reason.BAD_TOKEN_FORMAT),
    ],
    ids=["expired", "wrong-key", "scheme", "garbage"],
)
async def test_credential_failures_deny_with_claims_failed(token: str, reason: Reason) -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("default"), token=token
    )
    assert not verdict.allowed
    assert verdict.result.reason is reason
    assert verdict.claims is None
    (failed,) = h.log.named("claims_failed")
    assert failed["reason"] == reason.value
    assert failed["method"] == "StartWorkflowExecution"
    assert h.decisions("deny", reason.value, "none") == 1
    (denied,) = h.log.named("authz_denied")
    assert denied["reason"] == reason.value
    # No part of the token in any field.
    secret = token.partition(" ")[2]
    for part in [secret, *(p for p in secret.split(".") if len(p) > 3)]:
        assert part not in h.log.text()


@pytest.mark.parametrize(
    "body",
    [b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\xff\xff\xff\xff\xff\xff"],
    ids=["truncated", "invalid-utf8-namespace", "bad-tag"],
)
async def test_malformed_request_is_denied(body: bytes) -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), body, token=bearer("temporal-system:admin")
    )
    assert not verdict.allowed
    assert verdict.result.reason is Reason.MALFORMED_REQUEST
    assert h.decisions("deny", "malformed_request", "none") == 1
    assert len(h.log.named("request_malformed")) == 1


async def test_unknown_method_is_denied_even_for_a_system_admin() -> None:
    h = Harness()
    unknown = MethodInfo(
        full_name="/some.Other/Thing",
        short_name="unknown",
        scope=Scope.CLUSTER,
        access=Access.READ,
        namespace_field=None,
    )
    verdict = await h.gate.check(unknown, b"", token=bearer("temporal-system:admin"))
    assert not verdict.allowed and verdict.result.reason is Reason.UNKNOWN_METHOD


async def test_a_raising_claim_mapper_denies_and_never_allows() -> None:
    h = Harness(mapper=RaisingMapper(), authorizer=AllowEverything())
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("default"), token="Bearer x"
    )
    assert not verdict.allowed
    assert verdict.result.reason is Reason.CLAIM_MAPPER_ERROR
    assert h.decisions("deny", "claim_mapper_error", "none") == 1
    (error,) = h.log.named("authorization_error")
    assert error["reason"] == "claim_mapper_error"
    assert "mapper plugin bug" in error["error"]


async def test_a_raising_authorizer_denies() -> None:
    h = Harness(authorizer=RaisingAuthorizer())
    verdict = await h.gate.check(
        method("StartWorkflowExecution"),
        start_request("default"),
        token=bearer("temporal-system:admin"),
    )
    assert not verdict.allowed
    assert verdict.result.reason is Reason.AUTHORIZER_ERROR
    assert verdict.claims is not None  # the mapper succeeded; the authorizer failed
    assert h.decisions("deny", "authorizer_error", "jwt") == 1
    (error,) = h.log.named("authorization_error")
    assert error["reason"] == "authorizer_error"


async def test_shadow_mode_allows_but_counts_and_logs_the_deny() -> None:
    h = Harness(mode="shadow")
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("default"), token=bearer("default:read")
    )
    assert verdict.allowed
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert h.decisions("deny", "insufficient_role", "jwt", mode="shadow") == 1
    assert h.decisions("deny", "insufficient_role", "jwt", mode="enforce") == 0
    assert h.decisions("allow", "allowed", "jwt", mode="shadow") == 0
    assert h.log.named("authz_denied") == []
    (event,) = h.log.named("authz_would_deny")
    assert event["mode"] == "shadow" and event["reason"] == "insufficient_role"


async def test_shadow_mode_counts_an_allow_as_an_allow() -> None:
    h = Harness(mode="shadow")
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("default"), token=bearer("default:write")
    )
    assert verdict.allowed and verdict.result.reason is Reason.ALLOWED
    assert h.decisions("allow", "allowed", "jwt", mode="shadow") == 1
    assert h.log.events == []


async def test_authz_duration_is_observed_per_check() -> None:
    h = Harness()
    for _ in range(3):
        await h.gate.check(method("GetSystemInfo"), b"")
    assert h.registry.get_sample_value("temporal_auth_proxy_authz_duration_seconds_count") == 3


# ------------------------------------------------ issue 14: no body work when the claims decide

# Bodies the namespace reader refuses; reading any of them would log `request_malformed`.
HOSTILE_BODIES = [
    b"\x0a\x05ab",  # truncated
    b"\x0a\x02\xff\xfe",  # namespace not UTF-8
    b"\x10" + b"\xff" * 9 + b"\x02",  # 64-bit overflow (Go rejects it)
    b"\x10\x00" * 50_000 + b"\x0f",  # 100 kB of tiny fields, then a bad wire type
]


class TargetAuthorizer:
    """A plugin without the ClaimsOnlyDenial capability: it must always get the namespace."""

    def __init__(self) -> None:
        self.targets: list[CallTarget] = []

    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        self.targets.append(target)
        return Result(decision=Decision.DENY, reason=Reason.INSUFFICIENT_ROLE)


@pytest.mark.parametrize("body", HOSTILE_BODIES)
async def test_no_credentials_deny_without_reading_the_body(body: bytes) -> None:
    h = Harness()
    verdict = await h.gate.check(method("StartWorkflowExecution"), body)
    assert not verdict.allowed
    assert verdict.result.reason is Reason.NO_CREDENTIALS
    assert verdict.body_read is False and verdict.namespace == ""
    assert h.log.named("request_malformed") == []
    assert h.decisions("deny", "no_credentials", "none") == 1
    assert h.decisions("deny", "malformed_request", "none") == 0


@pytest.mark.parametrize("body", HOSTILE_BODIES)
async def test_bad_credentials_deny_without_reading_the_body(body: bytes) -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), body, token=bearer("default:write", ttl_seconds=-1)
    )
    assert verdict.result.reason is Reason.TOKEN_EXPIRED
    assert verdict.body_read is False
    assert h.log.named("request_malformed") == []


@pytest.mark.parametrize("body", HOSTILE_BODIES)
async def test_claims_without_any_role_deny_without_reading_the_body(body: bytes) -> None:
    h = Harness(peer_always_verified=True)  # a certificate, no token: empty claims
    verdict = await h.gate.check(method("StartWorkflowExecution"), body)
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert verdict.claims == Claims(auth_type="none")
    assert verdict.body_read is False
    assert h.log.named("request_malformed") == []


@pytest.mark.parametrize("body", HOSTILE_BODIES)
async def test_a_caller_with_some_role_still_gets_the_body_checked(body: bytes) -> None:
    h = Harness()
    verdict = await h.gate.check(method("StartWorkflowExecution"), body, token=bearer("other:read"))
    assert verdict.result.reason is Reason.MALFORMED_REQUEST
    assert verdict.body_read is True
    assert len(h.log.named("request_malformed")) == 1


async def test_a_denied_caller_with_roles_still_sees_the_namespace_logged() -> None:
    h = Harness()
    verdict = await h.gate.check(
        method("StartWorkflowExecution"), start_request("payments"), token=bearer("other:read")
    )
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert verdict.body_read is True and verdict.namespace == "payments"


async def test_plugins_without_the_capability_always_get_the_namespace() -> None:
    plugin = TargetAuthorizer()
    h = Harness(authorizer=plugin)
    verdict = await h.gate.check(method("StartWorkflowExecution"), start_request("payments"))
    assert verdict.body_read is True
    assert [t.namespace for t in plugin.targets] == ["payments"]


async def test_shadow_mode_reads_the_namespace_it_forwards() -> None:
    h = Harness(mode="shadow")
    verdict = await h.gate.check(method("StartWorkflowExecution"), start_request("payments"))
    assert verdict.allowed and verdict.would_deny
    assert verdict.body_read is True and verdict.namespace == "payments"
    (event,) = h.log.named("authz_would_deny")
    assert event["namespace"] == "payments" and event["reason"] == "no_credentials"


async def test_health_apis_still_validate_the_body_without_credentials() -> None:
    h = Harness()
    verdict = await h.gate.check(method("GetSystemInfo"), b"\x0f")
    assert verdict.result.reason is Reason.MALFORMED_REQUEST
    assert verdict.body_read is True


@pytest.mark.parametrize(
    "claims",
    [
        None,
        Claims.build(),
        Claims.build(namespaces={"a": Role.UNDEFINED}),
        Claims.build(system=Role.WORKER),
        Claims.build(namespaces={"a": Role.READER}),
        Claims.build(system=Role.ADMIN),
    ],
)
@pytest.mark.parametrize(
    "short",
    ["StartWorkflowExecution", "DescribeNamespace", "GetClusterInfo", "GetSystemInfo", "nope"],
)
@pytest.mark.parametrize("namespace", ["", "a", "b", "temporal-system"])
async def test_an_early_denial_is_what_authorize_says_for_every_namespace(
    claims: Claims | None, short: str, namespace: str
) -> None:
    authz = DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS)
    name = WF + short
    early = authz.deny_without_target(claims, name)
    full = await authz.authorize(claims, CallTarget(api_name=name, namespace=namespace))
    if early is not None:
        assert early.decision is Decision.DENY
        assert early == full
