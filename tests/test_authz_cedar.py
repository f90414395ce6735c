"""The Cedar authorizer: the issue's policy examples, combine modes, fail-closed, caching."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cedarpy
import pytest
from temporalio.api.common.v1 import message_pb2 as common
from temporalio.api.taskqueue.v1 import message_pb2 as taskqueue
from temporalio.api.workflowservice.v1 import request_response_pb2 as rr

from proxy.authz import DefaultAuthorizer
from proxy.authz.cedar import CedarAuthorizer, Combine
from proxy.authz.policies import PolicyStore, load_schema
from proxy.methods import HEALTH_CHECK_APIS, lookup
from proxy.model import CallTarget, Claims, Decision, PeerIdentity, Reason, Result, Role

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OP = "/temporal.api.operatorservice.v1.OperatorService/"

# The examples, for token groups and certificate OUs alike.
EXAMPLES = """\
@id("read-with-role")
permit(principal, action in Temporal::Action::"NamespaceRead", resource is Temporal::Namespace)
when { principal.hasTag(resource.name) };

@id("write-with-writer-role")
permit(principal, action in Temporal::Action::"NamespaceWrite", resource is Temporal::Namespace)
when { principal.hasTag(resource.name) && principal.getTag(resource.name).contains("writer") };

// the payments on-call group may terminate or reset Payment* workflows in payments
@id("payments-oncall-terminate-reset")
permit(
  principal,
  action in [Temporal::Action::"TerminateWorkflowExecution",
             Temporal::Action::"ResetWorkflowExecution"],
  resource == Temporal::Namespace::"payments"
) when {
  context has workflowId && context.workflowId like "Payment*" &&
  ((principal.claims.hasTag("groups") &&
    principal.claims.getTag("groups").contains("payments-oncall")) ||
   (principal has certificate &&
    principal.certificate.organizationalUnits.contains("payments-oncall")))
};

// the batch service may only start workflows on task queue batch-*
@id("batch-service-only-batch-queues")
forbid(
  principal,
  action in [Temporal::Action::"StartWorkflowExecution",
             Temporal::Action::"SignalWithStartWorkflowExecution",
             Temporal::Action::"ExecuteMultiOperation",
             Temporal::Action::"CreateSchedule",
             Temporal::Action::"UpdateSchedule"],
  resource
) when {
  principal.subject == "batch-service" ||
  (principal has certificate && principal.certificate.commonName == "batch-service")
} unless { context has taskQueue && context.taskQueue like "batch-*" };

// nobody but SRE may delete schedules
@id("only-sre-deletes-schedules")
forbid(principal, action == Temporal::Action::"DeleteSchedule", resource)
unless {
  (principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("sre")) ||
  (principal has certificate && principal.certificate.organizationalUnits.contains("sre"))
};

// interns read but never see Describe* of namespace config
@id("interns-read")
permit(principal, action in Temporal::Action::"Read", resource)
when {
  (principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("interns")) ||
  (principal has certificate && principal.certificate.organizationalUnits.contains("interns"))
};

@id("interns-never-write")
forbid(principal, action in [Temporal::Action::"Write", Temporal::Action::"Admin"], resource)
when {
  (principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("interns")) ||
  (principal has certificate && principal.certificate.organizationalUnits.contains("interns"))
};

