"""Issue 3: the real `temporal` CLI with `--api-key` (and mTLS) through a JWT-enforcing proxy."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.rig import (
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    cli,
    deep_merge,
    jwt_authorization,
)

DENIED = "Request unauthorized"


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    cfg = deep_merge(base_config(pki, terminator.port), {"authorization": jwt_authorization(pki)})
    proc = ProxyProcess(tmp_path_factory.mktemp("cli-proxy"), cfg)
    yield proc
    proc.stop()


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, result.stdout
    assert DENIED in result.stderr


def start_args(workflow_id: str, namespace: str = "default") -> tuple[str, ...]:
    return (
        "workflow",
        "start",
        "--type",
        "Nothing",
        "--task-queue",
        "nowhere",
        "--workflow-id",
        workflow_id,
        "--namespace",
        namespace,
    )


def test_reader_can_list_and_describe_but_not_start(proxy: ProxyProcess, pki: Pki) -> None:
    reader = pki.token("default:read", subject="cli-reader")
    ok(cli(pki, proxy.address, "workflow", "list", "--namespace", "default", token=reader))
    described = ok(
        cli(
            pki,
            proxy.address,
            "operator",
            "namespace",
            "describe",
            "--namespace",
            "default",
            "-o",
            "json",
            token=reader,
        )
    )
    assert '"name": "default"' in described.stdout
    refused(cli(pki, proxy.address, *start_args(f"cli-{uuid.uuid4().hex[:8]}"), token=reader))


def test_writer_can_start_in_its_namespace_only(proxy: ProxyProcess, pki: Pki) -> None:
    writer = pki.token("default:write", subject="cli-writer")
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    ok(cli(pki, proxy.address, *start_args(workflow_id), token=writer))
    described = ok(
        cli(
            pki,
            proxy.address,
            "workflow",
            "describe",
            "--workflow-id",
            workflow_id,
            "--namespace",
            "default",
            "-o",
            "json",
            token=writer,
        )
    )
    assert workflow_id in described.stdout
    refused(cli(pki, proxy.address, *start_args(workflow_id, "other"), token=writer))


def test_an_es256_api_key_works_too(proxy: ProxyProcess, pki: Pki) -> None:
    writer = pki.ec_token("default:write", subject="cli-ec-writer")
    ok(cli(pki, proxy.address, *start_args(f"cli-ec-{uuid.uuid4().hex[:8]}"), token=writer))


@pytest.mark.parametrize(
    "args",
    [("operator", "namespace", "list"), ("operator", "nexus", "endpoint", "list")],
    ids=["namespace-list", "nexus-endpoint-list"],
)
def test_only_a_system_admin_can_make_cluster_scope_calls(
    proxy: ProxyProcess, pki: Pki, args: tuple[str, ...]
) -> None:
    system = ok(cli(pki, proxy.address, *args, token=pki.token("temporal-system:admin")))
    if args[1] == "namespace":
        assert "other" in system.stdout and "default" in system.stdout
    refused(cli(pki, proxy.address, *args, token=pki.token("default:admin")))


def test_without_an_api_key_the_cli_is_refused(proxy: ProxyProcess, pki: Pki) -> None:
    refused(cli(pki, proxy.address, "workflow", "list", "--namespace", "default"))
