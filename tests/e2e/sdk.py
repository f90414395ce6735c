"""Connecting the real temporalio SDK through the proxy."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from tests.e2e.rig import PROXY_NAME, Pki
from tests.e2e.workflows import GreetingWorkflow, greet


async def connect(
    pki: Pki,
    address: str,
    *,
    namespace: str = "default",
    token: str | None = None,
    cert: str = "client",
    headers: Mapping[str, str] | None = None,
    data_converter: DataConverter | None = None,
) -> Client:
    tls = TLSConfig(
        server_root_ca_cert=pki.read("ca.pem"),
        client_cert=pki.read(f"{cert}.pem"),
        client_private_key=pki.read(f"{cert}.key"),
        domain=PROXY_NAME,
    )
    return await Client.connect(
        address,
        namespace=namespace,
        tls=tls,
        api_key=token,
        rpc_metadata=dict(headers or {}),
        data_converter=data_converter or DataConverter.default,
    )


async def run_greeting(client: Client, name: str = "proxy") -> str:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
        return await client.execute_workflow(
            GreetingWorkflow.run, name, id=f"wf-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
