"""proxy.wire.write: the bytes the proxy builds by hand, decoded by the real message types."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st
from temporalio.api.errordetails.v1 import PermissionDeniedFailure
from temporalio.api.workflowservice.v1 import ListNamespacesRequest

from proxy.methods import WORKFLOW_SERVICE
from proxy.wire.read import read_varint
from proxy.wire.write import (
    DENIED_MESSAGE,
    HEALTH_REQUEST,
    PERMISSION_DENIED_TYPE_URL,
    denial_status_bytes,
    encode_len_field,
    encode_varint,
    health_serving,
)


def _health_types() -> tuple[type[Message], type[Message]]:
    """grpc.health.v1's two messages, from health.proto's definition (the package that ships
    them, grpcio-health-checking, is not a dependency)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    req = fdp.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=9, label=1)  # string
    resp = fdp.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=name, number=number)
    resp.field.add(
        name="status",
        number=1,
        type=14,  # enum
        label=1,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
        ),
    )


HealthCheckRequest, HealthCheckResponse = _health_types()


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trips_through_the_reader(n: int) -> None:
    data = encode_varint(n)
    assert read_varint(data, 0) == (n, len(data))


@given(st.integers(min_value=0, max_value=2**31 - 1), st.binary(max_size=300))
def test_len_field_is_what_protobuf_writes(page_size: int, token: bytes) -> None:
    ours = encode_varint(1 << 3) + encode_varint(page_size) if page_size else b""
    ours += encode_len_field(2, token) if token else b""
    msg = ListNamespacesRequest(page_size=page_size, next_page_token=token)
    assert ours == msg.SerializeToString()


@pytest.mark.parametrize("reason", ["", "why", "x" * 300])
def test_denial_status_decodes_as_google_rpc_status(reason: str) -> None:
    status = status_pb2.Status.FromString(denial_status_bytes(reason))
    assert status.code == 7 and status.message == DENIED_MESSAGE == "Request unauthorized."
    assert [d.type_url for d in status.details] == [PERMISSION_DENIED_TYPE_URL]
    failure = PermissionDeniedFailure()
    assert status.details[0].Unpack(failure)
    assert failure.reason == reason
    assert status.SerializeToString() == denial_status_bytes(reason)


def test_health_request_asks_for_the_workflow_service() -> None:
    req = HealthCheckRequest.FromString(HEALTH_REQUEST)
    assert req.service == WORKFLOW_SERVICE  # type: ignore[attr-defined]
    assert HealthCheckRequest(service=WORKFLOW_SERVICE).SerializeToString() == HEALTH_REQUEST


@pytest.mark.parametrize(("status", "serving"), [(0, False), (1, True), (2, False), (3, False)])
def test_health_serving_reads_the_response(status: int, serving: bool) -> None:
    reply = HealthCheckResponse(status=status).SerializeToString()
    assert health_serving(reply) is serving
