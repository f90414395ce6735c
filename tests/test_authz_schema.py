"""The shipped Cedar schema: generated from the method table, valid, one action per method."""

from __future__ import annotations

import cedarpy
import pytest

from proxy.authz.schema import action_id, group_id, render, shipped_schema
from proxy.methods import ADMIN_SERVICE_PREFIX, all_methods, is_forwarded, lookup

FORWARDED = [m for m in all_methods() if is_forwarded(m.full_name)]


@pytest.fixture(scope="module")
def schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(shipped_schema())


def test_shipped_file_is_the_rendered_table() -> None:
    # Regenerate with: python -c "from proxy.authz.schema import render; print(render(), end='')"
    assert shipped_schema() == render()


def test_schema_parses(schema: cedarpy.Schema) -> None:
    assert "entity Caller" in str(schema)


def _validate(policy: str, schema: cedarpy.Schema) -> list[str]:
    return [e.error for e in cedarpy.validate_policies(policy, schema).errors]


@pytest.mark.parametrize("info", FORWARDED, ids=lambda m: m.full_name)
def test_every_forwarded_method_is_an_action_in_its_group(
    info: object, schema: cedarpy.Schema
) -> None:
    from proxy.model import MethodInfo

    assert isinstance(info, MethodInfo)
    action = action_id(info)
    assert action
    group = group_id(info)
    policy = (
        f'permit(principal, action == Temporal::Action::"{action}", resource) when '
        f'{{ Temporal::Action::"{action}" in Temporal::Action::"{group}" }};'
    )
    assert _validate(policy, schema) == []
    for name, _ in info.attributes:
        typed = (
            f'permit(principal, action == Temporal::Action::"{action}", resource) '
            f'when {{ context has {name} && context.{name} like "x*" }};'
        )
        assert _validate(typed, schema) == [], name


def test_unknown_admin_names_have_one_action(schema: cedarpy.Schema) -> None:
    info = lookup(ADMIN_SERVICE_PREFIX + "SomethingNew")
    assert info is not None
    assert action_id(info) == "AdminService/unknown"
    policy = 'forbid(principal, action == Temporal::Action::"AdminService/unknown", resource);'
    assert _validate(policy, schema) == []


def test_a_context_attribute_the_method_cannot_carry_is_a_validation_error(
    schema: cedarpy.Schema,
) -> None:
    policy = (
        'permit(principal, action == Temporal::Action::"ListNamespaces", resource) '
        'when { context.workflowId == "x" };'
    )
    assert _validate(policy, schema)
    ok = (
        'permit(principal, action == Temporal::Action::"StartWorkflowExecution", resource) '
        'when { context has workflowId && context.workflowId == "x" };'
    )
    assert _validate(ok, schema) == []
    unguarded = ok.replace("context has workflowId && ", "")
    assert _validate(unguarded, schema)  # optional attributes need `has`


def test_action_ids_are_unique_and_qualified() -> None:
    ids = [action_id(m) for m in FORWARDED]
    assert len(ids) == len(set(ids))
    assert action_id(
        lookup("/temporal.api.operatorservice.v1.OperatorService/AddSearchAttributes")
    ) == (  # type: ignore[arg-type]
        "OperatorService/AddSearchAttributes"
    )
    assert action_id(lookup(ADMIN_SERVICE_PREFIX + "AddSearchAttributes")) == (  # type: ignore[arg-type]
        "AdminService/AddSearchAttributes"
    )
    assert action_id(lookup("/grpc.health.v1.Health/Check")) == "Health/Check"  # type: ignore[arg-type]


def test_principal_and_resource_shape(schema: cedarpy.Schema) -> None:
    policy = """
    permit(principal, action in Temporal::Action::"Namespace", resource is Temporal::Namespace)
    when {
      principal.subject like "*" && principal.authType == "jwt" &&
      principal.systemRoles.contains("admin") &&
      principal.hasTag(resource.name) && principal.getTag(resource.name).contains("writer") &&
      principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("sre") &&
      principal has certificate && principal.certificate.organizationalUnits.contains("ou") &&
      principal.certificate.commonName == "cn" && principal.certificate.subject == "CN=cn" &&
      principal.certificate.dnsNames.contains("a") && principal.certificate.uris.isEmpty() &&
      principal.certificate has spiffeId && principal.certificate.spiffeId like "spiffe://*" &&
      resource in Temporal::Cluster::"cluster"
    };
    """
    assert _validate(policy, schema) == []
