"""Bytes, metadata, trailers, status details and deadlines pass through unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.e2e.echo import BIN_TRAILER, STATUS_DETAILS, EchoUpstream
from tests.e2e.rig import Pki, TLSTerminator, mtls_channel, wait_until

DESCRIBE_NS = "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace"
GET_SYSTEM_INFO = "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo"


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.stop()


channel = mtls_channel


def test_request_response_and_metadata_are_relayed_unchanged(start_proxy, pki: Pki, echo) -> None:
    proxy = start_proxy(internode=False, upstream_port=echo.port)
    request = bytes.fromhex("0a0764656661756c74")  # DescribeNamespaceRequest{namespace: "default"}
    binary = bytes(range(256))
    with channel(pki, proxy.address) as ch:
        response, call = ch.unary_unary(DESCRIBE_NS).with_call(
            request,
            metadata=(
                ("x-tenant", "acme"),
                ("x-repeated", "one"),
                ("x-repeated", "two"),
                ("x-data-bin", binary),
                ("temporal-principal-type", "forged"),
                ("temporal-principal-name", "root"),
            ),
            timeout=10,
        )
        initial = dict(call.initial_metadata())
        trailing = list(call.trailing_metadata())
    seen = json.loads(response)
    assert seen["method"] == DESCRIBE_NS
    assert bytes.fromhex(seen["request"]) == request
    md = seen["metadata"]
    assert ["x-tenant", "acme"] in md
    assert [v for k, v in md if k == "x-repeated"] == ["one", "two"]
    assert ["x-data-bin", binary.hex()] in md
    assert not [k for k, _ in md if k.startswith("temporal-principal")]
    assert initial.get("x-echo-initial") == "hello"
    assert ("x-echo-trailer", "bye") in trailing
    assert ("x-echo-trailer-bin", BIN_TRAILER) in trailing


def test_deadline_propagates_and_expires(start_proxy, pki: Pki, echo) -> None:
    proxy = start_proxy(internode=False, upstream_port=echo.port)
    with channel(pki, proxy.address) as ch:
        seen = json.loads(ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=3.0))
        assert seen["time_remaining"] is not None and 1.0 < seen["time_remaining"] <= 3.1
        unbounded = json.loads(ch.unary_unary(GET_SYSTEM_INFO)(b""))
        assert unbounded["time_remaining"] is None or unbounded["time_remaining"] > 1e6
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=0.5, metadata=(("x-echo-sleep", "3"),))
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    "code",
    ["NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"],
)
def test_upstream_errors_pass_through_with_details(start_proxy, pki: Pki, echo, code: str) -> None:
    proxy = start_proxy(internode=False, upstream_port=echo.port)
    with channel(pki, proxy.address) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5, metadata=(("x-echo-fail", code),))
    err = caught.value
    assert err.code() is grpc.StatusCode[code]
    assert err.details() == "echo failure"
    trailers = dict(err.trailing_metadata())
    assert trailers["grpc-status-details-bin"] == STATUS_DETAILS
    assert trailers["x-echo-trailer"] == "failed"


def test_upstream_down_gives_unavailable_and_the_proxy_recovers(
    start_proxy, pki: Pki, temporal
) -> None:
    term = TLSTerminator(pki, temporal.port)
    try:
        proxy = start_proxy(upstream_port=term.port)
        with channel(pki, proxy.address) as ch:
            assert ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
            term.stop()
            with pytest.raises(grpc.RpcError) as caught:
                ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            wait_until(lambda: proxy.get("/readyz")[0] == 503, 10, what="readiness to drop")
            term.start()
            wait_until(
                lambda: ch.unary_unary(GET_SYSTEM_INFO)(b"", timeout=2),
                20,
                what="the proxy to reconnect upstream",
            )
            wait_until(proxy.ready, 10, what="readiness to return")
        assert proxy.proc.poll() is None
    finally:
        term.stop()
