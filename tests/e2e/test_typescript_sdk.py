"""Issue 16 item 9: a second SDK works unchanged — the TypeScript SDK (`@temporalio/client` from
npm, pinned by tests/e2e/ts/package-lock.json, on the machine's Node) through a JWT-enforcing
proxy with mTLS and an API key, against the real dev server.

`make test` installs Node (Debian's nodejs/npm when `node` is missing) and runs `npm ci` in
tests/e2e/ts; a machine without them fails here with a message saying so, never skips.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.worker import Worker

from tests.e2e import sdk
from tests.e2e.rig import (
    PROXY_NAME,
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    deep_merge,
    jwt_authorization,
    sample,
    wait_until,
)
from tests.e2e.workflows import GreetingWorkflow, greet

TS_DIR = Path(__file__).parent / "ts"
DENIED = "Request unauthorized."
TYPE_URL = "type.googleapis.com/temporal.api.errordetails.v1.PermissionDeniedFailure"
PERMISSION_DENIED = 7  # grpc status code
INSTALL_HINT = (
    "`make test` installs it (Debian's nodejs/npm when node is missing, then "
    "`npm ci --ignore-scripts` in tests/e2e/ts)"
)


def node_binary() -> str:
    """The machine's node, with the locked packages installed; a loud failure otherwise."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    if not (TS_DIR / "node_modules" / "@temporalio" / "client").is_dir():
        pytest.fail(f"tests/e2e/ts/node_modules is missing: {INSTALL_HINT}")
    return node


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    cfg = deep_merge(base_config(pki, terminator.port), {"authorization": jwt_authorization(pki)})
    proc = ProxyProcess(tmp_path_factory.mktemp("ts-proxy"), cfg)
    yield proc
    proc.stop()


async def run_ts_client(
    pki: Pki,
    address: str,
    *,
    token: str,
    denied_token: str,
    task_queue: str,
    workflow_id: str,
    node: str,
    timeout: float = 40,
) -> dict[str, Any]:
    """Run tests/e2e/ts/client.js and return its JSON summary (its last stdout line)."""
    env = {
        **os.environ,
        "TAP_ADDRESS": address,
        "TAP_NAMESPACE": "default",
        "TAP_CA_FILE": pki.files["ca.pem"],
        "TAP_CERT_FILE": pki.files["client.pem"],
        "TAP_KEY_FILE": pki.files["client.key"],
        "TAP_SERVER_NAME": PROXY_NAME,
        "TAP_API_KEY": token,
        "TAP_DENIED_API_KEY": denied_token,
        "TAP_TASK_QUEUE": task_queue,
        "TAP_WORKFLOW_ID": workflow_id,
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        "client.js",
        cwd=TS_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"node exited {proc.returncode}: {out.decode()[-3000:]} {err.decode()[-3000:]}"
    )
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


async def run_beside_a_worker(
    pki: Pki, proxy: ProxyProcess, prefix: str, reader: str
) -> tuple[dict[str, Any], str, str]:
    """The TS client's run (its summary, task queue, workflow id) while a Python worker, also
    through the proxy, serves the workflow."""
    task_queue = f"{prefix}-tq-{uuid.uuid4().hex[:8]}"
    workflow_id = f"{prefix}-wf-{uuid.uuid4().hex[:8]}"
    worker_client = await sdk.connect(pki, proxy.address, token=pki.token("default:write"))
    async with Worker(
        worker_client, task_queue=task_queue, workflows=[GreetingWorkflow], activities=[greet]
    ):
        summary = await run_ts_client(
            pki,
            proxy.address,
            token=pki.token("default:write", subject=f"{prefix}-writer"),
            denied_token=pki.token("default:read", subject=reader),
            task_queue=task_queue,
            workflow_id=workflow_id,
            node=node_binary(),
        )
    return summary, task_queue, workflow_id


