"""The method table as data: scope, access and `namespace` field number per gRPC method.

Mirrors Temporal Server's `common/api/metadata.go` (see spec/temporal-semantics.md section 4.3).
`lookup` is on the per-call hot path: known names are one dict access, and only names that miss
fall back to Temporal's prefix + "text after the last slash" rule. No grpc import here.
"""

from __future__ import annotations

from types import MappingProxyType

from proxy.model import Access, MethodInfo, Scope
from proxy.request_attributes import ATTRIBUTE_PATHS, REQUEST_ATTRIBUTES

__all__ = [
    "ADMIN_SERVICE",
    "ADMIN_SERVICE_PREFIX",
    "HEALTH_CHECK",
    "HEALTH_CHECK_APIS",
    "HEALTH_SERVICE",
    "HEALTH_SERVICE_PREFIX",
    "LIST_NAMESPACES",
    "NEXUS_SERVICE",
    "NEXUS_SERVICE_PREFIX",
    "OPERATOR_SERVICE",
    "OPERATOR_SERVICE_PREFIX",
    "REQUEST_ATTRIBUTES",
    "UNKNOWN_LABEL",
    "WORKFLOW_SERVICE",
    "WORKFLOW_SERVICE_PREFIX",
    "all_methods",
    "is_forwarded",
    "lookup",
    "metric_label",
]

# The one place service names are written; other modules import them from here.
WORKFLOW_SERVICE = "temporal.api.workflowservice.v1.WorkflowService"
OPERATOR_SERVICE = "temporal.api.operatorservice.v1.OperatorService"
ADMIN_SERVICE = "temporal.server.api.adminservice.v1.AdminService"
NEXUS_SERVICE = "temporal.api.nexusservice.v1.NexusService"
HEALTH_SERVICE = "grpc.health.v1.Health"
WORKFLOW_SERVICE_PREFIX = f"/{WORKFLOW_SERVICE}/"
OPERATOR_SERVICE_PREFIX = f"/{OPERATOR_SERVICE}/"
ADMIN_SERVICE_PREFIX = f"/{ADMIN_SERVICE}/"
NEXUS_SERVICE_PREFIX = f"/{NEXUS_SERVICE}/"
HEALTH_SERVICE_PREFIX = f"/{HEALTH_SERVICE}/"
HEALTH_CHECK = HEALTH_SERVICE_PREFIX + "Check"
LIST_NAMESPACES = WORKFLOW_SERVICE_PREFIX + "ListNamespaces"

# Metric label for any method the table does not know (keeps the label set closed).
UNKNOWN_LABEL = "unknown"

# Allowed by the default authorizer regardless of claims (Temporal's health-check list).
HEALTH_CHECK_APIS: frozenset[str] = frozenset(
    {HEALTH_CHECK, WORKFLOW_SERVICE_PREFIX + "GetSystemInfo"}
)

_NS = Scope.NAMESPACE
_CL = Scope.CLUSTER
_R = Access.READ
_W = Access.WRITE
_A = Access.ADMIN


def _row(
    prefix: str,
    name: str,
    scope: Scope,
    access: Access,
    namespace_field: int | None,
    *,
    polling: bool = False,
    attributes: tuple[tuple[str, tuple[int, ...]], ...] = (),
) -> MethodInfo:
    return MethodInfo(
        full_name=prefix + name,
        short_name=name,
        scope=scope,
        access=access,
        namespace_field=namespace_field,
        polling=polling,
        attributes=attributes,
    )


def _wf(
    name: str, scope: Scope, access: Access, ns: int | None, *, polling: bool = False
) -> MethodInfo:
    return _row(
        WORKFLOW_SERVICE_PREFIX,
        name,
        scope,
        access,
        ns,
        polling=polling,
        attributes=ATTRIBUTE_PATHS.get(name, ()),
    )


def _op(name: str, scope: Scope, access: Access, ns: int | None) -> MethodInfo:
    return _row(OPERATOR_SERVICE_PREFIX, name, scope, access, ns)


