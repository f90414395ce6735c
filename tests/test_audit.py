"""Issue 8: the audit log (proxy/audit.py): workflow ids from request bytes, records, sinks."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from temporalio.api.common.v1 import WorkflowExecution, WorkflowType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    ListWorkflowExecutionsRequest,
    RecordActivityTaskHeartbeatByIdRequest,
    SignalWorkflowExecutionRequest,
    StartWorkflowExecutionRequest,
    service_pb2,
)

from proxy import methods
from proxy.audit import WORKFLOW_ID_PATHS, AuditLog, AuditRecord, claims_subject, workflow_id
from proxy.config.parse import parse_config
from proxy.config.schema import AuditConfig
from proxy.errors import ConfigError
from proxy.model import Access, Claims, MethodInfo, PeerIdentity

WS = methods.WORKFLOW_SERVICE_PREFIX
SERVICE = service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
EXECUTION = "temporal.api.common.v1.WorkflowExecution"


def method(short: str) -> MethodInfo:
    info = methods.lookup(WS + short)
    assert info is not None, short
    return info


# ------------------------------------------------------- WORKFLOW_ID_PATHS vs the descriptors


def expected_path(request: Descriptor) -> tuple[int, ...] | None:
    fields = request.fields_by_name
    wid = fields.get("workflow_id")
    if wid is not None and wid.type == FieldDescriptor.TYPE_STRING:
        return (wid.number,)
    for name in ("workflow_execution", "execution"):
        f = fields.get(name)
        if f is not None and f.message_type is not None and f.message_type.full_name == EXECUTION:
            return (f.number, f.message_type.fields_by_name["workflow_id"].number)
    return None


def descriptor_paths() -> dict[str, tuple[int, ...]]:
    out = {}
    for m in SERVICE.methods:
        path = expected_path(m.input_type)
        if path is not None:
            out[m.name] = path
    return out


def test_descriptor_scan_finds_the_well_known_shapes() -> None:
    paths = descriptor_paths()
    # Guards the scan itself: both shapes are present, so the comparison below means something.
    assert paths["StartWorkflowExecution"] == (2,)
    assert paths["SignalWithStartWorkflowExecution"] == (2,)
    assert paths["SignalWorkflowExecution"] == (2, 1)
    assert paths["DescribeWorkflowExecution"] == (2, 1)
    assert paths["RecordActivityTaskHeartbeatById"] == (2,)
    assert len(paths) >= 20


def test_every_request_with_a_workflow_id_is_in_the_table() -> None:
    paths = descriptor_paths()
    missing = {k: v for k, v in paths.items() if k not in WORKFLOW_ID_PATHS}
    assert missing == {}


def test_every_table_entry_matches_the_descriptors() -> None:
    paths = descriptor_paths()
    wrong = {k: v for k, v in WORKFLOW_ID_PATHS.items() if paths.get(k) != v}
    assert wrong == {}
    for short in WORKFLOW_ID_PATHS:  # and the proxy knows every one of those methods
        assert method(short).short_name == short


def _message_class(short: str) -> Any:
    return GetMessageClass(SERVICE.methods_by_name[short].input_type)


def _request_with_id(short: str, wid: str) -> bytes:
    cls = _message_class(short)
    msg = cls(namespace="ns-a")
    path = WORKFLOW_ID_PATHS[short]
    descriptor = cls.DESCRIPTOR
    if len(path) == 1:
        setattr(msg, descriptor.fields_by_number[path[0]].name, wid)
    else:
        inner = getattr(msg, descriptor.fields_by_number[path[0]].name)
        inner.workflow_id = wid
        inner.run_id = "run-" + wid
    data: bytes = msg.SerializeToString()
    return data


@pytest.mark.parametrize("short", sorted(WORKFLOW_ID_PATHS))
def test_workflow_id_on_every_real_request(short: str) -> None:
    info = method(short)
    wid = f"wf-{short}-é"
    assert workflow_id(info, _request_with_id(short, wid)) == wid
    assert workflow_id(info, _message_class(short)(namespace="ns-a").SerializeToString()) == ""


def test_workflow_id_examples() -> None:
    start = StartWorkflowExecutionRequest(
        namespace="default",
        workflow_id="order-17",
        workflow_type=WorkflowType(name="Order"),
        task_queue=TaskQueue(name="orders"),
        request_id="r1",
    ).SerializeToString()
    assert workflow_id(method("StartWorkflowExecution"), start) == "order-17"
    signal = SignalWorkflowExecutionRequest(
        namespace="default",
        workflow_execution=WorkflowExecution(workflow_id="order-18", run_id="abc"),
        signal_name="go",
    ).SerializeToString()
    assert workflow_id(method("SignalWorkflowExecution"), signal) == "order-18"
    heartbeat = RecordActivityTaskHeartbeatByIdRequest(
        namespace="default", workflow_id="order-19", run_id="x", activity_id="a1"
    ).SerializeToString()
    assert workflow_id(method("RecordActivityTaskHeartbeatById"), heartbeat) == "order-19"
    listing = ListWorkflowExecutionsRequest(
        namespace="default", query="WorkflowId='x'"
    ).SerializeToString()
    assert workflow_id(method("ListWorkflowExecutions"), listing) == ""


def test_workflow_id_last_occurrence_wins_as_in_the_parser() -> None:
    first = StartWorkflowExecutionRequest(namespace="d", workflow_id="one").SerializeToString()
    second = StartWorkflowExecutionRequest(workflow_id="two").SerializeToString()
    data = first + second
    assert StartWorkflowExecutionRequest.FromString(data).workflow_id == "two"
    assert workflow_id(method("StartWorkflowExecution"), data) == "two"
    a = SignalWorkflowExecutionRequest(
        workflow_execution=WorkflowExecution(workflow_id="one")
    ).SerializeToString()
    b = SignalWorkflowExecutionRequest(
        workflow_execution=WorkflowExecution(workflow_id="two")
    ).SerializeToString()
    assert workflow_id(method("SignalWorkflowExecution"), a + b) == "two"


def test_workflow_id_follows_protobuf_merge_of_split_sub_messages() -> None:
    data = (
        SignalWorkflowExecutionRequest(
            namespace="default", workflow_execution=WorkflowExecution(workflow_id="victim")
        ).SerializeToString()
        + SignalWorkflowExecutionRequest(
            workflow_execution=WorkflowExecution(run_id="r-1")
        ).SerializeToString()
    )
    # What Temporal (the parser) acts on:
    assert (
        SignalWorkflowExecutionRequest.FromString(data).workflow_execution.workflow_id == "victim"
    )
    assert workflow_id(method("SignalWorkflowExecution"), data) == "victim"


@pytest.mark.parametrize(
    "data",
    [b"\x12", b"\x12\x05ab", b"\xff", b"\x12\x02\xff\xfe", b"\x0f"],
)
def test_workflow_id_on_odd_bytes_is_empty_not_an_error(data: bytes) -> None:
    assert workflow_id(method("StartWorkflowExecution"), data) == ""
    assert workflow_id(method("SignalWorkflowExecution"), data) == ""


# --------------------------------------------------------------------------- AuditLog.wants

READ = method("DescribeNamespace")
WRITE = method("StartWorkflowExecution")
ADMIN = method("UpdateNamespace")


def test_method_access_classes() -> None:
    assert (READ.access, WRITE.access, ADMIN.access) == (Access.READ, Access.WRITE, Access.ADMIN)


@pytest.mark.parametrize(
    ("allowed_cfg", "m", "allowed", "wanted"),
    [
        # denials always
        *[(cfg, m, False, True) for cfg in ("all", "writes", "none") for m in (READ, WRITE, ADMIN)],
        ("all", READ, True, True),
        ("all", WRITE, True, True),
        ("all", ADMIN, True, True),
        ("writes", READ, True, False),
        ("writes", WRITE, True, True),
        ("writes", ADMIN, True, True),  # admin calls change things too
        ("none", READ, True, False),
        ("none", WRITE, True, False),
        ("none", ADMIN, True, False),
    ],
)
def test_wants_matrix(allowed_cfg: Any, m: MethodInfo, allowed: bool, wanted: bool) -> None:
    log = AuditLog(AuditConfig(enabled=True, allowed=allowed_cfg), stream=io.StringIO())
    assert log.wants(m, allowed) is wanted


# -------------------------------------------------------------------------- records, sinks

PEER = PeerIdentity(
    subject="CN=worker-a,OU=payments",
    common_name="worker-a",
    dns_names=("worker-a.test",),
    uris=("spiffe://e2e.test/ns/default/sa/worker-a",),
    spiffe_id="spiffe://e2e.test/ns/default/sa/worker-a",
)


def record(**over: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "subject": "alice",
        "auth_type": "jwt",
        "peer": PEER,
        "method": "StartWorkflowExecution",
        "namespace": "default",
        "workflow_id": "order-1",
        "decision": "allow",
        "reason": "allowed",
        "mode": "enforce",
        "upstream_status": "OK",
        "duration_seconds": 0.0123456,
    }
    fields.update(over)
    return AuditRecord(**fields)


def test_record_json_fields() -> None:
    now = 1_700_000_000.25
    body = json.loads(record().to_json(now))
    assert set(body) == {
        "time",
        "subject",
        "auth_type",
        "certificate",
        "method",
        "namespace",
        "workflow_id",
        "decision",
        "reason",
        "mode",
        "upstream_status",
        "duration_ms",
    }
    assert body["time"] == "2023-11-14T22:13:20.250000Z"
    parsed = datetime.datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert parsed.timestamp() == now
    assert body["certificate"] == {
        "subject": PEER.subject,
        "spiffe_id": PEER.spiffe_id,
        "dns_names": ["worker-a.test"],
    }
    assert body["duration_ms"] == 12.346
    assert (body["subject"], body["auth_type"], body["workflow_id"]) == ("alice", "jwt", "order-1")
    assert json.loads(record(peer=None).to_json(now))["certificate"] is None
    # one line, whatever the values hold
    odd = record(subject='a"b\nc', workflow_id="x\ny").to_json(now)
    assert "\n" not in odd
    assert json.loads(odd)["subject"] == 'a"b\nc'


def test_stream_sink_writes_one_json_line_per_record() -> None:
    out = io.StringIO()
    log = AuditLog(AuditConfig(enabled=True, sink="stdout"), stream=out)
    log.write(record())
    log.write(
        record(decision="deny", reason="insufficient_role", upstream_status="PERMISSION_DENIED")
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["decision"] for line in lines] == ["allow", "deny"]
    log.close()


def test_audit_records_do_not_reach_the_root_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(AuditConfig(enabled=True), stream=io.StringIO())
    with caplog.at_level("DEBUG"):
        log.write(record())
    assert caplog.records == []


def test_file_sink_rotates_at_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    size = len(record().to_json(0.0)) + 1
    log = AuditLog(
        AuditConfig(enabled=True, sink="file", path=str(path), max_bytes=size * 3, backups=2)
    )
    for i in range(20):
        log.write(record(workflow_id=f"wf-{i:02d}"))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    kept: list[str] = []
    for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"):
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= size * 3
        kept += [json.loads(line)["workflow_id"] for line in text.splitlines()]
    # The newest records, in order, nothing duplicated; older ones went with the oldest backup.
    assert kept == [f"wf-{i:02d}" for i in range(20 - len(kept), 20)]
    assert 4 <= len(kept) <= 9


def test_claims_subject() -> None:
    assert claims_subject(None) == ""
    assert claims_subject(Claims.build(subject="bob")) == "bob"


def _audit_config(audit: dict[str, Any]) -> AuditConfig:
    raw = {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"authorizer": "noop", "claimMapper": "noop"},
        "audit": audit,
    }
    return parse_config(raw).audit


def test_config_keys() -> None:
    cfg = _audit_config(
        {
            "enabled": True,
            "sink": "file",
            "path": "/var/log/audit.jsonl",
            "maxBytes": 4096,
            "backups": 3,
            "allowed": "writes",
        }
    )
    assert cfg == AuditConfig(
        enabled=True,
        sink="file",
        path="/var/log/audit.jsonl",
        max_bytes=4096,
        backups=3,
        allowed="writes",
    )
    assert _audit_config({}) == AuditConfig()


@pytest.mark.parametrize(
    ("audit", "where"),
    [
        ({"enabled": True, "sink": "file"}, "audit.path"),
        ({"enabled": True, "sink": "syslog"}, "audit.sink"),
        ({"enabled": True, "allowed": "reads"}, "audit.allowed"),
    ],
)
def test_config_errors(audit: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _audit_config(audit)
    assert where in str(exc.value)


# ------------------------------------------------------------ hostile callers vs the audit file

BIG = "n" * (8 * 1024 * 1024)


def test_every_caller_string_in_a_record_is_cut_with_a_marker() -> None:
    peer = PeerIdentity(subject="CN=" + BIG, dns_names=tuple(f"d{i}" for i in range(500)))
    line = record(
        subject=BIG, namespace=BIG, workflow_id=BIG, method=BIG, peer=peer, reason="r"
    ).to_json(0.0, max_value_length=1024)
    body = json.loads(line)
    for key in ("subject", "namespace", "workflow_id", "method"):
        assert body[key].startswith("n" * 1024)
        assert body[key].endswith(f"[truncated {len(BIG) - 1024} chars]")
    assert len(body["certificate"]["dns_names"]) == 32
    assert len(line) < 8 * 1024


def test_a_thousand_8_mib_denials_keep_an_earlier_denial_in_the_file_at_defaults(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    cfg = AuditConfig(enabled=True, sink="file", path=str(path))  # default size and repeats
    log = AuditLog(cfg)
    deny = {
        "decision": "deny",
        "reason": "insufficient_role",
        "upstream_status": "PERMISSION_DENIED",
    }
    log.write(record(subject="genuine", namespace="payments", **deny))
    for i in range(1000):
        log.write(record(subject="mallory", namespace=f"{i}{BIG}", **deny))
        # Checked as it goes: each line is bounded, whatever the caller sent.
        assert path.stat().st_size < 64 * 1024, i
    log.close()
    lines = [json.loads(line) for p in sorted(tmp_path.iterdir()) for line in p.open()]
    assert lines[0]["subject"] == "genuine"
    # The burst is written, the rest folded into one summary record with its count.
    mallory = [line for line in lines if line["subject"] == "mallory"]
    assert len(mallory) == cfg.repeat_burst + 1
    assert mallory[-1]["suppressed"] == 1000 - cfg.repeat_burst


def test_denial_repeats_are_per_identity_and_reason_and_allowed_calls_are_never_folded() -> None:
    out = io.StringIO()
    clock = [0.0]
    log = AuditLog(
        AuditConfig(enabled=True, repeat_burst=2, repeat_interval=10.0),
        stream=out,
        clock=lambda: clock[0],
    )
    deny = {"decision": "deny", "upstream_status": "PERMISSION_DENIED"}
    for i in range(5):
        log.write(record(subject="a", reason="insufficient_role", namespace=f"ns{i}", **deny))
        log.write(record(subject="b", reason="insufficient_role", **deny))
        log.write(record(subject="a", reason="no_credentials", **deny))
        log.write(record(subject="a"))  # allowed
    clock[0] = 11.0  # a new window: its first record brings the previous count first
    log.write(record(subject="a", reason="insufficient_role", namespace="late", **deny))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(1 for line in lines if line["decision"] == "allow") == 5
    by = [
        (line["subject"], line["reason"], line.get("suppressed", 0), line["namespace"])
        for line in lines
        if line["decision"] == "deny"
    ]
    assert by.count(("a", "insufficient_role", 0, "ns0")) == 1
    assert ("a", "insufficient_role", 3, "ns4") in by  # summary: the last one's namespace
    assert by[-1] == ("a", "insufficient_role", 0, "late")
    assert sum(1 for b in by if b[:2] == ("b", "insufficient_role") and b[2] == 0) == 2
    log.close()  # closing writes the open windows' counts
    tail = [json.loads(line) for line in out.getvalue().splitlines()[len(lines) :]]
    assert sorted((t["subject"], t["reason"], t["suppressed"]) for t in tail) == [
        ("a", "no_credentials", 3),
        ("b", "insufficient_role", 3),
    ]


def test_audit_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"audit\.maxValueLength"):
        _audit_config({"maxValueLength": 10})
    with pytest.raises(ConfigError, match=r"audit\.repeatBurst"):
        _audit_config({"repeatBurst": 0})
    cfg = _audit_config({"repeatInterval": "1m", "maxValueLength": 256})
    assert (cfg.repeat_interval, cfg.max_value_length, cfg.repeat_burst) == (60.0, 256, 10)
