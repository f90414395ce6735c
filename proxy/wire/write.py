"""Writing the few protobuf messages the proxy builds itself: varint and length-delimited
fields, the denial's `grpc-status-details-bin`, the upstream health check.

Encoded by hand: the runtime needs neither googleapis-common-protos nor temporalio, and each
message is a handful of bytes built once (tests decode them with the real message types).
"""

from __future__ import annotations

from proxy.methods import WORKFLOW_SERVICE

__all__ = [
    "DENIED_MESSAGE",
    "HEALTH_REQUEST",
    "PERMISSION_DENIED_CODE",
    "PERMISSION_DENIED_TYPE_URL",
    "denial_status_bytes",
    "encode_len_field",
    "encode_varint",
    "health_serving",
]

DENIED_MESSAGE = "Request unauthorized."
PERMISSION_DENIED_CODE = 7
PERMISSION_DENIED_TYPE_URL = (
    "type.googleapis.com/temporal.api.errordetails.v1.PermissionDeniedFailure"
)


def encode_varint(n: int) -> bytes:
    """`n` (non-negative) as a protobuf varint."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_len_field(number: int, payload: bytes) -> bytes:
    """Field `number` with wire type LEN (string, bytes, sub-message) holding `payload`."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def denial_status_bytes(reason: str = "") -> bytes:
    """`google.rpc.Status{code: 7, message, details: [Any(PermissionDeniedFailure{reason})]}`."""
    failure = encode_len_field(1, reason.encode()) if reason else b""
    any_msg = encode_len_field(1, PERMISSION_DENIED_TYPE_URL.encode()) + (
        encode_len_field(2, failure) if failure else b""
    )
    return (
        encode_varint(1 << 3 | 0)
        + encode_varint(PERMISSION_DENIED_CODE)
        + encode_len_field(2, DENIED_MESSAGE.encode())
        + encode_len_field(3, any_msg)
    )


# grpc.health.v1.HealthCheckRequest{service: "temporal.api.workflowservice.v1.WorkflowService"}
HEALTH_REQUEST = encode_len_field(1, WORKFLOW_SERVICE.encode())
# HealthCheckResponse{status: SERVING (1)}
_HEALTH_SERVING = encode_varint(1 << 3 | 0) + encode_varint(1)


def health_serving(reply: bytes) -> bool:
    """Whether a HealthCheckResponse says SERVING (exactly as the proxy has always checked)."""
    return reply == _HEALTH_SERVING
