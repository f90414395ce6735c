"""DefaultAuthorizer and NoopAuthorizer against spec §4.1, with a small method table."""

from __future__ import annotations

import pytest

from proxy import methods
from proxy.authz import DefaultAuthorizer, NoopAuthorizer
from proxy.interfaces import Authorizer
from proxy.model import Access, CallTarget, Claims, Decision, MethodInfo, Reason, Role, Scope

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OS_ = "/temporal.api.operatorservice.v1.OperatorService/"
HEALTH = "/grpc.health.v1.Health/Check"
SYSTEM_INFO = WF + "GetSystemInfo"


def _row(name: str, scope: Scope, access: Access) -> MethodInfo:
    return MethodInfo(
        full_name=WF + name,
        short_name=name,
        scope=scope,
        access=access,
        namespace_field=1 if scope is Scope.NAMESPACE else None,
    )


TABLE = {
    m.full_name: m
    for m in (
        _row("NsRead", Scope.NAMESPACE, Access.READ),
        _row("NsWrite", Scope.NAMESPACE, Access.WRITE),
        _row("NsAdmin", Scope.NAMESPACE, Access.ADMIN),
        _row("ClRead", Scope.CLUSTER, Access.READ),
        _row("ClWrite", Scope.CLUSTER, Access.WRITE),
        _row("ClAdmin", Scope.CLUSTER, Access.ADMIN),
    )
}
REQUIRED = {"Read": 2, "Write": 4, "Admin": 8}


class CountingLookup:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str) -> MethodInfo | None:
        self.calls += 1
        return TABLE.get(name)


def authorizer() -> DefaultAuthorizer:
    return DefaultAuthorizer(CountingLookup(), frozenset({HEALTH, SYSTEM_INFO}))


def target(method: str, namespace: str = "default") -> CallTarget:
    return CallTarget(api_name=WF + method, namespace=namespace)


# Spec §4.1 consequence table: 0,1 nothing; 2,3 read; 4..7 read+write; 8..15 everything.
EXPECTED = {
    value: {
        "Read": value >= 2,
        "Write": value >= 4,
        "Admin": value >= 8,
    }
    for value in range(16)
}


def test_expected_table_matches_the_spec_rows() -> None:
    # Guard the generated table against itself: these rows are copied from spec §4.1.
    rows = {0: "---", 1: "---", 2: "r--", 3: "r--", 4: "rw-", 7: "rw-", 8: "rwa", 15: "rwa"}
    for value, row in rows.items():
        got = "".join(
            c if EXPECTED[value][k] else "-" for c, k in zip("rwa", REQUIRED, strict=True)
        )
        assert got == row


@pytest.mark.parametrize("value", range(16))
@pytest.mark.parametrize("access", ["Read", "Write", "Admin"])
async def test_namespace_role_numeric_table(value: int, access: str) -> None:
    claims = Claims.build(namespaces={"default": Role(value)})
    result = await authorizer().authorize(claims, target("Ns" + access))
    assert result.allowed is EXPECTED[value][access]
    assert result.reason is (Reason.ALLOWED if result.allowed else Reason.INSUFFICIENT_ROLE)


@pytest.mark.parametrize("value", range(16))
@pytest.mark.parametrize("access", ["Read", "Write", "Admin"])
async def test_system_role_numeric_table_everywhere(value: int, access: str) -> None:
    claims = Claims.build(system=Role(value))
    authz = authorizer()
    for method, ns in (("Ns" + access, "default"), ("Ns" + access, "other"), ("Cl" + access, "")):
        result = await authz.authorize(claims, target(method, ns))
        assert result.allowed is EXPECTED[value][access], (method, ns)


@pytest.mark.parametrize("access", ["Read", "Write", "Admin"])
async def test_namespace_role_never_helps_cluster_scope(access: str) -> None:
    claims = Claims.build(namespaces={"default": Role.ADMIN, "": Role.ADMIN})
    for ns in ("default", ""):
        result = await authorizer().authorize(claims, target("Cl" + access, ns))
        assert result.decision is Decision.DENY and result.reason is Reason.INSUFFICIENT_ROLE


async def test_system_and_namespace_roles_are_or_ed() -> None:
    # worker (1) from the system role + reader (2) from the namespace = 3: read only
    claims = Claims.build(system=Role.WORKER, namespaces={"default": Role.READER})
    authz = authorizer()
    assert (await authz.authorize(claims, target("NsRead"))).allowed
    assert not (await authz.authorize(claims, target("NsWrite"))).allowed
    # reader (2) | writer (4) = 6 reaches write
    claims = Claims.build(system=Role.READER, namespaces={"default": Role.WRITER})
    assert (await authz.authorize(claims, target("NsWrite"))).allowed


async def test_namespace_key_is_exact() -> None:
    claims = Claims.build(namespaces={"Default": Role.ADMIN, "default ": Role.ADMIN})
    result = await authorizer().authorize(claims, target("NsRead", "default"))
    assert result.reason is Reason.INSUFFICIENT_ROLE