# WorkflowService: every RPC is unary. `namespace` field numbers differ from 1 for the
# task-token requests (4, 6, 9). polling=True is the spec's "always" column; "capable"
# (long poll only when asked) stays False.
_WORKFLOW_SERVICE: tuple[MethodInfo, ...] = (
    _wf("CountActivityExecutions", _NS, _R, 1),
    _wf("CountNexusOperationExecutions", _NS, _R, 1),
    _wf("CountSchedules", _NS, _R, 1),
    _wf("CountWorkers", _NS, _R, 1),
    _wf("CountWorkflowExecutions", _NS, _R, 1),
    _wf("CreateSchedule", _NS, _W, 1),
    _wf("CreateWorkerDeployment", _NS, _W, 1),
    _wf("CreateWorkerDeploymentVersion", _NS, _W, 1),
    _wf("CreateWorkflowRule", _NS, _W, 1),
    _wf("DeleteActivityExecution", _NS, _W, 1),
    _wf("DeleteNexusOperationExecution", _NS, _W, 1),
    _wf("DeleteSchedule", _NS, _W, 1),
    _wf("DeleteWorkerDeployment", _NS, _W, 1),
    _wf("DeleteWorkerDeploymentVersion", _NS, _W, 1),
    _wf("DeleteWorkflowExecution", _NS, _W, 1),
    _wf("DeleteWorkflowRule", _NS, _W, 1),
    _wf("DeprecateNamespace", _NS, _A, 1),
    _wf("DescribeActivityExecution", _NS, _R, 1),
    _wf("DescribeBatchOperation", _NS, _R, 1),
    _wf("DescribeDeployment", _NS, _R, 1),
    _wf("DescribeNamespace", _NS, _R, 1),
    _wf("DescribeNexusOperationExecution", _NS, _R, 1),
    _wf("DescribeSchedule", _NS, _R, 1),
    _wf("DescribeTaskQueue", _NS, _R, 1),
    _wf("DescribeWorker", _NS, _R, 1),
    _wf("DescribeWorkerDeployment", _NS, _R, 1),
    _wf("DescribeWorkerDeploymentVersion", _NS, _R, 1),
    _wf("DescribeWorkflowExecution", _NS, _R, 1),
    _wf("DescribeWorkflowRule", _NS, _R, 1),
    _wf("ExecuteMultiOperation", _NS, _W, 1),
    _wf("FetchWorkerConfig", _NS, _R, 1),
    _wf("GetClusterInfo", _CL, _R, None),
    _wf("GetCurrentDeployment", _NS, _R, 1),
    _wf("GetDeploymentReachability", _NS, _R, 1),
    _wf("GetSearchAttributes", _CL, _R, None),
    _wf("GetSystemInfo", _CL, _R, None),
    _wf("GetWorkerBuildIdCompatibility", _NS, _R, 1),
    _wf("GetWorkerTaskReachability", _NS, _R, 1),
    _wf("GetWorkerVersioningRules", _NS, _R, 1),
    _wf("GetWorkflowExecutionHistory", _NS, _R, 1),
    _wf("GetWorkflowExecutionHistoryReverse", _NS, _R, 1),
    _wf("ListActivityExecutions", _NS, _R, 1),
    _wf("ListArchivedWorkflowExecutions", _NS, _R, 1),
    _wf("ListBatchOperations", _NS, _R, 1),
    _wf("ListClosedWorkflowExecutions", _NS, _R, 1),
    _wf("ListDeployments", _NS, _R, 1),
    _wf("ListNamespaces", _CL, _R, None),
    _wf("ListNexusOperationExecutions", _NS, _R, 1),
    _wf("ListOpenWorkflowExecutions", _NS, _R, 1),
    _wf("ListScheduleMatchingTimes", _NS, _R, 1),
    _wf("ListSchedules", _NS, _R, 1),
    _wf("ListTaskQueuePartitions", _NS, _R, 1),
    _wf("ListWorkerDeployments", _NS, _R, 1),
    _wf("ListWorkers", _NS, _R, 1),
    _wf("ListWorkflowExecutions", _NS, _R, 1),
    _wf("ListWorkflowRules", _NS, _R, 1),
    _wf("PatchSchedule", _NS, _W, 1),
    _wf("PauseActivity", _NS, _W, 1),
    _wf("PauseActivityExecution", _NS, _W, 1),
    _wf("PauseWorkflowExecution", _NS, _W, 1),
    _wf("PollActivityExecution", _NS, _R, 1, polling=True),
    _wf("PollActivityTaskQueue", _NS, _W, 1, polling=True),
    _wf("PollNexusOperationExecution", _NS, _R, 1, polling=True),
    _wf("PollNexusTaskQueue", _NS, _W, 1, polling=True),
    _wf("PollWorkflowExecutionTimeSkipping", _NS, _R, 1, polling=True),
    _wf("PollWorkflowExecutionUpdate", _NS, _R, 1, polling=True),
    _wf("PollWorkflowTaskQueue", _NS, _W, 1, polling=True),
    _wf("QueryWorkflow", _NS, _R, 1),
    _wf("RecordActivityTaskHeartbeat", _NS, _W, 4),
    _wf("RecordActivityTaskHeartbeatById", _NS, _W, 1),
    _wf("RecordWorkerHeartbeat", _NS, _W, 1),
    _wf("RegisterNamespace", _NS, _A, 1),
    _wf("RequestCancelActivityExecution", _NS, _W, 1),
    _wf("RequestCancelNexusOperationExecution", _NS, _W, 1),
    _wf("RequestCancelWorkflowExecution", _NS, _W, 1),
    _wf("ResetActivity", _NS, _W, 1),
    _wf("ResetActivityExecution", _NS, _W, 1),
    _wf("ResetStickyTaskQueue", _NS, _W, 1),
    _wf("ResetWorkflowExecution", _NS, _W, 1),
    _wf("RespondActivityTaskCanceled", _NS, _W, 4),
    _wf("RespondActivityTaskCanceledById", _NS, _W, 1),
    _wf("RespondActivityTaskCompleted", _NS, _W, 4),
    _wf("RespondActivityTaskCompletedById", _NS, _W, 1),
    _wf("RespondActivityTaskFailed", _NS, _W, 4),
    _wf("RespondActivityTaskFailedById", _NS, _W, 1),
    _wf("RespondNexusTaskCompleted", _NS, _W, 1),
    _wf("RespondNexusTaskFailed", _NS, _W, 1),
    _wf("RespondQueryTaskCompleted", _NS, _W, 6),
    _wf("RespondWorkflowTaskCompleted", _NS, _W, 9),
    _wf("RespondWorkflowTaskFailed", _NS, _W, 6),
    _wf("ScanWorkflowExecutions", _NS, _R, 1),
    _wf("SetCurrentDeployment", _NS, _W, 1),
    _wf("SetWorkerDeploymentCurrentVersion", _NS, _W, 1),
    _wf("SetWorkerDeploymentManager", _NS, _W, 1),
    _wf("SetWorkerDeploymentRampingVersion", _NS, _W, 1),
    _wf("ShutdownWorker", _NS, _W, 1),
    _wf("SignalWithStartWorkflowExecution", _NS, _W, 1),
    _wf("SignalWorkflowExecution", _NS, _W, 1),
    _wf("StartActivityExecution", _NS, _W, 1),
    _wf("StartBatchOperation", _NS, _W, 1),
    _wf("StartNexusOperationExecution", _NS, _W, 1),
    _wf("StartWorkflowExecution", _NS, _W, 1),
    _wf("StopBatchOperation", _NS, _W, 1),
    _wf("TerminateActivityExecution", _NS, _W, 1),
    _wf("TerminateNexusOperationExecution", _NS, _W, 1),
    _wf("TerminateWorkflowExecution", _NS, _W, 1),
    _wf("TriggerWorkflowRule", _NS, _W, 1),
    _wf("UnpauseActivity", _NS, _W, 1),
    _wf("UnpauseActivityExecution", _NS, _W, 1),
    _wf("UnpauseWorkflowExecution", _NS, _W, 1),
    _wf("UpdateActivityExecutionOptions", _NS, _W, 1),
    _wf("UpdateActivityOptions", _NS, _W, 1),
    _wf("UpdateNamespace", _NS, _A, 1),
    _wf("UpdateSchedule", _NS, _W, 1),
    _wf("UpdateTaskQueueConfig", _NS, _W, 1),
    _wf("UpdateWorkerBuildIdCompatibility", _NS, _W, 1),
    _wf("UpdateWorkerConfig", _NS, _W, 1),
    _wf("UpdateWorkerDeploymentVersionComputeConfig", _NS, _W, 1),
    _wf("UpdateWorkerDeploymentVersionMetadata", _NS, _W, 1),
    _wf("UpdateWorkerVersioningRules", _NS, _W, 1),
    _wf("UpdateWorkflowExecution", _NS, _W, 1),
    _wf("UpdateWorkflowExecutionOptions", _NS, _W, 1),
    _wf("ValidateWorkerDeploymentVersionComputeConfig", _NS, _R, 1),
)

