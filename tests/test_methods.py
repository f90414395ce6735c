"""The method table against the installed Temporal API descriptors, and lookup semantics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from temporalio.api.operatorservice.v1 import service_pb2 as operator_service_pb2
from temporalio.api.workflowservice.v1 import service_pb2 as workflow_service_pb2

from proxy import methods
from proxy.methods import (
    HEALTH_CHECK_APIS,
    REQUEST_ATTRIBUTES,
    UNKNOWN_LABEL,
    all_methods,
    is_forwarded,
    lookup,
    metric_label,
)
from proxy.model import Access, Scope

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OP = "/temporal.api.operatorservice.v1.OperatorService/"
ADMIN = "/temporal.server.api.adminservice.v1.AdminService/"
NEXUS = "/temporal.api.nexusservice.v1.NexusService/"

SERVICES: tuple[ServiceDescriptor, ...] = (
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"],
)


def _descriptor_methods() -> Iterator[tuple[str, MethodDescriptor]]:
    for service in SERVICES:
        for method in service.methods:
            yield f"/{service.full_name}/{method.name}", method


DESCRIPTOR_METHODS = dict(_descriptor_methods())


def test_descriptors_are_loaded() -> None:
    # Guards the tests below against passing vacuously on an empty descriptor set.
    assert len(DESCRIPTOR_METHODS) > 100
    assert WF + "StartWorkflowExecution" in DESCRIPTOR_METHODS


def test_every_api_method_is_in_the_table() -> None:
    missing = sorted(name for name in DESCRIPTOR_METHODS if lookup(name) is None)
    assert missing == [], f"methods missing from proxy/methods.py: {missing}"


@pytest.mark.parametrize("full_name", sorted(DESCRIPTOR_METHODS))
def test_namespace_field_matches_the_request_message(full_name: str) -> None:
    method = DESCRIPTOR_METHODS[full_name]
    info = lookup(full_name)
    assert info is not None
    assert info.full_name == full_name
    field = method.input_type.fields_by_name.get("namespace")
    if info.scope is Scope.NAMESPACE:
        assert field is not None, f"{method.input_type.full_name} has no namespace field"
        assert field.type == FieldDescriptor.TYPE_STRING
        assert not field.message_type
        assert not field.is_repeated
        assert info.namespace_field == field.number
    else:
        assert info.scope is Scope.CLUSTER
        assert field is None, f"cluster-scope {full_name} has a namespace field"
        assert info.namespace_field is None


@pytest.mark.parametrize("full_name", sorted(DESCRIPTOR_METHODS))
def test_api_methods_are_unary(full_name: str) -> None:
    # The proxy only carries unary calls; a streaming RPC here would need a new forwarder.
    method = DESCRIPTOR_METHODS[full_name]
    assert not method.client_streaming
    assert not method.server_streaming


def test_polling_flag_marks_exactly_the_long_poll_methods() -> None:
    polling = {m.short_name for m in all_methods() if m.polling}
    poll_named = {
        m.short_name
        for m in all_methods()
        if m.full_name.startswith(WF) and m.short_name.startswith("Poll")
    }
    assert polling == poll_named
    assert "PollWorkflowExecutionTimeSkipping" in polling
    # "capable" methods only long-poll on request: not flagged.
    assert lookup(WF + "GetWorkflowExecutionHistory").polling is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "scope", "access", "field"),
    [
        (WF + "StartWorkflowExecution", Scope.NAMESPACE, Access.WRITE, 1),
        (WF + "DescribeNamespace", Scope.NAMESPACE, Access.READ, 1),
        (WF + "RegisterNamespace", Scope.NAMESPACE, Access.ADMIN, 1),
        (WF + "RespondActivityTaskCompleted", Scope.NAMESPACE, Access.WRITE, 4),
        (WF + "RespondQueryTaskCompleted", Scope.NAMESPACE, Access.WRITE, 6),
        (WF + "RespondWorkflowTaskFailed", Scope.NAMESPACE, Access.WRITE, 6),
        (WF + "RespondWorkflowTaskCompleted", Scope.NAMESPACE, Access.WRITE, 9),
        (WF + "PollActivityTaskQueue", Scope.NAMESPACE, Access.WRITE, 1),
        (WF + "PollWorkflowExecutionUpdate", Scope.NAMESPACE, Access.READ, 1),
        (WF + "ListNamespaces", Scope.CLUSTER, Access.READ, None),
        (WF + "GetSystemInfo", Scope.CLUSTER, Access.READ, None),
        (OP + "AddSearchAttributes", Scope.NAMESPACE, Access.ADMIN, 2),
        (OP + "ListSearchAttributes", Scope.NAMESPACE, Access.READ, 1),
        (OP + "ListClusters", Scope.CLUSTER, Access.ADMIN, None),
        (OP + "CreateNexusEndpoint", Scope.CLUSTER, Access.ADMIN, None),
    ],
)
def test_spot_rows(name: str, scope: Scope, access: Access, field: int | None) -> None:
    info = lookup(name)
    assert info is not None
    assert (info.scope, info.access, info.namespace_field) == (scope, access, field)


@pytest.mark.parametrize(
    "suffix", ["DescribeCluster", "StreamWorkflowReplicationMessages", "NoSuchMethod", "", "a/b"]
)
def test_any_admin_service_name_is_cluster_admin(suffix: str) -> None:
    info = lookup(ADMIN + suffix)
    assert info is not None
    assert info.scope is Scope.CLUSTER
    assert info.access is Access.ADMIN
    assert info.namespace_field is None


def test_admin_metric_label_is_closed() -> None:
    assert lookup(ADMIN + "DescribeCluster").short_name == "DescribeCluster"  # type: ignore[union-attr]
    # Invented names must not become metric label values.
    assert lookup(ADMIN + "Made-Up-123").short_name == UNKNOWN_LABEL  # type: ignore[union-attr]
    assert metric_label(ADMIN + "Made-Up-123") == UNKNOWN_LABEL


def test_health_check() -> None:
    info = lookup("/grpc.health.v1.Health/Check")
    assert info is not None
    assert (info.scope, info.access, info.namespace_field) == (Scope.CLUSTER, Access.READ, None)
    assert frozenset({"/grpc.health.v1.Health/Check", WF + "GetSystemInfo"}) == HEALTH_CHECK_APIS


@pytest.mark.parametrize(
    "name",
    [
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        # case-sensitivity
        "/temporal.api.workflowservice.v1.workflowservice/StartWorkflowExecution",
        WF + "startWorkflowExecution",
        WF + "STARTWORKFLOWEXECUTION",
        "/Temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution",
        "/temporal.server.api.adminservice.v1.adminservice/DescribeCluster",
        "/grpc.health.v1.Health/check",
        # trailing and leading junk
        WF + "StartWorkflowExecution ",
        WF + "StartWorkflowExecution/",
        WF + "StartWorkflowExecutionX",
        WF + "StartWorkflowExecution?x=1",
        WF + "StartWorkflowExecution\x00",
        "/grpc.health.v1.Health/Check/",
        "/grpc.health.v1.Health/x/Check",
        "temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution",
        "x" + WF + "StartWorkflowExecution",
        WF,
        "",
        "/",
        # a method under the wrong service
        OP + "StartWorkflowExecution",
        WF + "AddSearchAttributes",
        NEXUS + "StartWorkflowExecution",
        NEXUS + "NoSuchHandler",
        "/temporal.api.workflowservice.v2.WorkflowService/StartWorkflowExecution",
    ],
)
def test_unknown_methods(name: str) -> None:
    assert lookup(name) is None
    assert not is_forwarded(name)
    assert metric_label(name) == UNKNOWN_LABEL


def test_text_after_the_last_slash_decides_like_temporal() -> None:
    # Temporal's MethodName() takes the text after the LAST "/", so this is authorized as
    # StartWorkflowExecution (and grpc routes it nowhere, so it is not forwarded).
    info = lookup(WF + "x/StartWorkflowExecution")
    assert info is lookup(WF + "StartWorkflowExecution")
    assert info is not None
    assert not is_forwarded(WF + "x/StartWorkflowExecution")


@pytest.mark.parametrize(
    "handler",
    [
        "DispatchNexusTask",
        "DispatchByNamespaceAndTaskQueue",
        "DispatchByEndpoint",
        "CompleteNexusOperation",
        "CompleteNexusOperationChasm",
    ],
)
def test_nexus_is_namespace_write_and_not_forwarded(handler: str) -> None:
    info = lookup(NEXUS + handler)
    assert info is not None
    assert (info.scope, info.access) == (Scope.NAMESPACE, Access.WRITE)
    assert not is_forwarded(NEXUS + handler)


@pytest.mark.parametrize("full_name", sorted(DESCRIPTOR_METHODS))
def test_every_api_method_is_forwarded(full_name: str) -> None:
    assert is_forwarded(full_name)


@pytest.mark.parametrize(
    ("name", "forwarded"),
    [
        ("/grpc.health.v1.Health/Check", True),
        (ADMIN + "DescribeCluster", True),
        (ADMIN + "AddSearchAttributes", True),
        (ADMIN + "SomeFutureMethod", True),
        (ADMIN + "StreamWorkflowReplicationMessages", False),
        (ADMIN, False),
        (ADMIN + "a/b", False),
        ("/grpc.health.v1.Health/Watch", False),
    ],
)
def test_is_forwarded(name: str, forwarded: bool) -> None:
    assert is_forwarded(name) is forwarded


def test_all_methods_rows_are_consistent() -> None:
    rows = all_methods()
    names = [m.full_name for m in rows]
    assert len(names) == len(set(names))
    assert set(DESCRIPTOR_METHODS) <= set(names)
    for m in rows:
        assert m.short_name == m.full_name.rpartition("/")[2]
        assert lookup(m.full_name) is m
        assert metric_label(m.full_name) == m.short_name
        # namespace scope <=> a namespace field, except HTTP-only Nexus (no gRPC message).
        if not m.full_name.startswith(NEXUS):
            assert (m.namespace_field is not None) == (m.scope is Scope.NAMESPACE)


def test_methods_module_does_not_import_grpc() -> None:
    source = methods.__file__
    assert source is not None
    with open(source, encoding="utf-8") as f:
        text = f.read()
    assert "import grpc" not in text


# --- the attribute-path column (request attributes for policy engines) ---

_WORKFLOW_ID_PATHS = (
    ("workflow_id",),
    ("execution", "workflow_id"),
    ("workflow_execution", "workflow_id"),
    ("update_ref", "workflow_execution", "workflow_id"),
    ("schedule", "action", "start_workflow", "workflow_id"),
)
# attribute -> candidate field-name paths, first match wins (the rule the table follows)
_ATTRIBUTE_RULES: dict[str, tuple[tuple[str, ...], ...]] = {
    "workflowId": _WORKFLOW_ID_PATHS,
    "workflowType": (
        ("workflow_type", "name"),
        ("schedule", "action", "start_workflow", "workflow_type", "name"),
    ),
    "taskQueue": (
        ("task_queue",),
        ("task_queue", "name"),
        ("schedule", "action", "start_workflow", "task_queue", "name"),
    ),
    "scheduleId": (("schedule_id",),),
    "batchJobId": (("job_id",),),
    "updateName": (("request", "input", "name"),),
    "signalName": (("signal_name",),),
    "queryType": (("query", "query_type"),),
}


def _resolve(method: MethodDescriptor, names: tuple[str, ...]) -> tuple[int, ...] | None:
    """Field numbers of a singular path ending in a string, None when the message has none."""
    message = method.input_type
    numbers: list[int] = []
    for i, name in enumerate(names):
        fd = message.fields_by_name.get(name)
        if fd is None or fd.is_repeated:
            return None
        numbers.append(fd.number)
        if i < len(names) - 1:
            if fd.type != FieldDescriptor.TYPE_MESSAGE:
                return None
            message = fd.message_type
        elif fd.type != FieldDescriptor.TYPE_STRING:
            return None
    return tuple(numbers)


@pytest.mark.parametrize("full_name", sorted(DESCRIPTOR_METHODS))
def test_attribute_paths_follow_the_rule(full_name: str) -> None:
    method = DESCRIPTOR_METHODS[full_name]
    expected: dict[str, tuple[int, ...]] = {}
    for attribute, candidates in _ATTRIBUTE_RULES.items():
        for names in candidates:
            numbers = _resolve(method, names)
            if numbers is not None:
                expected[attribute] = numbers
                break
    info = lookup(full_name)
    assert info is not None
    assert dict(info.attributes) == expected
    assert len(info.attributes) == len(dict(info.attributes))


@pytest.mark.parametrize(
    "full_name",
    sorted(n for n in DESCRIPTOR_METHODS if lookup(n).attributes),  # type: ignore[union-attr]
)
def test_attribute_paths_are_singular_strings_outside_oneofs(full_name: str) -> None:
    # The reader models no oneof: a sibling member arriving later would clear the field for
    # Temporal but not for the reader. Single-member oneofs (schedule.action) are harmless.
    info = lookup(full_name)
    assert info is not None
    for attribute, numbers in info.attributes:
        assert attribute in REQUEST_ATTRIBUTES
        message = DESCRIPTOR_METHODS[full_name].input_type
        for depth, number in enumerate(numbers):
            fd = message.fields_by_number[number]
            assert not fd.is_repeated
            oneof = fd.containing_oneof
            assert oneof is None or len(oneof.fields) == 1, (attribute, fd.full_name)
            if depth < len(numbers) - 1:
                assert fd.type == FieldDescriptor.TYPE_MESSAGE
                message = fd.message_type
            else:
                assert fd.type == FieldDescriptor.TYPE_STRING


def test_attribute_spot_rows() -> None:
    start = lookup(WF + "StartWorkflowExecution")
    assert start is not None
    assert dict(start.attributes) == {
        "workflowId": (2,),
        "workflowType": (3, 1),
        "taskQueue": (4, 1),
    }
    update = lookup(WF + "UpdateWorkflowExecution")
    assert dict(update.attributes) == {"workflowId": (2, 1), "updateName": (5, 2, 2)}  # type: ignore[union-attr]
    assert lookup(WF + "GetSystemInfo").attributes == ()  # type: ignore[union-attr]
    # Every attribute is carried by at least one method.
    carried = {name for m in all_methods() for name, _ in m.attributes}
    assert carried == set(REQUEST_ATTRIBUTES)