@pytest.mark.parametrize("access", ["Read", "Write", "Admin"])
async def test_a_role_on_the_empty_namespace_grants_nothing(access: str) -> None:
    # Ours (issue 14): no namespace is named "", so a call without one (by id, by task token)
    # needs a system role, even when a claim mapper plugin put roles under the empty key.
    claims = Claims.build(namespaces={"": Role(15), "default": Role(15)})
    result = await authorizer().authorize(claims, target("Ns" + access, ""))
    assert result.decision is Decision.DENY and result.reason is Reason.INSUFFICIENT_ROLE
    assert (await authorizer().authorize(claims, target("Ns" + access, "default"))).allowed


@pytest.mark.parametrize("value", range(16))
async def test_an_empty_namespace_is_decided_by_the_system_role(value: int) -> None:
    claims = Claims.build(system=Role(value), namespaces={"": Role.ADMIN})
    for access in ("Read", "Write", "Admin"):
        result = await authorizer().authorize(claims, target("Ns" + access, ""))
        assert result.allowed is EXPECTED[value][access], access


@pytest.mark.parametrize(
    ("api", "field", "access"),
    [
        (OS_ + "DeleteNamespace", 2, Access.ADMIN),  # namespace_id only
        (WF + "DescribeNamespace", 2, Access.READ),  # id only
        (WF + "RespondWorkflowTaskCompleted", 1, Access.WRITE),  # task token, namespace ""
        (WF + "RespondActivityTaskCompleted", 1, Access.WRITE),
        (WF + "RecordActivityTaskHeartbeat", 1, Access.WRITE),
    ],
)
async def test_by_id_and_task_token_calls_need_a_system_role(
    api: str, field: int, access: Access
) -> None:
    authz = DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS)
    info = methods.lookup(api)
    assert info is not None and info.access is access and info.scope is Scope.NAMESPACE
    request = bytes([field << 3 | 2, 3]) + b"abc"  # the id or the task token, no namespace
    on_empty = Claims.build(namespaces={"": Role.ADMIN, "default": Role.ADMIN})
    result = await authz.authorize(on_empty, CallTarget(api_name=api, request=request))
    assert result.decision is Decision.DENY and result.reason is Reason.INSUFFICIENT_ROLE
    system = Claims.build(system=Role.ADMIN)
    assert (await authz.authorize(system, CallTarget(api_name=api, request=request))).allowed


@pytest.mark.parametrize("api", [HEALTH, SYSTEM_INFO])
async def test_health_apis_allowed_without_claims(api: str) -> None:
    for claims in (None, Claims()):
        result = await authorizer().authorize(claims, CallTarget(api_name=api))
        assert result.decision is Decision.ALLOW and result.reason is Reason.HEALTH_CHECK


async def test_no_claims_denied() -> None:
    result = await authorizer().authorize(None, target("NsRead"))
    assert result.decision is Decision.DENY and result.reason is Reason.NO_CREDENTIALS


@pytest.mark.parametrize(
    "api",
    [
        WF + "NoSuchMethod",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "",
    ],
)
async def test_unknown_method_denied_even_for_system_admin(api: str) -> None:
    claims = Claims.build(system=Role(15), namespaces={"default": Role(15)})
    result = await authorizer().authorize(claims, CallTarget(api_name=api, namespace="default"))
    assert result.decision is Decision.DENY and result.reason is Reason.UNKNOWN_METHOD


async def test_rules_are_memoized_per_method() -> None:
    lookup = CountingLookup()
    authz = DefaultAuthorizer(lookup, frozenset())
    claims = Claims.build(system=Role.ADMIN)
    for _ in range(3):
        await authz.authorize(claims, target("NsRead"))
    assert lookup.calls == 1


async def test_noop_allows_everything() -> None:
    noop = NoopAuthorizer()
    assert isinstance(noop, Authorizer) and isinstance(authorizer(), Authorizer)
    for claims in (None, Claims()):
        for api in (WF + "NoSuchMethod", "/x.Y/Z", HEALTH):
            result = await noop.authorize(claims, CallTarget(api_name=api))
            assert result.decision is Decision.ALLOW and result.reason is Reason.NOOP


# ------------------------------------------------------------- with the real method table


@pytest.mark.parametrize(
    ("api", "system", "ns_role", "allowed"),
    [
        (WF + "StartWorkflowExecution", Role.UNDEFINED, Role.WRITER, True),
        (WF + "StartWorkflowExecution", Role.UNDEFINED, Role(3), False),
        (WF + "DescribeNamespace", Role.UNDEFINED, Role.READER, True),
        (WF + "RegisterNamespace", Role.UNDEFINED, Role.ADMIN, True),
        (WF + "ListNamespaces", Role.UNDEFINED, Role.ADMIN, False),  # cluster scope
        (WF + "ListNamespaces", Role.READER, Role.UNDEFINED, True),
        (
            "/temporal.server.api.adminservice.v1.AdminService/Anything",
            Role.WRITER,
            Role(15),
            False,
        ),
        ("/temporal.server.api.adminservice.v1.AdminService/Anything", Role.ADMIN, Role(0), True),
        ("/grpc.health.v1.Health/Watch", Role.ADMIN, Role(15), False),
    ],
)
async def test_real_method_table(api: str, system: Role, ns_role: Role, allowed: bool) -> None:
    authz = DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS)
    claims = Claims.build(system=system, namespaces={"default": ns_role})
    result = await authz.authorize(claims, CallTarget(api_name=api, namespace="default"))
    assert result.allowed is allowed
    for health in (HEALTH, SYSTEM_INFO):
        assert (await authz.authorize(None, CallTarget(api_name=health))).allowed
