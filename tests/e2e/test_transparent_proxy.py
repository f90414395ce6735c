"""Issue 2: a transparent mTLS proxy in front of a real Temporal frontend (noop authorization)."""

from __future__ import annotations

import uuid

import grpc
import pytest
from temporalio.client import WorkflowFailureError  # noqa: F401 - typed errors below
from temporalio.exceptions import WorkflowAlreadyStartedError

from tests.e2e import sdk
from tests.e2e.rig import Pki, cli, mtls_channel
from tests.e2e.workflows import GreetingWorkflow


def test_cli_starts_and_lists_workflows_through_the_proxy(start_proxy, pki: Pki) -> None:
    proxy = start_proxy()
    wf_id = f"cli-{uuid.uuid4().hex[:8]}"
    started = cli(
        pki,
        proxy.address,
        "workflow",
        "start",
        "--type",
        "Nothing",
        "--task-queue",
        "nowhere",
        "--workflow-id",
        wf_id,
        "--namespace",
        "default",
    )
    assert started.returncode == 0, started.stderr
    described = cli(
        pki,
        proxy.address,
        "workflow",
        "describe",
        "--workflow-id",
        wf_id,
        "--namespace",
        "default",
        "-o",
        "json",
    )
    assert described.returncode == 0, described.stderr
    assert wf_id in described.stdout
    listed = cli(
        pki,
        proxy.address,
        "workflow",
        "list",
        "--namespace",
        "default",
        "--query",
        f"WorkflowId = '{wf_id}'",
    )
    assert listed.returncode == 0, listed.stderr
    namespaces = cli(pki, proxy.address, "operator", "namespace", "list")
    assert namespaces.returncode == 0 and "default" in namespaces.stdout


async def test_sdk_worker_runs_a_workflow_with_an_activity(start_proxy, pki: Pki) -> None:
    proxy = start_proxy()
    client = await sdk.connect(pki, proxy.address)
    assert await sdk.run_greeting(client, "mTLS") == "Hello, mTLS!"


async def test_already_started_reaches_the_sdk_as_its_typed_exception(
    start_proxy, pki: Pki
) -> None:
    proxy = start_proxy()
    client = await sdk.connect(pki, proxy.address)
    wf_id = f"dup-{uuid.uuid4().hex[:8]}"
    await client.start_workflow(GreetingWorkflow.run, "x", id=wf_id, task_queue="nowhere")
    with pytest.raises(WorkflowAlreadyStartedError) as caught:
        await client.start_workflow(GreetingWorkflow.run, "x", id=wf_id, task_queue="nowhere")
    assert caught.value.workflow_id == wf_id


_grpc_channel = mtls_channel


GET_SYSTEM_INFO = "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo"


@pytest.mark.parametrize("cert", [None, "rogue"], ids=["no-certificate", "other-ca"])
def test_clients_without_a_trusted_certificate_are_refused(start_proxy, pki: Pki, cert) -> None:
    proxy = start_proxy()
    with (
        _grpc_channel(pki, proxy.address, cert) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    result = cli(pki, proxy.address, "operator", "namespace", "list", cert=cert or "")
    assert result.returncode != 0
    # The trusted client still works on the same listener.
    with _grpc_channel(pki, proxy.address, "client") as channel:
        assert channel.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5) is not None


def test_wrong_upstream_server_name_fails_calls_and_the_right_one_works(
    start_proxy, pki: Pki
) -> None:
    wrong = start_proxy(
        {"tls": {"internode": {"client": {"serverName": "wrong.test"}}}}, wait_ready=False
    )
    with (
        _grpc_channel(pki, wrong.address, "client") as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "upstream unavailable" in (caught.value.details() or "")
    assert wrong.get("/readyz")[0] == 503
    right = start_proxy()
    with _grpc_channel(pki, right.address, "client") as channel:
        assert channel.unary_unary(GET_SYSTEM_INFO)(b"", timeout=10) is not None


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/temporal.api.workflowservice.v1.WorkflowService/NoSuchMethod",
        "/temporal.api.nexusservice.v1.NexusService/DispatchNexusTask",
        "/some.Other/Thing",
    ],
)
def test_methods_outside_the_table_get_a_clean_error(start_proxy, pki: Pki, method: str) -> None:
    proxy = start_proxy()
    with _grpc_channel(pki, proxy.address, "client") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(method)(b"", timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        # ...and the proxy is still serving.
        assert channel.unary_unary(GET_SYSTEM_INFO)(b"", timeout=5) is not None
