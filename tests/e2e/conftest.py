"""Session-wide real parts: one PKI, one Temporal dev server, one TLS terminator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.rig import (
    Pki,
    ProxyProcess,
    TemporalDevServer,
    TLSTerminator,
    base_config,
    deep_merge,
    make_pki,
)

pytestmark = pytest.mark.e2e


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"), namespaces=("other",))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def terminator(pki: Pki, temporal: TemporalDevServer) -> Iterator[TLSTerminator]:
    term = TLSTerminator(pki, temporal.port)
    yield term
    term.stop()


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy(tmp_path: Path, pki: Pki, terminator: TLSTerminator) -> Iterator[ProxyFactory]:
    """Start a proxy (mTLS both legs, noop authorization unless overridden)."""
    started: list[ProxyProcess] = []

    def start(
        overrides: dict[str, Any] | None = None,
        *,
        internode: bool = True,
        upstream_port: int | None = None,
        wait_ready: bool = True,
        **kw: Any,
    ) -> ProxyProcess:
        port = upstream_port or terminator.port
        cfg = deep_merge(base_config(pki, port, internode=internode), overrides or {})
        proc = ProxyProcess(tmp_path / f"proxy{len(started)}", cfg, wait_ready=wait_ready, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