_OPERATOR_SERVICE: tuple[MethodInfo, ...] = (
    _op("AddOrUpdateRemoteCluster", _CL, _A, None),
    _op("AddSearchAttributes", _NS, _A, 2),
    _op("CreateNexusEndpoint", _CL, _A, None),
    _op("DeleteNamespace", _NS, _A, 1),
    _op("DeleteNexusEndpoint", _CL, _A, None),
    _op("GetNexusEndpoint", _CL, _A, None),
    _op("ListClusters", _CL, _A, None),
    _op("ListNexusEndpoints", _CL, _A, None),
    _op("ListSearchAttributes", _NS, _R, 1),
    _op("RemoveRemoteCluster", _CL, _A, None),
    _op("RemoveSearchAttributes", _NS, _A, 2),
    _op("UpdateNexusEndpoint", _CL, _A, None),
)

# Temporal authorizes *every* AdminService name (even nonexistent ones) as cluster/admin.
# The known names get table rows so they carry a real metric label; other names are built
# per call with the UNKNOWN_LABEL short name so the metric label set stays closed.
_ADMIN_NAMES: tuple[str, ...] = (
    "AddOrUpdateRemoteCluster",
    "AddSearchAttributes",
    "AddTasks",
    "CancelDLQJob",
    "CloseShard",
    "DeepHealthCheck",
    "DeleteWorkflowExecution",
    "DescribeCluster",
    "DescribeDLQJob",
    "DescribeHistoryHost",
    "DescribeMutableState",
    "DescribeTaskQueuePartition",
    "ForceUnloadTaskQueuePartition",
    "GenerateLastHistoryReplicationTasks",
    "GetDLQMessages",
    "GetDLQReplicationMessages",
    "GetDLQTasks",
    "GetNamespace",
    "GetNamespaceReplicationMessages",
    "GetReplicationMessages",
    "GetSearchAttributes",
    "GetShard",
    "GetTaskQueueTasks",
    "GetTaskQueueUserData",
    "GetWorkflowExecutionRawHistory",
    "GetWorkflowExecutionRawHistoryV2",
    "ImportWorkflowExecution",
    "ListClusterMembers",
    "ListClusters",
    "ListHistoryTasks",
    "ListQueues",
    "MergeDLQMessages",
    "MergeDLQTasks",
    "MigrateSchedule",
    "PurgeDLQMessages",
    "PurgeDLQTasks",
    "ReapplyEvents",
    "RebuildMutableState",
    "RefreshWorkflowTasks",
    "RemoveRemoteCluster",
    "RemoveSearchAttributes",
    "RemoveTask",
    "ResendReplicationTasks",
    "StartAdminBatchOperation",
    "StreamWorkflowReplicationMessages",
    "SyncWorkflowState",
)
# The only streaming AdminService RPC (bidi); the proxy only carries unary calls.
_ADMIN_STREAM = "StreamWorkflowReplicationMessages"

