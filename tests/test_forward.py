"""proxy.forward through real sockets: a grpc.aio server with the ForwardingHandler in front of
a small grpc.aio upstream on 127.0.0.1 that reflects what reached it. No patching."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry
from temporalio.api.errordetails.v1 import PermissionDeniedFailure
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    StartWorkflowExecutionRequest,
)

from proxy import methods
from proxy.audit import AuditLog
from proxy.authz import DefaultAuthorizer
from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.config.schema import AuditConfig
from proxy.dev.pki import generate_key, mint_token, private_key_pem
from proxy.forward import UNAVAILABLE_MESSAGE, ForwardingHandler, UpstreamPool
from proxy.gate import Gate, Mode
from proxy.keys.jwks import StaticKeyProvider
from proxy.metrics import ProxyMetrics
from proxy.wire.write import DENIED_MESSAGE, denial_status_bytes

LOOPBACK = "127.0.0.1"
WF = methods.WORKFLOW_SERVICE_PREFIX
START = WF + "StartWorkflowExecution"
DESCRIBE = WF + "DescribeNamespace"
KID = "k1"
_KEY = generate_key("rsa")
_PEM = private_key_pem(_KEY)
STATUS_DETAILS = b"\x08\x05\x12\x0cecho failure"  # google.rpc.Status{code: 5, message}
BIN_TRAILER = bytes(range(256))


def bearer(*permissions: str) -> str:
    return "Bearer " + mint_token(_PEM, kid=KID, subject="alice", permissions=permissions)


def start_request(namespace: str = "ns1") -> bytes:
    return StartWorkflowExecutionRequest(namespace=namespace, workflow_id="wf").SerializeToString()


class _Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Any method: JSON of the metadata, request bytes and remaining deadline it got (as
    tests/e2e/echo.py); `x-echo-fail: CODE` fails with details and trailers."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        method = details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls += 1
            md = [
                (k, v.hex() if isinstance(v, bytes) else v)
                for k, v in context.invocation_metadata() or ()
            ]
            fail = dict(md).get("x-echo-fail")
            if fail:
                await context.abort(
                    grpc.StatusCode[fail],
                    "echo failure",
                    (("grpc-status-details-bin", STATUS_DETAILS), ("x-echo-trailer", "failed")),
                )
            await context.send_initial_metadata((("x-echo-initial", "hello"),))
            context.set_trailing_metadata(
                (("x-echo-trailer", "bye"), ("x-echo-trailer-bin", BIN_TRAILER))
            )
            return json.dumps(
                {
                    "method": method,
                    "metadata": md,
                    "request": request.hex(),
                    "time_remaining": context.time_remaining(),
                }
            ).encode()

        return grpc.unary_unary_rpc_method_handler(handle)


@dataclass
class Rig:
    channel: grpc.aio.Channel
    echo: _Echo
    audit: io.StringIO

    async def call(
        self,
        method: str,
        request: bytes,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
        timeout: float | None = 5.0,
    ) -> tuple[dict[str, Any], grpc.aio.UnaryUnaryCall]:
        call = self.channel.unary_unary(method)(request, metadata=metadata, timeout=timeout)
        reply: bytes = await call
        return json.loads(reply), call

    async def fail(
        self, method: str, request: bytes, metadata: tuple[tuple[str, str | bytes], ...] = ()
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.channel.unary_unary(method)(request, metadata=metadata, timeout=5.0)
        return info.value

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines() if line]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there any more


class _Quiet:
    def debug(self, event: str, **kw: Any) -> None: ...
    def info(self, event: str, **kw: Any) -> None: ...
    def warning(self, event: str, **kw: Any) -> None: ...
    def error(self, event: str, **kw: Any) -> None: ...


@contextlib.asynccontextmanager
async def rig(
    *, strip: bool = False, upstream: bool = True, mode: Mode = "enforce"
) -> AsyncIterator[Rig]:
    echo = _Echo()
    up = grpc.aio.server()
    up.add_generic_rpc_handlers((echo,))
    up_port = up.add_insecure_port(f"{LOOPBACK}:0") if upstream else _closed_port()
    if upstream:
        await up.start()
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, method_names=[m.short_name for m in methods.all_methods()])
    gate = Gate(
        claim_mapper=DefaultJWTClaimMapper(StaticKeyProvider({KID: _KEY.public_key()})),
        authorizer=DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS),
        metrics=metrics,
        logger=_Quiet(),
        mode=mode,
    )
    pool = UpstreamPool(lambda: grpc.aio.insecure_channel(f"{LOOPBACK}:{up_port}"), 1)
    audit = io.StringIO()
    handler = ForwardingHandler(
        gate=gate,
        pool=pool,
        metrics=metrics,
        logger=_Quiet(),
        lookup=methods.lookup,
        is_forwarded=methods.is_forwarded,
        strip_authorization=strip,
        audit=AuditLog(AuditConfig(enabled=True, repeat_interval=0.0), audit),
    )
    front = grpc.aio.server()
    front.add_generic_rpc_handlers((handler,))
    port = front.add_insecure_port(f"{LOOPBACK}:0")
    await front.start()
    channel = grpc.aio.insecure_channel(
        f"{LOOPBACK}:{port}", options=[("grpc.primary_user_agent", "caller-agent/1")]
    )
    try:
        yield Rig(channel=channel, echo=echo, audit=audit)
    finally:
        await channel.close()
        await front.stop(0)
        await pool.close(0)
        await up.stop(0)


async def test_metadata_is_relayed_without_hop_by_hop_headers() -> None:
    async with rig() as r:
        token = bearer("ns1:write")
        got, _ = await r.call(
            START,
            start_request(),
            (
                ("authorization", token),
                ("authorization-extras", "extra"),
                ("x-custom", "v1"),
                ("x-custom", "v2"),
                ("x-blob-bin", b"\x00\xff"),
                ("temporal-principal-type", "admin"),
                ("temporal-principal-name", "root"),
            ),
        )
    md = [tuple(kv) for kv in got["metadata"]]
    keys = [k for k, _ in md]
    assert ("x-custom", "v1") in md and ("x-custom", "v2") in md
    assert ("x-blob-bin", "00ff") in md
    # Only the server may assert a principal; the caller's user agent stays on its hop.
    assert not [k for k in keys if k.startswith("temporal-principal-")]
    assert all("caller-agent" not in v for k, v in md if k == "user-agent")
    assert ("authorization", token) in md and ("authorization-extras", "extra") in md
    assert got["request"] == start_request().hex() and got["method"] == START


async def test_strip_removes_the_auth_headers_upstream() -> None:
    async with rig(strip=True) as r:
        got, _ = await r.call(
            START,
            start_request(),
            (("authorization", bearer("ns1:write")), ("authorization-extras", "e"), ("x-a", "b")),
        )
    keys = [k for k, _ in got["metadata"]]
    assert "authorization" not in keys and "authorization-extras" not in keys
    assert "x-a" in keys


async def test_deadline_is_propagated() -> None:
    async with rig() as r:
        md = (("authorization", bearer("ns1:write")),)
        got, _ = await r.call(START, start_request(), md, timeout=4.0)
        assert 2.0 < got["time_remaining"] <= 4.0
        unbounded, _ = await r.call(START, start_request(), md, timeout=None)
    assert unbounded["time_remaining"] is None or unbounded["time_remaining"] > 1e6


async def test_status_details_and_trailers_are_relayed() -> None:
    async with rig() as r:
        md = (("authorization", bearer("ns1:write")),)
        _, call = await r.call(START, start_request(), md)
        initial = tuple(await call.initial_metadata())
        trailing = tuple(await call.trailing_metadata())
        assert ("x-echo-initial", "hello") in initial
        assert ("x-echo-trailer", "bye") in trailing
        assert ("x-echo-trailer-bin", BIN_TRAILER) in trailing
        err = await r.fail(START, start_request(), (*md, ("x-echo-fail", "NOT_FOUND")))
    assert err.code() is grpc.StatusCode.NOT_FOUND and err.details() == "echo failure"
    trailers = tuple(err.trailing_metadata() or ())
    assert ("grpc-status-details-bin", STATUS_DETAILS) in trailers
    assert ("x-echo-trailer", "failed") in trailers


async def test_denial_carries_the_status_bytes_and_never_reaches_upstream() -> None:
    async with rig() as r:
        err = await r.fail(START, start_request("ns2"), (("authorization", bearer("ns1:write")),))
        no_token = await r.fail(START, start_request())
        calls = r.echo.calls
        records = r.audit_records()
    for e in (err, no_token):
        assert e.code() is grpc.StatusCode.PERMISSION_DENIED and e.details() == DENIED_MESSAGE
        details = dict(e.trailing_metadata() or ())["grpc-status-details-bin"]
        assert details == denial_status_bytes()
        status = status_pb2.Status.FromString(details)
        assert status.code == 7 and status.message == DENIED_MESSAGE
        failure = PermissionDeniedFailure()
        assert status.details[0].Unpack(failure)
    assert calls == 0
    assert [(x["decision"], x["mode"]) for x in records] == [("deny", "enforce")] * 2


async def test_shadow_mode_forwards_and_audits_from_the_gate_mode() -> None:
    async with rig(mode="shadow") as r:
        got, _ = await r.call(START, start_request("ns2"), (("authorization", bearer("ns1:read")),))
        records = r.audit_records()
    assert got["method"] == START and r.echo.calls == 1
    assert [(x["decision"], x["mode"]) for x in records] == [("deny", "shadow")]


async def test_upstream_down_is_unavailable_with_a_sanitized_message() -> None:
    async with rig(upstream=False) as r:
        err = await r.fail(START, start_request(), (("authorization", bearer("ns1:write")),))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.details() == UNAVAILABLE_MESSAGE


async def test_unknown_methods() -> None:
    async with rig() as r:
        admin = bearer("temporal-system:admin")
        # Not in the table and not a service the proxy forwards: UNIMPLEMENTED, nothing relayed.
        stranger = await r.fail("/foo.Bar/Baz", b"", (("authorization", admin),))
        # An unknown WorkflowService name: the table has no row, so it is not forwarded either.
        unknown_wf = await r.fail(WF + "NoSuchMethod", b"", (("authorization", admin),))
        # Unknown AdminService names are forwarded (Temporal's rule) and need a system admin.
        name = methods.ADMIN_SERVICE_PREFIX + "NoSuchMethod"
        denied = await r.fail(name, b"", (("authorization", bearer("ns1:admin")),))
        relayed, _ = await r.call(name, b"", (("authorization", admin),))
        # A known read method allowed by the table for a reader.
        describe = DescribeNamespaceRequest(namespace="ns1").SerializeToString()
        read, _ = await r.call(DESCRIBE, describe, (("authorization", bearer("ns1:read")),))
        calls = r.echo.calls
    assert stranger.code() is grpc.StatusCode.UNIMPLEMENTED
    assert unknown_wf.code() is grpc.StatusCode.UNIMPLEMENTED
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    assert relayed["method"] == name and read["method"] == DESCRIBE
    assert calls == 2