async def test_typescript_client_runs_a_workflow_and_gets_temporals_denial(
    proxy: ProxyProcess, pki: Pki
) -> None:
    """Start, describe, result() (the Python worker runs it, through the proxy too), list; and
    a reader's start is refused with Temporal's PERMISSION_DENIED as the TS SDK surfaces it."""
    reader = f"ts-reader-{uuid.uuid4().hex[:8]}"
    summary, task_queue, workflow_id = await run_beside_a_worker(pki, proxy, "ts", reader)

    assert re.fullmatch(r"v\d+\.\d+\.\d+", summary["node"]), summary
    assert summary["started"]["workflowId"] == workflow_id
    assert summary["started"]["runId"]
    assert summary["described"] == {
        "workflowId": workflow_id,
        "type": "GreetingWorkflow",
        "taskQueue": task_queue,
    }
    assert summary["result"] == "Hello, typescript!"
    assert summary["closedStatus"] == "COMPLETED"
    assert summary["listed"] is True

    denied = summary["denied"]
    assert denied is not None, "the reader's start was not refused"
    assert denied["name"] == "ServiceError"  # the SDK's wrapper; the gRPC error is its cause
    assert denied["code"] == PERMISSION_DENIED
    assert denied["details"] == DENIED
    assert denied["statusDetails"] == [{"typeUrl": TYPE_URL, "reason": ""}]

    # The proxy made that decision (the dev server authorizes nothing), for the reader's token.
    def reader_denied() -> list[dict[str, Any]]:
        return [
            e
            for e in proxy.events()
            if e.get("event") == "authz_denied" and e.get("subject") == reader
        ]

    wait_until(reader_denied, 5, 0.05, "authz_denied")
    (event,) = reader_denied()
    assert event["method"] == "StartWorkflowExecution"
    assert event["reason"] == "insufficient_role"


@pytest.fixture(scope="module")
def encrypting_proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    """Payload encryption on for `default`, unknown fields rejected (issue 17's default)."""
    key = base64.b64encode(os.urandom(32)).decode()
    cfg = deep_merge(
        base_config(pki, terminator.port),
        {
            "authorization": jwt_authorization(pki),
            "codec": {"enabled": True, "keys": {"k1": key}, "encryptKeyId": "k1"},
            "encryption": {"namespaces": {"default": {"keyId": "k1"}}, "unknownFields": "reject"},
        },
    )
    proc = ProxyProcess(tmp_path_factory.mktemp("ts-enc-proxy"), cfg)
    yield proc
    proc.stop()


async def test_typescript_client_works_unchanged_with_encryption_at_the_proxy(
    encrypting_proxy: ProxyProcess, pki: Pki
) -> None:
    """The SDK in our npm lock never trips the unknown-field refusal, and its payloads are
    sealed on the way in and opened on the way out (it sees plaintext results)."""
    proxy = encrypting_proxy
    summary, _, _ = await run_beside_a_worker(pki, proxy, "ts-enc", "ts-enc-reader")
    assert summary["result"] == "Hello, typescript!"
    assert summary["closedStatus"] == "COMPLETED"
    metrics = proxy.metrics()
    sealed = sample(metrics, "temporal_auth_proxy_encryption_payloads_total", outcome="encrypted")
    opened = sample(metrics, "temporal_auth_proxy_encryption_payloads_total", outcome="decrypted")
    assert sealed and sealed > 0 and opened and opened > 0, (sealed, opened)
    assert not [e for e in proxy.events() if e.get("event") == "encryption_refused"]


def readme_snippet() -> str:
    """The ```js block of README's "TypeScript SDK" section."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### TypeScript SDK", 1)[1]
    return section.split("```js\n", 1)[1].split("```", 1)[0]


async def test_the_readme_snippet_runs_as_written(
    proxy: ProxyProcess, pki: Pki, tmp_path: Path
) -> None:
    """README's code, with only make run's address and certs-dev/ swapped for the rig's."""
    node = node_binary()
    code = readme_snippet()
    assert "'127.0.0.1:7233'" in code and "'certs-dev/" in code
    code = code.replace("'127.0.0.1:7233'", f"'{proxy.address}'")
    code = code.replace("'certs-dev/", f"'{pki.dir}/")
    script = tmp_path / "readme.js"
    script.write_text(code)
    worker_client = await sdk.connect(pki, proxy.address, token=pki.token("default:write"))
    env = {
        **os.environ,
        "TEMPORAL_API_KEY": pki.token("default:write"),
        "NODE_PATH": str(TS_DIR / "node_modules"),  # require() finds the locked packages
    }
    async with Worker(
        worker_client, task_queue="greetings", workflows=[GreetingWorkflow], activities=[greet]
    ):
        proc = await asyncio.create_subprocess_exec(
            node,
            str(script),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 40)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode() == "Hello, typescript!\n"