_ADMIN_SERVICE: tuple[MethodInfo, ...] = tuple(
    _row(ADMIN_SERVICE_PREFIX, name, _CL, _A, None) for name in _ADMIN_NAMES
)

# Nexus handlers are HTTP-only in Temporal: in the table (for authorization parity) but never
# forwarded over gRPC. No gRPC request message, hence no namespace field number.
_NEXUS_SERVICE: tuple[MethodInfo, ...] = tuple(
    _row(NEXUS_SERVICE_PREFIX, name, _NS, _W, None)
    for name in (
        "DispatchNexusTask",
        "DispatchByNamespaceAndTaskQueue",
        "DispatchByEndpoint",
        "CompleteNexusOperation",
        "CompleteNexusOperationChasm",
    )
)

_HEALTH = MethodInfo(
    full_name=HEALTH_CHECK,
    short_name="Check",
    scope=_CL,
    access=_R,
    namespace_field=None,
)

_ALL: tuple[MethodInfo, ...] = (
    *_WORKFLOW_SERVICE,
    *_OPERATOR_SERVICE,
    *_ADMIN_SERVICE,
    *_NEXUS_SERVICE,
    _HEALTH,
)

_BY_FULL_NAME: MappingProxyType[str, MethodInfo] = MappingProxyType({m.full_name: m for m in _ALL})

