"""The plans cover every payload-reachable field of every forwarded method (computed apart)."""

from __future__ import annotations

import pytest

from proxy.encryption import EncryptionPlan
from tests.encryption import naive

METHODS = naive.forwarded_methods()


def _expected() -> set[str]:
    roots = [d for m in METHODS.values() for d in (m.input_type, m.output_type)]
    return naive.reachable_fields(roots)


def _missing(covered: frozenset[str], expected: set[str]) -> list[str]:
    return sorted(expected - covered)


def test_the_table_and_the_descriptors_agree_on_the_methods(plan: EncryptionPlan) -> None:
    # Guards the coverage test against passing vacuously on an empty or short method list.
    assert len(METHODS) > 130
    assert set(METHODS) <= set(plan.methods)


def test_every_payload_reachable_field_is_covered(plan: EncryptionPlan) -> None:
    expected = _expected()
    assert len(expected) > 250  # the walk found the API, not nothing
    assert _missing(plan.covered_fields, expected) == []


def test_dropping_one_field_from_the_plan_is_caught(plan: EncryptionPlan) -> None:
    """The comparison above can fail: remove any one field and it reports exactly that one."""
    expected = _expected()
    for dropped in (
        "temporal.api.common.v1.Header.fields",
        "temporal.api.failure.v1.Failure.encoded_attributes",
        "temporal.api.protocol.v1.Message.body",
    ):
        assert _missing(plan.covered_fields - {dropped}, expected) == [dropped]


def test_search_attributes_are_never_visited(plan: EncryptionPlan) -> None:
    assert not [f for f in plan.covered_fields if f.startswith(naive.SEARCH_ATTRIBUTES + ".")]
    assert not [f for f in plan.covered_fields if f.endswith(".search_attributes")]
    assert naive.SEARCH_ATTRIBUTES not in plan.types


@pytest.mark.parametrize(
    "field",
    [
        "temporal.api.common.v1.Header.fields",  # headers: encrypted, as api-go's visitor does
        "temporal.api.common.v1.Memo.fields",
        "temporal.api.failure.v1.Failure.encoded_attributes",
        "temporal.api.failure.v1.ApplicationFailureInfo.details",
        "temporal.api.protocol.v1.Message.body",  # Any: resolved per call
        "temporal.api.update.v1.Outcome.success",
        "temporal.api.sdk.v1.UserMetadata.summary",
        "google.rpc.Status.details",
        "temporal.api.workflowservice.v1.GetWorkflowExecutionHistoryResponse.raw_history",
    ],
)
def test_spot_fields_are_covered(plan: EncryptionPlan, field: str) -> None:
    assert field in plan.covered_fields


def test_methods_without_payloads_have_no_plan(plan: EncryptionPlan) -> None:
    wf = "/temporal.api.workflowservice.v1.WorkflowService/"
    describe_ns = plan.methods[wf + "DescribeNamespace"]
    assert describe_ns.request is None
    assert describe_ns.response is None
    assert plan.methods[wf + "StartWorkflowExecution"].request is not None


def test_plan_matches_the_naive_walk_method_by_method(plan: EncryptionPlan) -> None:
    """A method's plan exists exactly when the naive walk finds a payload path."""
    wrong = []
    for name, method in METHODS.items():
        mp = plan.methods[name]
        for desc, tp in ((method.input_type, mp.request), (method.output_type, mp.response)):
            if naive.reaches(desc) != (tp is not None):
                wrong.append(f"{name} {desc.full_name}")
    assert wrong == []


def test_api_version_is_recorded(plan: EncryptionPlan) -> None:
    import temporalio

    assert plan.version.temporalio == temporalio.__version__
    assert plan.version.label().startswith(f"temporalio-{temporalio.__version__}+")
    assert len(plan.version.sha256) == 64