@id("interns-no-namespace-config")
forbid(
  principal,
  action in [Temporal::Action::"DescribeNamespace",
             Temporal::Action::"OperatorService/ListSearchAttributes"],
  resource
) when {
  (principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("interns")) ||
  (principal has certificate && principal.certificate.organizationalUnits.contains("interns"))
};
"""

Identity = Callable[..., Claims]


def token_identity(
    subject: str, group: str = "", namespaces: dict[str, Role] | None = None
) -> Claims:
    return Claims.build(
        subject=subject,
        namespaces=namespaces,
        auth_type="jwt",
        token_claims={"groups": (group,)} if group else {},
    )


def cert_identity(
    subject: str, group: str = "", namespaces: dict[str, Role] | None = None
) -> Claims:
    peer = PeerIdentity(
        subject=f"CN={subject},OU={group or 'none'},O=Acme",
        common_name=subject,
        organizational_units=(group,) if group else (),
    )
    return Claims.build(
        subject=f"CN={subject},OU={group or 'none'},O=Acme",
        namespaces=namespaces,
        auth_type="cert",
        peer=peer,
    )


@pytest.fixture(scope="module")
def schema() -> cedarpy.Schema:
    return load_schema()


def _store(tmp_path: Path, schema: cedarpy.Schema, text: str = EXAMPLES) -> PolicyStore:
    (tmp_path / "examples.cedar").write_text(text, encoding="utf-8")
    return PolicyStore([str(tmp_path / "*.cedar")], schema)


def _default() -> DefaultAuthorizer:
    return DefaultAuthorizer(lookup, HEALTH_CHECK_APIS)


@pytest.fixture
def policy_only(tmp_path: Path, schema: cedarpy.Schema) -> CedarAuthorizer:
    return CedarAuthorizer(_store(tmp_path, schema), combine=Combine.POLICY_ONLY, default=None)


@pytest.fixture
def default_and_policy(tmp_path: Path, schema: cedarpy.Schema) -> CedarAuthorizer:
    return CedarAuthorizer(
        _store(tmp_path, schema), combine=Combine.DEFAULT_AND_POLICY, default=_default()
    )


def terminate(namespace: str, workflow_id: str) -> CallTarget:
    request = rr.TerminateWorkflowExecutionRequest(
        namespace=namespace, workflow_execution=common.WorkflowExecution(workflow_id=workflow_id)
    )
    return CallTarget(
        api_name=WF + "TerminateWorkflowExecution",
        namespace=namespace,
        request=request.SerializeToString(),
    )


def reset(namespace: str, workflow_id: str) -> CallTarget:
    request = rr.ResetWorkflowExecutionRequest(
        namespace=namespace, workflow_execution=common.WorkflowExecution(workflow_id=workflow_id)
    )
    return CallTarget(
        api_name=WF + "ResetWorkflowExecution",
        namespace=namespace,
        request=request.SerializeToString(),
    )


def start(namespace: str, task_queue: str) -> CallTarget:
    request = rr.StartWorkflowExecutionRequest(
        namespace=namespace,
        workflow_id="job-1",
        workflow_type=common.WorkflowType(name="Job"),
        task_queue=taskqueue.TaskQueue(name=task_queue),
    )
    return CallTarget(
        api_name=WF + "StartWorkflowExecution",
        namespace=namespace,
        request=request.SerializeToString(),
    )


def call(method: str, namespace: str = "", request: bytes = b"") -> CallTarget:
    return CallTarget(api_name=method, namespace=namespace, request=request)


def allowed_by(result: Result, policy: str) -> bool:
    return result.decision is Decision.ALLOW and policy in result.policies


def denied_by(result: Result, policy: str) -> bool:
    return (
        result.decision is Decision.DENY
        and result.reason is Reason.POLICY_DENIED
        and policy in result.policies
    )


IDENTITIES = pytest.mark.parametrize("who", [token_identity, cert_identity], ids=["token", "cert"])


@IDENTITIES
async def test_payments_oncall_may_terminate_and_reset_payment_workflows(
    policy_only: CedarAuthorizer, who: Identity
) -> None:
    oncall = who("alice", "payments-oncall")
    oncall_policy = "payments-oncall-terminate-reset"
    assert allowed_by(
        await policy_only.authorize(oncall, terminate("payments", "Payment-7")), oncall_policy
    )
    assert allowed_by(
        await policy_only.authorize(oncall, reset("payments", "PaymentRefund")), oncall_policy
    )
    # Not another workflow, not another namespace, not without a workflow id.
    for target in (
        terminate("payments", "Order-7"),
        terminate("payments", "payment-7"),
        terminate("orders", "Payment-7"),
        terminate("payments", ""),
    ):
        result = await policy_only.authorize(oncall, target)
        assert result.decision is Decision.DENY, target
        assert result.reason is Reason.POLICY_DENIED
        assert result.policies == ()  # no permit matched
    # Nobody else.
    other = who("bob", "payments-dev")
    assert not (await policy_only.authorize(other, terminate("payments", "Payment-7"))).allowed


@IDENTITIES
async def test_batch_service_may_only_start_on_batch_queues(
    policy_only: CedarAuthorizer, who: Identity
) -> None:
    batch = who("batch-service", "", {"jobs": Role.WRITER})
    assert allowed_by(
        await policy_only.authorize(batch, start("jobs", "batch-nightly")), "write-with-writer-role"
    )
    forbidden = "batch-service-only-batch-queues"
    assert denied_by(await policy_only.authorize(batch, start("jobs", "default")), forbidden)
    # Other ways to start a workflow are held to the same rule.
    multi = rr.ExecuteMultiOperationRequest(namespace="jobs").SerializeToString()
    assert denied_by(
        await policy_only.authorize(batch, call(WF + "ExecuteMultiOperation", "jobs", multi)),
        forbidden,
    )
    schedule = rr.CreateScheduleRequest(namespace="jobs", schedule_id="s")
    schedule.schedule.action.start_workflow.task_queue.name = "interactive"
    assert denied_by(
        await policy_only.authorize(
            batch, call(WF + "CreateSchedule", "jobs", schedule.SerializeToString())
        ),
        forbidden,
    )
    schedule.schedule.action.start_workflow.task_queue.name = "batch-weekly"
    assert (
        await policy_only.authorize(
            batch, call(WF + "CreateSchedule", "jobs", schedule.SerializeToString())
        )
    ).allowed
    # Another writer is not the batch service.
    writer = who("web", "", {"jobs": Role.WRITER})
    assert (await policy_only.authorize(writer, start("jobs", "default"))).allowed


@IDENTITIES
async def test_nobody_but_sre_deletes_schedules(
    policy_only: CedarAuthorizer, who: Identity
) -> None:
    delete = call(
        WF + "DeleteSchedule",
        "jobs",
        rr.DeleteScheduleRequest(namespace="jobs", schedule_id="nightly").SerializeToString(),
    )
    writer = who("web", "dev", {"jobs": Role.WRITER})
    assert denied_by(await policy_only.authorize(writer, delete), "only-sre-deletes-schedules")
    sre = who("sam", "sre", {"jobs": Role.WRITER})
    assert allowed_by(await policy_only.authorize(sre, delete), "write-with-writer-role")
    # SRE without a role in the namespace is not granted anything by the forbid.
    assert not (await policy_only.authorize(who("sam", "sre"), delete)).allowed


@IDENTITIES
async def test_interns_read_but_never_see_namespace_config(
    policy_only: CedarAuthorizer, who: Identity
) -> None:
    intern = who("ida", "interns", {"payments": Role.WRITER})
    describe = rr.DescribeWorkflowExecutionRequest(
        namespace="payments", execution=common.WorkflowExecution(workflow_id="Payment-1")
    ).SerializeToString()
    assert (
        await policy_only.authorize(
            intern, call(WF + "DescribeWorkflowExecution", "payments", describe)
        )
    ).allowed
    assert allowed_by(
        await policy_only.authorize(intern, call(WF + "ListNamespaces")), "interns-read"
    )
    assert denied_by(
        await policy_only.authorize(intern, call(WF + "DescribeNamespace", "payments")),
        "interns-no-namespace-config",
    )
    assert denied_by(
        await policy_only.authorize(intern, call(OP + "ListSearchAttributes", "payments")),
        "interns-no-namespace-config",
    )
    # A writer role does not let an intern write.
    assert denied_by(
        await policy_only.authorize(intern, start("payments", "q")), "interns-never-write"
    )
    # Others with a role do see the namespace config.
    reader = who("rita", "dev", {"payments": Role.READER})
    assert allowed_by(
        await policy_only.authorize(reader, call(WF + "DescribeNamespace", "payments")),
        "read-with-role",
    )


async def test_default_and_policy_needs_both(default_and_policy: CedarAuthorizer) -> None:
    # Cedar permits the on-call group, but Temporal's roles do not: denied by the default.
    oncall = token_identity("alice", "payments-oncall", {"payments": Role.READER})
    result = await default_and_policy.authorize(oncall, terminate("payments", "Payment-7"))
    assert (result.decision, result.reason, result.policies) == (
        Decision.DENY,
        Reason.INSUFFICIENT_ROLE,
        (),
    )
    # Temporal's roles allow, and so does Cedar.
    oncall_writer = token_identity("alice", "payments-oncall", {"payments": Role.WRITER})
    result = await default_and_policy.authorize(oncall_writer, terminate("payments", "Payment-7"))
    assert result.allowed and result.reason is Reason.ALLOWED
    assert result.policies == ("payments-oncall-terminate-reset", "write-with-writer-role")
    # Temporal's roles allow, Cedar forbids: Cedar narrows.
    intern = token_identity("ida", "interns", {"payments": Role.ADMIN})
    assert denied_by(
        await default_and_policy.authorize(intern, call(WF + "DescribeNamespace", "payments")),
        "interns-no-namespace-config",
    )


async def test_policy_only_grants_beyond_temporal_roles(policy_only: CedarAuthorizer) -> None:
    oncall = token_identity("alice", "payments-oncall")  # no Temporal role at all
    assert (await policy_only.authorize(oncall, terminate("payments", "Payment-7"))).allowed
    assert (await _default().authorize(oncall, terminate("payments", "Payment-7"))).allowed is False


@pytest.mark.parametrize("mode", [Combine.POLICY_ONLY, Combine.DEFAULT_AND_POLICY])
async def test_before_the_policies(tmp_path: Path, schema: cedarpy.Schema, mode: Combine) -> None:
    authorizer = CedarAuthorizer(
        _store(tmp_path, schema, "forbid(principal, action, resource);"),
        combine=mode,
        default=_default(),
    )
    admin = Claims.build(subject="root", system=Role.ADMIN)
    # Health checks pass without credentials, as with Temporal's default authorizer.
    assert (
        await authorizer.authorize(None, call(WF + "GetSystemInfo"))
    ).reason is Reason.HEALTH_CHECK
    assert (
        await authorizer.authorize(None, call(WF + "ListNamespaces"))
    ).reason is Reason.NO_CREDENTIALS
    assert (
        await authorizer.authorize(admin, call(WF + "NoSuchMethod"))
    ).reason is Reason.UNKNOWN_METHOD
    bad = b"\x0a\x01j\x12\x03\x0a\x01\xff"  # execution.workflow_id is not UTF-8
    result = await authorizer.authorize(admin, call(WF + "DescribeWorkflowExecution", "j", bad))
    assert result.reason is Reason.MALFORMED_REQUEST
    # Otherwise the forbid decides, even for a system admin.
    assert denied_by(
        await authorizer.authorize(admin, call(WF + "ListNamespaces")), "examples.cedar#1"
    )


def test_default_and_policy_requires_the_default(tmp_path: Path, schema: cedarpy.Schema) -> None:
    with pytest.raises(ValueError, match="default"):
        CedarAuthorizer(_store(tmp_path, schema), combine=Combine.DEFAULT_AND_POLICY, default=None)


async def test_unknown_admin_service_names_are_one_action(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    text = """
    @id("no-unknown-admin")
    forbid(principal, action == Temporal::Action::"AdminService/unknown", resource);
    @id("all")
    permit(principal, action, resource);
    """
    authorizer = CedarAuthorizer(
        _store(tmp_path, schema, text), combine=Combine.POLICY_ONLY, default=None
    )
    admin = Claims.build(subject="root", system=Role.ADMIN)
    admin_service = "/temporal.server.api.adminservice.v1.AdminService/"
    assert denied_by(
        await authorizer.authorize(admin, call(admin_service + "Invented")), "no-unknown-admin"
    )
    assert (await authorizer.authorize(admin, call(admin_service + "DescribeCluster"))).allowed


async def test_action_groups_and_resources(tmp_path: Path, schema: cedarpy.Schema) -> None:
    text = """
    @id("ns-write") permit(principal, action in Temporal::Action::"NamespaceWrite", resource);
    @id("cluster")
    permit(
      principal, action in Temporal::Action::"Cluster", resource == Temporal::Cluster::"cluster"
    );
    @id("payments-anything")
    permit(principal, action, resource in Temporal::Namespace::"payments");
    @id("system-admin")
    permit(principal, action, resource) when { principal.systemRoles.contains("admin") };
    """
    authorizer = CedarAuthorizer(
        _store(tmp_path, schema, text), combine=Combine.POLICY_ONLY, default=None
    )
    user = Claims.build(subject="u")
    assert allowed_by(await authorizer.authorize(user, start("jobs", "q")), "ns-write")
    assert not (await authorizer.authorize(user, call(WF + "DescribeNamespace", "jobs"))).allowed
    assert allowed_by(
        await authorizer.authorize(user, call(WF + "DescribeNamespace", "payments")),
        "payments-anything",
    )
    assert allowed_by(await authorizer.authorize(user, call(WF + "ListNamespaces")), "cluster")
    assert not (await authorizer.authorize(user, call(WF + "RegisterNamespace", "new"))).allowed
    root = Claims.build(subject="u", system=Role.ADMIN | Role.WRITER)
    assert allowed_by(
        await authorizer.authorize(root, call(WF + "RegisterNamespace", "new")), "system-admin"
    )


async def test_roles_under_the_empty_namespace_are_not_exposed(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    text = """
    @id("has-role")
    permit(principal, action, resource is Temporal::Namespace)
    when { principal.hasTag(resource.name) };
    """
    authorizer = CedarAuthorizer(
        _store(tmp_path, schema, text), combine=Combine.POLICY_ONLY, default=None
    )
    claims = Claims.build(subject="u", namespaces={"": Role.ADMIN, "a": Role.READER})
    task_token_call = call(WF + "RespondActivityTaskCompleted", "", b"")
    assert not (await authorizer.authorize(claims, task_token_call)).allowed
    assert (await authorizer.authorize(claims, call(WF + "DescribeNamespace", "a"))).allowed


async def test_an_erroring_forbid_fails_closed(tmp_path: Path, schema: cedarpy.Schema) -> None:
    # Cedar skips a policy whose evaluation errors; a skipped forbid must not become an allow.
    text = """
    @id("all") permit(principal, action, resource);
    @id("overflow") forbid(principal, action, resource) when { 9223372036854775807 + 1 > 0 };
    """
    authorizer = CedarAuthorizer(
        _store(tmp_path, schema, text), combine=Combine.POLICY_ONLY, default=None
    )
    result = await authorizer.authorize(Claims.build(subject="u"), call(WF + "ListNamespaces"))
    assert (result.decision, result.reason) == (Decision.DENY, Reason.AUTHORIZER_ERROR)


async def test_decisions_are_cached_per_generation(tmp_path: Path, schema: cedarpy.Schema) -> None:
    import os

    store = _store(tmp_path, schema, '@id("all") permit(principal, action, resource);')
    authorizer = CedarAuthorizer(store, combine=Combine.POLICY_ONLY, default=None)
    user = Claims.build(subject="u", token_claims={"groups": ("a",)})
    target = start("jobs", "q")
    assert (await authorizer.authorize(user, target)).allowed
    assert (await authorizer.authorize(user, target)).allowed
    assert (authorizer.stats.evaluations, authorizer.stats.decision_hits) == (1, 1)
    # An equal Claims value (another object) shares the cached decision.
    same = Claims.build(subject="u", token_claims={"groups": ("a",)})
    assert (await authorizer.authorize(same, target)).allowed
    assert authorizer.stats.decision_hits == 2
    # Different attributes are a different decision.
    assert (await authorizer.authorize(user, start("jobs", "other"))).allowed
    assert authorizer.stats.evaluations == 2
    # A reload changes the generation: the cached allow is not served any more.
    (tmp_path / "examples.cedar").write_text('@id("none") forbid(principal, action, resource);')
    os.utime(tmp_path / "examples.cedar", ns=(5, 5))
    assert store.reload().ok
    assert denied_by(await authorizer.authorize(user, target), "none")
    # Long attribute values are decided but never cached.
    long_target = start("jobs", "q" * 1000)
    await authorizer.authorize(user, long_target)
    evaluations = authorizer.stats.evaluations
    await authorizer.authorize(user, long_target)
    assert authorizer.stats.evaluations == evaluations + 1


async def test_without_cache_every_call_is_evaluated(
    tmp_path: Path, schema: cedarpy.Schema
) -> None:
    store = _store(tmp_path, schema, '@id("all") permit(principal, action, resource);')
    authorizer = CedarAuthorizer(store, combine=Combine.POLICY_ONLY, default=None, cache=False)
    user = Claims.build(subject="u")
    for _ in range(3):
        assert (await authorizer.authorize(user, start("jobs", "q"))).allowed
    assert (authorizer.stats.evaluations, authorizer.stats.decision_hits) == (3, 0)


async def test_principal_values_reach_the_engine(tmp_path: Path, schema: cedarpy.Schema) -> None:
    text = """
    @id("cert") permit(principal, action, resource) when {
      principal.authType == "cert" && principal has certificate &&
      principal.certificate.dnsNames.contains("w.example") &&
      principal.certificate.uris.contains("spiffe://acme/w") &&
      principal.certificate has spiffeId && principal.certificate.spiffeId == "spiffe://acme/w" &&
      principal.certificate.subject == "CN=w,O=Acme" && principal.certificate.commonName == "w"
    };
    @id("token") permit(principal, action, resource) when {
      principal.authType == "jwt" && !(principal has certificate) &&
      principal.claims.hasTag("email") && principal.claims.getTag("email") == ["a@acme.io"]
    };
    """
    authorizer = CedarAuthorizer(
        _store(tmp_path, schema, text), combine=Combine.POLICY_ONLY, default=None
    )
    peer = PeerIdentity(
        subject="CN=w,O=Acme",
        common_name="w",
        dns_names=("w.example",),
        uris=("spiffe://acme/w",),
        spiffe_id="spiffe://acme/w",
    )
    cert = Claims.build(subject="spiffe://acme/w", auth_type="cert", peer=peer)
    assert allowed_by(await authorizer.authorize(cert, call(WF + "ListNamespaces")), "cert")
    token = Claims.build(subject="a", token_claims={"email": ("a@acme.io",)})
    assert allowed_by(await authorizer.authorize(token, call(WF + "ListNamespaces")), "token")
    other = Claims.build(subject="a", token_claims={"email": ("b@acme.io",)})
    assert not (await authorizer.authorize(other, call(WF + "ListNamespaces"))).allowed


async def test_explain_shows_both_decisions_and_the_request(
    default_and_policy: CedarAuthorizer,
) -> None:
    oncall = token_identity("alice", "payments-oncall", {"payments": Role.READER})
    target = terminate("payments", "Payment-7")
    explained = await default_and_policy.explain(oncall, target)
    assert explained.action == "TerminateWorkflowExecution"
    assert explained.resource == 'Temporal::Namespace::"payments"'
    assert explained.context == (("workflowId", "Payment-7"),)
    # Temporal's roles deny; the policies alone would allow: explain shows both.
    assert explained.default is not None
    assert explained.default.reason is Reason.INSUFFICIENT_ROLE
    assert explained.cedar is not None and explained.cedar.allowed
    assert "payments-oncall-terminate-reset" in explained.cedar.policies
    assert explained.result.reason is Reason.INSUFFICIENT_ROLE
    assert explained.generation == 1
    cluster = await default_and_policy.explain(oncall, call(WF + "ListNamespaces"))
    assert cluster.resource == 'Temporal::Cluster::"cluster"'
    unknown = await default_and_policy.explain(oncall, call(WF + "Nope"))
    assert (unknown.action, unknown.cedar, unknown.result.reason) == (
        "",
        None,
        Reason.UNKNOWN_METHOD,
    )


def _custom_schema(tmp_path: Path, text: str) -> PolicyStore:
    schema = cedarpy.Schema.from_str(text)
    (tmp_path / "p.cedar").write_text("forbid(principal, action, resource) when { false };")
    return PolicyStore([str(tmp_path / "p.cedar")], schema)


def test_a_schema_that_cannot_hold_the_principal_fails_at_startup(tmp_path: Path) -> None:
    from proxy.authz.schema import shipped_schema
    from proxy.errors import ConfigError

    text = shipped_schema().replace("    certificate?: Certificate,\n", "")
    assert text != shipped_schema()
    store = _custom_schema(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        CedarAuthorizer(store, combine=Combine.POLICY_ONLY, default=None)
    assert info.value.path == "authorization.cedar.schemaFile"
    assert "entities" in str(info.value)


def test_a_schema_without_some_actions_fails_at_startup(tmp_path: Path) -> None:
    from proxy.authz.schema import shipped_schema
    from proxy.errors import ConfigError

    text = shipped_schema().replace('    "DeleteSchedule",\n', "")
    assert text != shipped_schema()
    with pytest.raises(ConfigError, match="DeleteSchedule"):
        CedarAuthorizer(_custom_schema(tmp_path, text), combine=Combine.POLICY_ONLY, default=None)
    # The shipped schema passes both checks.
    CedarAuthorizer(
        _custom_schema(tmp_path, shipped_schema()), combine=Combine.POLICY_ONLY, default=None
    )
