"""The audit trail: one JSON line per decided call, to stdout or a size-rotated file.

Denials are always recorded; allowed calls per `audit.allowed` (all, writes, none). Records
carry identities, never credentials.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from proxy.config import AuditConfig
from proxy.errors import MalformedRequestError
from proxy.model import Access, Claims, MethodInfo, PeerIdentity
from proxy.wire import read_string

# Where the workflow id sits in a request: (field,) for a top-level `workflow_id`, or
# (field, 1) for `workflow_execution.workflow_id`. Checked against the temporalio descriptors by
# tests/test_audit.py.
WORKFLOW_ID_PATHS: dict[str, tuple[int, ...]] = {
    "DeleteWorkflowExecution": (2, 1),
    "DescribeWorkflowExecution": (2, 1),
    "GetWorkflowExecutionHistory": (2, 1),
    "GetWorkflowExecutionHistoryReverse": (2, 1),
    "PauseActivity": (2, 1),
    "PauseActivityExecution": (2,),
    "PauseWorkflowExecution": (2,),
    "PollWorkflowExecutionTimeSkipping": (2, 1),
    "QueryWorkflow": (2, 1),
    "RecordActivityTaskHeartbeatById": (2,),
    "RequestCancelWorkflowExecution": (2, 1),
    "ResetActivity": (2, 1),
    "ResetActivityExecution": (2,),
    "ResetStickyTaskQueue": (2, 1),
    "ResetWorkflowExecution": (2, 1),
    "RespondActivityTaskCanceledById": (2,),
    "RespondActivityTaskCompletedById": (2,),
    "RespondActivityTaskFailedById": (2,),
    "SignalWithStartWorkflowExecution": (2,),
    "SignalWorkflowExecution": (2, 1),
    "StartWorkflowExecution": (2,),
    "TerminateWorkflowExecution": (2, 1),
    "TriggerWorkflowRule": (2, 1),
    "UnpauseActivity": (2, 1),
    "UnpauseActivityExecution": (2,),
    "UnpauseWorkflowExecution": (2,),
    "UpdateActivityExecutionOptions": (2,),
    "UpdateActivityOptions": (2, 1),
    "UpdateWorkflowExecution": (2, 1),
    "UpdateWorkflowExecutionOptions": (2, 1),
}


def workflow_id(method: MethodInfo, request: bytes) -> str:
    """Best effort: the request's workflow id, "" when it has none or the bytes are odd.

    Read by the namespace's reader (`proxy.wire`), with the same rules: sub-message occurrences
    merge and the last string wins, as in the parser Temporal runs.
    """
    path = WORKFLOW_ID_PATHS.get(method.short_name)
    if path is None:
        return ""
    try:
        return read_string(request, path)
    except MalformedRequestError:
        return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    subject: str
    auth_type: str
    peer: PeerIdentity | None
    method: str
    namespace: str
    workflow_id: str
    decision: str
    reason: str
    mode: str
    upstream_status: str
    duration_seconds: float

    def to_json(self, now: float) -> str:
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1e6):06d}Z",
            "subject": self.subject,
            "auth_type": self.auth_type,
            "certificate": (
                {
                    "subject": self.peer.subject,
                    "spiffe_id": self.peer.spiffe_id,
                    "dns_names": list(self.peer.dns_names),
                }
                if self.peer is not None
                else None
            ),
            "method": self.method,
            "namespace": self.namespace,
            "workflow_id": self.workflow_id,
            "decision": self.decision,
            "reason": self.reason,
            "mode": self.mode,
            "upstream_status": self.upstream_status,
            "duration_ms": round(self.duration_seconds * 1000, 3),
        }
        return json.dumps(body, separators=(",", ":"))


class AuditLog:
    def __init__(self, cfg: AuditConfig, stream: TextIO | None = None) -> None:
        self._allowed = cfg.allowed
        self._logger = logging.Logger("temporal_auth_proxy.audit")  # private, not the root tree
        handler: logging.Handler
        if cfg.sink == "file":
            handler = logging.handlers.RotatingFileHandler(
                cfg.path, maxBytes=cfg.max_bytes, backupCount=cfg.backups, encoding="utf-8"
            )
        else:
            handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)
        self._handler = handler

    def wants(self, method: MethodInfo, allowed: bool) -> bool:
        if not allowed or self._allowed == "all":
            return True
        return self._allowed == "writes" and method.access is not Access.READ

    def write(self, record: AuditRecord) -> None:
        self._logger.info(record.to_json(time.time()))

    def close(self) -> None:
        self._handler.close()


def claims_subject(claims: Claims | None) -> str:
    return claims.subject if claims is not None else ""
