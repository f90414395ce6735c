"""Issue 3: Temporal-parity authorization on every call, against the real dev server.

Real tokens (RS256 and ES256) signed by the test run's keys, verified against a file:// JWKS;
the temporalio SDK in-process; raw gRPC where the bytes themselves are the point.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from temporalio.api.errordetails.v1 import PermissionDeniedFailure
from temporalio.api.operatorservice.v1 import ListClustersRequest, ListNexusEndpointsRequest
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetSystemInfoRequest,
    ListNamespacesRequest,
    ListWorkflowExecutionsRequest,
    StartWorkflowExecutionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from proxy.dev.pki import generate_key, mint_token, private_key_pem
from tests.e2e import sdk
from tests.e2e.echo import EchoUpstream
from tests.e2e.rig import (
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    deep_merge,
    jwt_authorization,
    mtls_channel,
    sample,
    wait_until,
)
from tests.e2e.workflows import GreetingWorkflow

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
DENIED = "Request unauthorized."
TYPE_URL = "type.googleapis.com/temporal.api.errordetails.v1.PermissionDeniedFailure"
DECISIONS = "temporal_auth_proxy_authz_decisions_total"
REQUESTS = "temporal_auth_proxy_requests_total"


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    """One JWT-enforcing proxy in front of the real dev server, shared by the module."""
    cfg = deep_merge(base_config(pki, terminator.port), {"authorization": jwt_authorization(pki)})
    proc = ProxyProcess(tmp_path_factory.mktemp("authz-proxy"), cfg)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.stop()


def _echo_proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, echo: EchoUpstream, mode: str
) -> ProxyProcess:
    cfg = deep_merge(
        base_config(pki, echo.port, internode=False),
        {"authorization": jwt_authorization(pki), "upstream": {"authorization": mode}},
    )
    # The echo answers Health/Check with JSON, so /readyz never turns 200: wait for /healthz,
    # then for the key set (a verified token reaching the echo).
    proc = ProxyProcess(tmp_path_factory.mktemp(f"echo-{mode}"), cfg, wait_ready=False)
    token = pki.token("default:read")

    def keys_loaded() -> bool:
        with channel(pki, proxy=proc) as ch:
            call(ch, "DescribeNamespace", describe("default"), token=token)
        return True

    wait_until(keys_loaded, 20, 0.1, "the echo proxy's key set")
    return proc


@pytest.fixture(scope="module")
def echo_forward(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, echo: EchoUpstream
) -> Iterator[ProxyProcess]:
    proc = _echo_proxy(tmp_path_factory, pki, echo, "forward")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def echo_strip(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, echo: EchoUpstream
) -> Iterator[ProxyProcess]:
    proc = _echo_proxy(tmp_path_factory, pki, echo, "strip")
    yield proc
    proc.stop()


# --------------------------------------------------------------------------------- helpers


def channel(pki: Pki, *, proxy: ProxyProcess) -> grpc.Channel:
    return mtls_channel(pki, proxy.address)


def call(
    ch: grpc.Channel,
    method: str,
    body: bytes,
    *,
    token: str | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    md = ((("authorization", f"Bearer {token}"),) if token else ()) + metadata
    response: bytes = ch.unary_unary(WF + method)(body, metadata=md, timeout=10)
    return response


def describe(namespace: str) -> bytes:
    return DescribeNamespaceRequest(namespace=namespace).SerializeToString()


def start_request(namespace: str) -> bytes:
    return StartWorkflowExecutionRequest(
        namespace=namespace, workflow_id=f"raw-{uuid.uuid4().hex[:8]}", request_id="r"
    ).SerializeToString()


def assert_permission_denied_details(raw_status: bytes) -> None:
    """The status carries exactly one PermissionDeniedFailure, as Temporal's own denial does."""
    status = status_pb2.Status.FromString(raw_status)
    assert status.code == 7
    assert status.message == DENIED
    assert len(status.details) == 1
    assert status.details[0].type_url == TYPE_URL
    failure = PermissionDeniedFailure()
    assert status.details[0].Unpack(failure)


def assert_sdk_denied(err: RPCError) -> None:
    """What an SDK user sees: RPCError, PERMISSION_DENIED, the generic message and detail."""
    assert err.status == RPCStatusCode.PERMISSION_DENIED
    assert err.message == DENIED
    assert err.grpc_status.code == 7
    assert len(err.grpc_status.details) == 1
    detail = err.grpc_status.details[0]
    assert detail.type_url == TYPE_URL
    failure = PermissionDeniedFailure()
    assert detail.Unpack(failure)
    assert failure.reason == ""


