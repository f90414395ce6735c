"""The audit trail: one JSON line per decided call, to stdout or a size-rotated file.

Denials are always recorded; allowed calls per `audit.allowed` (all, writes, none). Records
carry identities, never credentials. Two guards keep a hostile caller from rotating earlier
records out of the file: every string in a record is cut to `audit.maxValueLength`, and
identical denials (same identity, method and reason) beyond `audit.repeatBurst` per
`audit.repeatInterval` are folded into one record carrying `suppressed: N`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, TextIO

from proxy.config.schema import AuditConfig, Config
from proxy.errors import MalformedRequestError
from proxy.log import truncate
from proxy.model import Access, Claims, MethodInfo, PeerIdentity
from proxy.wire.read import read_string

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

    Read by the namespace's reader (`proxy.wire.read`), with the same rules: sub-message occurrences
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

    def to_json(self, now: float, max_value_length: int = 1024, suppressed: int = 0) -> str:
        """One JSON line; every string cut to `max_value_length` characters (with a marker)."""

        def cut(text: str) -> str:
            return truncate(text, max_value_length)

        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1e6):06d}Z",
            "subject": cut(self.subject),
            "auth_type": cut(self.auth_type),
            "certificate": (
                {
                    "subject": cut(self.peer.subject),
                    "spiffe_id": cut(self.peer.spiffe_id),
                    "dns_names": [cut(n) for n in self.peer.dns_names[:MAX_DNS_NAMES]],
                }
                if self.peer is not None
                else None
            ),
            "method": cut(self.method),
            "namespace": cut(self.namespace),
            "workflow_id": cut(self.workflow_id),
            "decision": cut(self.decision),
            "reason": cut(self.reason),
            "mode": cut(self.mode),
            "upstream_status": cut(self.upstream_status),
            "duration_ms": round(self.duration_seconds * 1000, 3),
        }
        if suppressed:
            # This record stands for `suppressed` denials with its identity, method and reason
            # since the previous record of that kind; namespace etc. are the last one's.
            body["suppressed"] = suppressed
        return json.dumps(body, separators=(",", ":"))

    def repeat_key(self) -> tuple[str, ...]:
        """What makes two denials "the same" for the flood guard: who, what, why. Not the
        namespace or workflow id, which any caller can vary freely."""
        peer = self.peer
        return (
            self.subject[:512],
            self.auth_type,
            peer.subject[:512] if peer is not None else "",
            peer.spiffe_id[:512] if peer is not None else "",
            self.method[:256],
            self.reason,
            self.mode,
        )


MAX_DNS_NAMES = 32  # certificate SANs listed in a record


class _Repeats:
    __slots__ = ("count", "last", "start", "suppressed", "timer")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 1
        self.suppressed = 0
        self.last: AuditRecord | None = None
        self.timer = False


class AuditLog:
    MAX_KEYS = 10_000  # identities tracked by the flood guard (oldest dropped first)

    def __init__(
        self,
        cfg: AuditConfig,
        stream: TextIO | None = None,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        self._allowed = cfg.allowed
        self._limit = cfg.max_value_length
        self._interval = cfg.repeat_interval
        self._burst = cfg.repeat_burst
        self._clock = clock
        self._repeats: OrderedDict[tuple[str, ...], _Repeats] = OrderedDict()
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
        if record.decision == "deny" and self._interval > 0 and not self._admit(record):
            return
        self._emit(record)

    def _emit(self, record: AuditRecord, suppressed: int = 0) -> None:
        self._logger.info(record.to_json(time.time(), self._limit, suppressed))

    def _admit(self, record: AuditRecord) -> bool:
        """Flood guard for denials: False when the record is folded into a later summary."""
        key = record.repeat_key()
        now = self._clock()
        r = self._repeats.get(key)
        if r is None or now - r.start >= self._interval:
            if r is not None and r.suppressed and r.last is not None:
                self._emit(r.last, r.suppressed)  # a window that no timer closed
            self._repeats[key] = _Repeats(now)
            self._repeats.move_to_end(key)
            if len(self._repeats) > self.MAX_KEYS:
                _, old = self._repeats.popitem(last=False)
                if old.suppressed and old.last is not None:
                    self._emit(old.last, old.suppressed)
            return True
        r.count += 1
        if r.count <= self._burst:
            return True
        r.suppressed += 1
        # Keep the last one as the summary's example, cut so that held memory stays small.
        r.last = replace(
            record,
            namespace=truncate(record.namespace, self._limit),
            workflow_id=truncate(record.workflow_id, self._limit),
        )
        if not r.timer:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # off the loop: the next window's first record writes the summary
            else:
                r.timer = True
                loop.call_later(max(0.0, r.start + self._interval - now), self._flush, key)
        return False

    def _flush(self, key: tuple[str, ...]) -> None:
        r = self._repeats.get(key)
        if r is None:
            return
        r.timer = False
        if r.suppressed and r.last is not None:
            self._emit(r.last, r.suppressed)
            r.suppressed, r.last = 0, None

    def close(self) -> None:
        for r in self._repeats.values():
            if r.suppressed and r.last is not None:
                self._emit(r.last, r.suppressed)
                r.suppressed, r.last = 0, None
        self._handler.close()


def claims_subject(claims: Claims | None) -> str:
    return claims.subject if claims is not None else ""


def build_audit_log(cfg: Config) -> AuditLog | None:
    """`audit`: the audit log (its file opened now), or None when it is off."""
    return AuditLog(cfg.audit) if cfg.audit.enabled else None