# Short-name tables for Temporal's fallback rule (prefix, then text after the last "/").
_BY_SHORT_NAME: tuple[tuple[str, MappingProxyType[str, MethodInfo]], ...] = (
    (WORKFLOW_SERVICE_PREFIX, MappingProxyType({m.short_name: m for m in _WORKFLOW_SERVICE})),
    (OPERATOR_SERVICE_PREFIX, MappingProxyType({m.short_name: m for m in _OPERATOR_SERVICE})),
    (NEXUS_SERVICE_PREFIX, MappingProxyType({m.short_name: m for m in _NEXUS_SERVICE})),
)

_FORWARDED: frozenset[str] = frozenset(
    m.full_name
    for m in (*_WORKFLOW_SERVICE, *_OPERATOR_SERVICE, *_ADMIN_SERVICE, _HEALTH)
    if m.short_name != _ADMIN_STREAM
)


def lookup(full_name: str) -> MethodInfo | None:
    """The table row for a full gRPC method name, or None when the method is unknown.

    None means "unknown scope": the default authorizer denies it even for a system admin.
    """
    info = _BY_FULL_NAME.get(full_name)
    if info is not None:
        return info
    return _lookup_slow(full_name)


def _lookup_slow(full_name: str) -> MethodInfo | None:
    if full_name.startswith(ADMIN_SERVICE_PREFIX):
        # Temporal: any name under the AdminService prefix is cluster/admin. Not cached, so
        # callers cannot grow memory by inventing method names.
        return MethodInfo(
            full_name=full_name,
            short_name=UNKNOWN_LABEL,
            scope=_CL,
            access=_A,
            namespace_field=None,
        )
    for prefix, by_short in _BY_SHORT_NAME:
        if full_name.startswith(prefix):
            # Temporal's MethodName(): the text after the LAST "/", so
            # ".../WorkflowService/x/StartWorkflowExecution" is looked up as
            # StartWorkflowExecution (grpc-go would then route it nowhere: UNIMPLEMENTED).
            return by_short.get(full_name.rpartition("/")[2])
    return None


def is_forwarded(full_name: str) -> bool:
    """True for the unary methods the proxy carries to the frontend over gRPC."""
    if full_name in _FORWARDED:
        return True
    if full_name.startswith(ADMIN_SERVICE_PREFIX):
        # Unknown AdminService names are forwarded too (the frontend answers UNIMPLEMENTED),
        # matching lookup(); a name with a further "/" is not a gRPC method path.
        name = full_name[len(ADMIN_SERVICE_PREFIX) :]
        return bool(name) and "/" not in name and name != _ADMIN_STREAM
    return False


def metric_label(full_name: str) -> str:
    """The `method` metric label: the table's short name, UNKNOWN_LABEL otherwise."""
    info = _BY_FULL_NAME.get(full_name)
    return info.short_name if info is not None else UNKNOWN_LABEL


def all_methods() -> tuple[MethodInfo, ...]:
    """Every row of the table (WorkflowService, OperatorService, known AdminService names,
    NexusService, Health/Check), in a stable order."""
    return _ALL


# The Codec Server's operations (HTTP, never forwarded over gRPC): rows so that a policy
# authorizer (Cedar) decides them as it decides calls, with the roles today's codec asks for
# (decode and download read, encode write). Not in all_methods(): no metric labels, never
# forwarded, unknown to the default authorizer.
CODEC_PREFIX = "/temporal_auth_proxy.Codec/"
CODEC_ENCODE = CODEC_PREFIX + "Encode"
CODEC_DECODE = CODEC_PREFIX + "Decode"
CODEC_DOWNLOAD = CODEC_PREFIX + "Download"
# The Codec Server hands the namespace over itself; `explain` encodes it as field 1.
_CODEC: tuple[MethodInfo, ...] = (
    _row(CODEC_PREFIX, "Encode", _NS, _W, 1),
    _row(CODEC_PREFIX, "Decode", _NS, _R, 1),
    _row(CODEC_PREFIX, "Download", _NS, _R, 1),
)
_CODEC_BY_NAME = MappingProxyType({m.full_name: m for m in _CODEC})


def codec_methods() -> tuple[MethodInfo, ...]:
    return _CODEC


def lookup_with_codec(full_name: str) -> MethodInfo | None:
    """`lookup`, plus the Codec Server's operations (for policy authorizers)."""
    info = _BY_FULL_NAME.get(full_name)
    if info is not None:
        return info
    return _CODEC_BY_NAME.get(full_name) or _lookup_slow(full_name)
