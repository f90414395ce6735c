"""Request attribute paths per WorkflowService method: the policy context a request carries.

Data beside the method table (`methods.py` fills each row's `attributes` from it): attribute ->
field numbers from the request message down to the string field. Checked against Temporal's
API descriptors in tests/test_methods.py.
"""

from __future__ import annotations

__all__ = ["ATTRIBUTE_PATHS", "REQUEST_ATTRIBUTES"]

# The request attributes a policy engine can read (Cedar context keys), each a string field.
REQUEST_ATTRIBUTES: tuple[str, ...] = (
    "workflowId",
    "workflowType",
    "taskQueue",
    "scheduleId",
    "batchJobId",
    "updateName",
    "signalName",
    "queryType",
)

# The attribute-path column of the WorkflowService rows (kept beside the rows so the rows stay
# one line each): method -> ((attribute, field numbers from the request down to the string)).
# Only singular fields outside multi-member oneofs (tests/test_methods.py checks against the
# descriptors). The schedule methods carry the scheduled workflow's id, type and task queue.
ATTRIBUTE_PATHS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "StartWorkflowExecution": (
        ("workflowId", (2,)),
        ("workflowType", (3, 1)),
        ("taskQueue", (4, 1)),
    ),
    "GetWorkflowExecutionHistory": (("workflowId", (2, 1)),),
    "GetWorkflowExecutionHistoryReverse": (("workflowId", (2, 1)),),
    "PollWorkflowTaskQueue": (("taskQueue", (2, 1)),),
    "PollActivityTaskQueue": (("taskQueue", (2, 1)),),
    "RecordActivityTaskHeartbeatById": (("workflowId", (2,)),),
    "RespondActivityTaskCompletedById": (("workflowId", (2,)),),
    "RespondActivityTaskFailedById": (("workflowId", (2,)),),
    "RespondActivityTaskCanceledById": (("workflowId", (2,)),),
    "RequestCancelWorkflowExecution": (("workflowId", (2, 1)),),
    "SignalWorkflowExecution": (("workflowId", (2, 1)), ("signalName", (3,))),
    "SignalWithStartWorkflowExecution": (
        ("workflowId", (2,)),
        ("workflowType", (3, 1)),
        ("taskQueue", (4, 1)),
        ("signalName", (12,)),
    ),
    "ResetWorkflowExecution": (("workflowId", (2, 1)),),
    "TerminateWorkflowExecution": (("workflowId", (2, 1)),),
    "DeleteWorkflowExecution": (("workflowId", (2, 1)),),
    "ResetStickyTaskQueue": (("workflowId", (2, 1)),),
    "ShutdownWorker": (("taskQueue", (7,)),),
    "QueryWorkflow": (("workflowId", (2, 1)), ("queryType", (3, 1))),
    "DescribeWorkflowExecution": (("workflowId", (2, 1)),),
    "DescribeTaskQueue": (("taskQueue", (2, 1)),),
    "ListTaskQueuePartitions": (("taskQueue", (2, 1)),),
    "CreateSchedule": (
        ("workflowId", (3, 2, 1, 1)),
        ("workflowType", (3, 2, 1, 2, 1)),
        ("taskQueue", (3, 2, 1, 3, 1)),
        ("scheduleId", (2,)),
    ),
    "DescribeSchedule": (("scheduleId", (2,)),),
    "UpdateSchedule": (
        ("workflowId", (3, 2, 1, 1)),
        ("workflowType", (3, 2, 1, 2, 1)),
        ("taskQueue", (3, 2, 1, 3, 1)),
        ("scheduleId", (2,)),
    ),
    "PatchSchedule": (("scheduleId", (2,)),),
    "ListScheduleMatchingTimes": (("scheduleId", (2,)),),
    "DeleteSchedule": (("scheduleId", (2,)),),
    "UpdateWorkerBuildIdCompatibility": (("taskQueue", (2,)),),
    "GetWorkerBuildIdCompatibility": (("taskQueue", (2,)),),
    "UpdateWorkerVersioningRules": (("taskQueue", (2,)),),
    "GetWorkerVersioningRules": (("taskQueue", (2,)),),
    "UpdateWorkflowExecution": (("workflowId", (2, 1)), ("updateName", (5, 2, 2))),
    "PollWorkflowExecutionUpdate": (("workflowId", (2, 1, 1)),),
    "StartBatchOperation": (("batchJobId", (3,)),),
    "StopBatchOperation": (("batchJobId", (2,)),),
    "DescribeBatchOperation": (("batchJobId", (2,)),),
    "PollNexusTaskQueue": (("taskQueue", (3, 1)),),
    "UpdateActivityOptions": (("workflowId", (2, 1)),),
    "UpdateWorkflowExecutionOptions": (("workflowId", (2, 1)),),
    "PauseActivity": (("workflowId", (2, 1)),),
    "UnpauseActivity": (("workflowId", (2, 1)),),
    "ResetActivity": (("workflowId", (2, 1)),),
    "TriggerWorkflowRule": (("workflowId", (2, 1)),),
    "UpdateTaskQueueConfig": (("taskQueue", (3,)),),
    "PauseWorkflowExecution": (("workflowId", (2,)),),
    "UnpauseWorkflowExecution": (("workflowId", (2,)),),
    "StartActivityExecution": (("taskQueue", (6, 1)),),
    "PauseActivityExecution": (("workflowId", (2,)),),
    "ResetActivityExecution": (("workflowId", (2,)),),
    "UnpauseActivityExecution": (("workflowId", (2,)),),
    "UpdateActivityExecutionOptions": (("workflowId", (2,)),),
    "PollWorkflowExecutionTimeSkipping": (("workflowId", (2, 1)),),
}