def assert_grpc_denied(err: grpc.RpcError) -> None:
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == DENIED
    trailers = dict(err.trailing_metadata() or ())
    assert_permission_denied_details(trailers["grpc-status-details-bin"])


async def denied(awaitable: Any) -> RPCError:
    with pytest.raises(RPCError) as caught:
        await awaitable
    assert_sdk_denied(caught.value)
    return caught.value


def grpc_denied(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn()
    assert_grpc_denied(caught.value)
    return caught.value


async def start(client: Client) -> Any:
    return await client.start_workflow(
        GreetingWorkflow.run, "x", id=f"wf-{uuid.uuid4().hex[:8]}", task_queue="nowhere"
    )


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return sample(proxy.metrics(), name, **labels) or 0.0


def events(proxy: ProxyProcess, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in proxy.events()
        if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str, **claims: Any) -> str:
    """The same header and signature over a payload with some claims replaced."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    return ".".join([header, b64url(json.dumps(body).encode()), signature])


# --------------------------------------------------------------------- roles through the SDK


async def test_writer_runs_a_workflow_in_its_namespace_and_is_denied_in_another(
    proxy: ProxyProcess, pki: Pki
) -> None:
    token = pki.token("default:write", subject="writer")
    client = await sdk.connect(pki, proxy.address, token=token)
    assert await sdk.run_greeting(client, "writer") == "Hello, writer!"

    other = await sdk.connect(pki, proxy.address, namespace="other", token=token)
    await denied(start(other))
    await denied(
        other.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="other"))
    )


async def test_reader_can_describe_and_list_but_not_start(proxy: ProxyProcess, pki: Pki) -> None:
    client = await sdk.connect(pki, proxy.address, token=pki.token("default:read"))
    info = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default")
    )
    assert info.namespace_info.name == "default"
    listed = await client.workflow_service.list_workflow_executions(
        ListWorkflowExecutionsRequest(namespace="default", page_size=1)
    )
    assert listed is not None
    await denied(start(client))


async def test_namespace_admin_cannot_do_cluster_scope_calls_and_system_admin_can(
    proxy: ProxyProcess, pki: Pki
) -> None:
    ns_admin = await sdk.connect(pki, proxy.address, token=pki.token("default:admin"))
    # A namespace admin is an admin in its namespace...
    await ns_admin.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default")
    )
    # ...and nobody at cluster scope.
    await denied(ns_admin.workflow_service.list_namespaces(ListNamespacesRequest()))
    await denied(ns_admin.operator_service.list_clusters(ListClustersRequest()))
    await denied(ns_admin.operator_service.list_nexus_endpoints(ListNexusEndpointsRequest()))

    system = await sdk.connect(pki, proxy.address, token=pki.token("temporal-system:admin"))
    namespaces = await system.workflow_service.list_namespaces(ListNamespacesRequest())
    assert {"default", "other"} <= {n.namespace_info.name for n in namespaces.namespaces}
    clusters = await system.operator_service.list_clusters(ListClustersRequest())
    assert len(clusters.clusters) >= 1
    await system.operator_service.list_nexus_endpoints(ListNexusEndpointsRequest())
    # The system role applies in every namespace.
    other = await sdk.connect(
        pki, proxy.address, namespace="other", token=pki.token("temporal-system:admin")
    )
    await start(other)


async def test_es256_tokens_work_like_rs256_ones(proxy: ProxyProcess, pki: Pki) -> None:
    writer = await sdk.connect(pki, proxy.address, token=pki.ec_token("default:write"))
    handle = await start(writer)
    assert (await handle.describe()).id == handle.id
    reader = await sdk.connect(pki, proxy.address, token=pki.ec_token("default:read"))
    await reader.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    await denied(start(reader))


async def test_without_a_token_only_the_health_apis_pass(proxy: ProxyProcess, pki: Pki) -> None:
    before = metric(proxy, DECISIONS, decision="deny", reason="insufficient_role", auth_type="none")
    # The SDK's connect calls GetSystemInfo: allowed without a token.
    client = await sdk.connect(pki, proxy.address)
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version
    await denied(
        client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    )
    await denied(
        client.workflow_service.list_workflow_executions(
            ListWorkflowExecutionsRequest(namespace="default")
        )
    )
    await denied(start(client))
    # requireClientAuth: every caller has a verified certificate, so no token means empty JWT
    # claims (Temporal's mapper), not anonymous; labelled `none`: no credential counted.
    after = metric(proxy, DECISIONS, decision="deny", reason="insufficient_role", auth_type="none")
    assert after - before == 3


# ------------------------------------------------------------------------ bad credentials


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda pki: pki.token("default:write", ttl=-1), "token_expired"),
        (
            lambda pki: mint_token(
                private_key_pem(generate_key("rsa")),
                kid="rsa-unknown",
                subject="mallory",
                permissions=["default:write"],
            ),
            "unknown_key",
        ),
        (
            lambda pki: mint_token(
                private_key_pem(generate_key("rsa")),
                kid=pki.rsa_kid,
                subject="mallory",
                permissions=["default:write"],
            ),
            "bad_signature",
        ),
        (
            lambda pki: tampered(pki.token("default:read"), permissions=["temporal-system:admin"]),
            "bad_signature",
        ),
    ],
    ids=["expired", "unknown-kid", "foreign-key-known-kid", "tampered-payload"],
)
def test_bad_tokens_are_denied_and_logged_without_the_token(
    proxy: ProxyProcess, pki: Pki, make_token: Callable[[Pki], str], reason: str
) -> None:
    token = make_token(pki)
    before = len(events(proxy, "claims_failed", reason=reason))
    counted = metric(proxy, DECISIONS, decision="deny", reason=reason, auth_type="none")
    with channel(pki, proxy=proxy) as ch:
        grpc_denied(lambda: call(ch, "DescribeNamespace", describe("default"), token=token))
        # A bad token fails even the always-allowed GetSystemInfo, as in Temporal: the claim
        # mapper runs before the authorizer.
        grpc_denied(lambda: call(ch, "GetSystemInfo", b"", token=token))

    def logged() -> bool:
        return len(events(proxy, "claims_failed", reason=reason)) == before + 2

    wait_until(logged, 5, 0.05, "claims_failed events")
    event = events(proxy, "claims_failed", reason=reason)[-1]
    assert event["method"] == "GetSystemInfo"
    assert metric(proxy, DECISIONS, decision="deny", reason=reason, auth_type="none") == counted + 2
    logs = proxy.logs()
    header, payload, signature = token.split(".")
    assert token not in logs
    for segment in (signature, payload, header):
        assert segment not in logs


async def test_bad_token_reaches_the_sdk_as_permission_denied(
    proxy: ProxyProcess, pki: Pki
) -> None:
    """An expired token: even connect (GetSystemInfo) is refused, as by Temporal itself."""
    with pytest.raises(RuntimeError) as caught:  # the SDK's connect wraps the gRPC status
        await sdk.connect(pki, proxy.address, token=pki.token("default:write", ttl=-1))
    text = str(caught.value)
    assert "get_system_info" in text
    assert "PermissionDenied" in text
    assert f'message: "{DENIED}"' in text
    assert TYPE_URL in text


# ---------------------------------------------------------------------- logs and metrics


async def test_a_denial_is_logged_with_its_reason_and_counted(
    proxy: ProxyProcess, pki: Pki
) -> None:
    subject = f"reader-{uuid.uuid4().hex[:8]}"
    labels = {"decision": "deny", "reason": "insufficient_role", "auth_type": "jwt"}
    decisions_before = metric(proxy, DECISIONS, **labels)
    requests_before = metric(
        proxy, REQUESTS, method="StartWorkflowExecution", code="PERMISSION_DENIED"
    )
    ok_before = metric(proxy, REQUESTS, method="DescribeNamespace", code="OK")

    client = await sdk.connect(pki, proxy.address, token=pki.token("default:read", subject=subject))
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    await denied(start(client))

    wait_until(lambda: events(proxy, "authz_denied", subject=subject), 5, 0.05, "authz_denied")
    (event,) = events(proxy, "authz_denied", subject=subject)
    assert event["auth_type"] == "jwt"
    assert event["method"] == "StartWorkflowExecution"
    assert event["namespace"] == "default"
    assert event["reason"] == "insufficient_role"
    assert event["level"] == "warning"
    assert metric(proxy, DECISIONS, **labels) == decisions_before + 1
    assert (
        metric(proxy, REQUESTS, method="StartWorkflowExecution", code="PERMISSION_DENIED")
        == requests_before + 1
    )
    assert metric(proxy, REQUESTS, method="DescribeNamespace", code="OK") == ok_before + 1


# ------------------------------------------------------------- what reaches the upstream


PRINCIPAL = (("temporal-principal-type", "jwt"), ("temporal-principal-name", "root"))


def echoed(ch: grpc.Channel, method: str, body: bytes, token: str) -> dict[str, Any]:
    metadata = (("authorization-extras", "extra-value"), *PRINCIPAL)
    reply: dict[str, Any] = json.loads(call(ch, method, body, token=token, metadata=metadata))
    return reply


@pytest.mark.parametrize("method", ["GetSystemInfo", "DescribeNamespace"])
def test_forward_relays_the_auth_headers_but_never_principal_headers(
    echo_forward: ProxyProcess, pki: Pki, method: str
) -> None:
    token = pki.token("default:read")
    with channel(pki, proxy=echo_forward) as ch:
        reply = echoed(ch, method, describe("default") if method != "GetSystemInfo" else b"", token)
    md = dict(reply["metadata"])
    assert reply["method"] == WF + method
    assert md["authorization"] == f"Bearer {token}"
    assert md["authorization-extras"] == "extra-value"
    assert "temporal-principal-type" not in md
    assert "temporal-principal-name" not in md


@pytest.mark.parametrize("method", ["GetSystemInfo", "DescribeNamespace"])
def test_strip_keeps_the_token_from_the_upstream(
    echo_strip: ProxyProcess, pki: Pki, method: str
) -> None:
    token = pki.token("default:read")
    with channel(pki, proxy=echo_strip) as ch:
        reply = echoed(ch, method, describe("default") if method != "GetSystemInfo" else b"", token)
    names = {k for k, _ in reply["metadata"]}
    assert reply["method"] == WF + method
    assert "authorization" not in names
    assert "authorization-extras" not in names
    assert "temporal-principal-type" not in names
    assert "temporal-principal-name" not in names
    assert token not in json.dumps(reply)
    # The token was still checked: a reader cannot start, stripped or not.
    with channel(pki, proxy=echo_strip) as ch:
        grpc_denied(
            lambda: call(ch, "StartWorkflowExecution", start_request("default"), token=token)
        )


@pytest.mark.parametrize("method", ["StartWorkflowExecution", "DescribeNamespace"])
def test_repeated_namespace_field_the_last_occurrence_decides(
    echo_forward: ProxyProcess, pki: Pki, method: str
) -> None:
    token = pki.token("default:write")
    one = start_request if method == "StartWorkflowExecution" else describe
    smuggled = one("default") + one("other")  # protobuf: namespace == "other"
    honest = one("other") + one("default")  # protobuf: namespace == "default"
    with channel(pki, proxy=echo_forward) as ch:
        # The echo never answers PERMISSION_DENIED: this one was refused by the proxy.
        grpc_denied(lambda: call(ch, method, smuggled, token=token))
        reply = json.loads(call(ch, method, honest, token=token))
    assert bytes.fromhex(reply["request"]) == honest  # forwarded, byte for byte
    events_ = events(echo_forward, "authz_denied", method=method, namespace="other")
    assert events_, "the denial names the namespace protobuf would read"


@pytest.mark.parametrize(
    "body",
    [b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x0f"],
    ids=["truncated", "invalid-utf8-namespace", "bad-wire-type"],
)
def test_a_malformed_request_is_denied_before_forwarding(
    echo_forward: ProxyProcess, pki: Pki, body: bytes
) -> None:
    before = metric(echo_forward, DECISIONS, decision="deny", reason="malformed_request")
    with channel(pki, proxy=echo_forward) as ch:
        # With a system admin token: nothing but the body is wrong. Were it forwarded, the echo
        # would answer NOT_FOUND "echo failure" as this header asks.
        err = grpc_denied(
            lambda: call(
                ch,
                "StartWorkflowExecution",
                body,
                token=pki.token("temporal-system:admin"),
                metadata=(("x-echo-fail", "NOT_FOUND"),),
            )
        )
    assert err.details() == DENIED
    after = metric(echo_forward, DECISIONS, decision="deny", reason="malformed_request")
    assert after == before + 1
