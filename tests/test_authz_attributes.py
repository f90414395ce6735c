"""Request attributes read from the bytes, checked with Temporal's own generated messages."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import message_pb2 as common
from temporalio.api.workflowservice.v1 import request_response_pb2 as rr
from temporalio.api.workflowservice.v1 import service_pb2 as workflow_service_pb2

from proxy.authz.attributes import AttributeReader
from proxy.errors import MalformedRequestError
from proxy.methods import REQUEST_ATTRIBUTES, all_methods, lookup
from proxy.model import MethodInfo

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
WITH_ATTRIBUTES = sorted(m.full_name for m in all_methods() if m.attributes)


@pytest.fixture(scope="module")
def reader() -> AttributeReader:
    return AttributeReader(all_methods())


def _info(full_name: str) -> MethodInfo:
    info = lookup(full_name)
    assert info is not None
    return info


def _request_class(full_name: str) -> Any:
    method = SERVICE.methods_by_name[full_name.rpartition("/")[2]]
    return getattr(rr, method.input_type.name)


def _set_path(message: Message, path: tuple[int, ...], value: str) -> None:
    for number in path[:-1]:
        field = message.DESCRIPTOR.fields_by_number[number]
        message = getattr(message, field.name)
    setattr(message, message.DESCRIPTOR.fields_by_number[path[-1]].name, value)


def test_the_table_has_attributes_for_many_methods() -> None:
    # Guards the parametrized tests below against passing on an empty list.
    assert len(WITH_ATTRIBUTES) > 40


@pytest.mark.parametrize("full_name", WITH_ATTRIBUTES)
def test_every_attribute_is_read_from_a_real_request(
    reader: AttributeReader, full_name: str
) -> None:
    info = _info(full_name)
    message = _request_class(full_name)(namespace="ns")
    expected = []
    for name, path in info.attributes:
        value = f"{name}-välue-{len(path)}"
        _set_path(message, path, value)
        expected.append((name, value))
    assert reader.read(info, message.SerializeToString()) == tuple(expected)


@pytest.mark.parametrize("full_name", WITH_ATTRIBUTES)
def test_each_attribute_alone_and_the_others_absent(
    reader: AttributeReader, full_name: str
) -> None:
    info = _info(full_name)
    for name, path in info.attributes:
        message = _request_class(full_name)(namespace="ns")
        _set_path(message, path, "v")
        assert reader.read(info, message.SerializeToString()) == ((name, "v"),)


@pytest.mark.parametrize("full_name", WITH_ATTRIBUTES)
def test_nothing_carried_means_nothing_read(reader: AttributeReader, full_name: str) -> None:
    info = _info(full_name)
    assert reader.read(info, _request_class(full_name)(namespace="ns").SerializeToString()) == ()
    assert reader.read(info, b"") == ()


def test_empty_strings_are_absent(reader: AttributeReader) -> None:
    # proto3: an empty string is the unset default for Temporal too.
    data = rr.StartWorkflowExecutionRequest(namespace="ns", workflow_id="").SerializeToString()
    explicit_empty = data + b"\x12\x00"  # field 2, length 0
    assert reader.read(_info(WF + "StartWorkflowExecution"), explicit_empty) == ()


def test_last_occurrence_wins_and_messages_merge(reader: AttributeReader) -> None:
    info = _info(WF + "SignalWorkflowExecution")
    first = rr.SignalWorkflowExecutionRequest(
        workflow_execution=common.WorkflowExecution(workflow_id="first"), signal_name="a"
    ).SerializeToString()
    second = rr.SignalWorkflowExecutionRequest(
        workflow_execution=common.WorkflowExecution(run_id="r"), signal_name="b"
    ).SerializeToString()
    # The second workflow_execution merges into the first (keeps its workflow_id);
    # the string signal_name is replaced.
    assert reader.read(info, first + second) == (("workflowId", "first"), ("signalName", "b"))
    third = rr.SignalWorkflowExecutionRequest(
        workflow_execution=common.WorkflowExecution(workflow_id="third")
    ).SerializeToString()
    assert reader.read(info, first + third) == (("workflowId", "third"), ("signalName", "a"))
    # The same as Temporal's own parser sees it.
    parsed = rr.SignalWorkflowExecutionRequest.FromString(first + third)
    assert (parsed.workflow_execution.workflow_id, parsed.signal_name) == ("third", "a")


def test_invalid_utf8_on_a_path_is_malformed(reader: AttributeReader) -> None:
    info = _info(WF + "DescribeWorkflowExecution")
    bad = b"\x0a\x02ns" + b"\x12\x03\x0a\x01\xff"  # execution { workflow_id: 0xff }
    with pytest.raises(MalformedRequestError):
        reader.read(info, bad)
    with pytest.raises(MalformedRequestError):
        reader.read(info, b"\x12\x05\x0a\x09abc")  # nested length past the end


def test_fields_off_the_paths_are_not_read(reader: AttributeReader) -> None:
    info = _info(WF + "StartWorkflowExecution")
    data = rr.StartWorkflowExecutionRequest(
        namespace="ns",
        workflow_id="w",
        identity="x" * 100,
        input=common.Payloads(payloads=[common.Payload(data=b"\xff" * 64)]),
    ).SerializeToString()
    assert reader.read(info, data) == (("workflowId", "w"),)


def test_methods_without_attributes_read_nothing(reader: AttributeReader) -> None:
    assert reader.read(_info(WF + "ListNamespaces"), b"\xff\xff") == ()
    assert reader.read(_info(WF + "RespondActivityTaskCompleted"), b"\x0a\x01x") == ()


def test_attribute_names_are_the_documented_set() -> None:
    assert REQUEST_ATTRIBUTES == (
        "workflowId",
        "workflowType",
        "taskQueue",
        "scheduleId",
        "batchJobId",
        "updateName",
        "signalName",
        "queryType",
    )


# --- differential: the reader against Temporal's generated classes on hostile bytes ---

_FUZZ_METHODS = [
    "StartWorkflowExecution",
    "SignalWithStartWorkflowExecution",
    "UpdateWorkflowExecution",
    "CreateSchedule",
    "QueryWorkflow",
    "PollWorkflowExecutionUpdate",
]
_values = st.text(max_size=6)
_FUZZ_READER = AttributeReader(all_methods())  # hypothesis examples share one (it is immutable)


@st.composite
def _fragments(draw: st.DrawFn) -> tuple[str, bytes]:
    """A method and bytes: several partial requests concatenated, maybe with one byte changed."""
    method = draw(st.sampled_from(_FUZZ_METHODS))
    info = _info(WF + method)
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        message = _request_class(WF + method)()
        for _name, path in info.attributes:
            if draw(st.booleans()):
                _set_path(message, path, draw(_values))
        parts.append(message.SerializeToString())
    data = bytearray(b"".join(parts))
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return method, bytes(data)


def _read_like_temporal(method: str, data: bytes) -> tuple[tuple[str, str], ...] | None:
    try:
        message = _request_class(WF + method).FromString(data)
    except Exception:
        return None
    found = []
    for name, path in _info(WF + method).attributes:
        node: Any = message
        for number in path[:-1]:
            field = node.DESCRIPTOR.fields_by_number[number]
            if not node.HasField(field.name):
                break
            node = getattr(node, field.name)
        else:
            value = getattr(node, node.DESCRIPTOR.fields_by_number[path[-1]].name)
            if value:
                found.append((name, value))
    return tuple(found)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fragments())
def test_the_reader_agrees_with_the_full_parser(case: tuple[str, bytes]) -> None:
    method, data = case
    reader = _FUZZ_READER
    expected = _read_like_temporal(method, data)
    try:
        got = reader.read(_info(WF + method), data)
    except MalformedRequestError:
        # Only bytes the full parser refuses too: never deny what Temporal would accept.
        assert expected is None
        return
    if expected is not None:
        assert got == expected
