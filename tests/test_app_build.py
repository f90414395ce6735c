"""`proxy.app.build` as `serve` runs it: the metrics a fully built proxy exports match the README
table, and the unauthenticated-codec rule holds for a Config built in code too."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from proxy.app import build
from proxy.config.parse import parse_config
from proxy.config.schema import (
    AdminConfig,
    AuthorizationConfig,
    CodecConfig,
    Config,
    UpstreamConfig,
)
from proxy.errors import ConfigError
from proxy.log import get_logger

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(b"k" * 32).decode()


def full_config(policy_dir: Path) -> Config:
    """Every optional part that registers metrics switched on."""
    (policy_dir / "all.cedar").write_text("permit(principal, action, resource);\n")
    return parse_config(
        {
            "listen": {"address": "127.0.0.1:0"},
            "upstream": {"address": "127.0.0.1:7233"},
            "admin": {"address": "127.0.0.1:0"},
            "authorization": {
                "claimMapper": "noop",
                "authorizer": "cedar",
                "cedar": {"policyFiles": [str(policy_dir / "*.cedar")]},
            },
            "codec": {"enabled": True, "keys": {"k": KEY}, "encryptKeyId": "k"},
            "rateLimits": {"enabled": True, "perSubject": {"rate": 10}},
            "audit": {"enabled": True, "sink": "stdout"},
        },
        {},
    )


def registered(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Exported name (as scraped: counters with `_total`) -> its label names.

    Label names come from the metric objects: a labelled counter nothing has incremented yet
    has no samples to read them from."""
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        out.setdefault(name, set())
    # No public API lists label names: read them from the metric objects.
    for collector in list(registry._collector_to_names):
        metric: Any = collector
        name = metric._name + ("_total" if metric._type == "counter" else "")
        out[name] = set(metric._labelnames)
    return out


def readme_metrics() -> dict[str, str]:
    """The README's metrics table: metric name -> its labels column."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics (names are API)", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        m = re.match(r"\| `(temporal_auth_proxy_\w+)`[^|]*\|(.*)\|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


async def test_readme_metrics_table_lists_exactly_what_a_full_proxy_exports(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    app = build(full_config(tmp_path), logger=get_logger(), registry=registry)
    async with asyncio.TaskGroup() as tg:
        runner = await app.start_admin(tg)  # the admin listener's metrics exist once it listens
        try:
            exported = registered(registry)
        finally:
            await runner.cleanup()
            await app.pool.close(0)
    documented = readme_metrics()
    assert len(documented) >= 10, "README metrics table not found"
    assert sorted(exported) == sorted(documented)
    for name, labels in exported.items():
        for label in labels:
            assert f"`{label}`" in documented[name], f"README: {name} lacks label {label}"


def test_readme_table_check_can_fail() -> None:
    rows = readme_metrics()
    assert "temporal_auth_proxy_rate_limited_total" in rows
    assert "scope" in rows["temporal_auth_proxy_rate_limited_total"]
    assert "temporal_auth_proxy_no_such_metric_total" not in rows


def _exposed_codec(**codec: Any) -> Config:
    # Built in code: parse_config's validation never ran.
    return Config(
        upstream=UpstreamConfig(address="127.0.0.1:7233"),
        admin=AdminConfig(address="0.0.0.0:0"),
        authorization=AuthorizationConfig(claim_mapper="noop", authorizer="noop"),
        codec=CodecConfig(enabled=True, keys={"k": KEY}, encrypt_key_id="k", **codec),
    )


async def test_build_refuses_an_unauthenticated_codec_off_loopback() -> None:
    with pytest.raises(ConfigError) as info:
        build(_exposed_codec(), logger=get_logger(), registry=CollectorRegistry())
    assert info.value.path == "codec.allowUnauthenticated"


async def test_an_unauthenticated_codec_is_logged_at_startup() -> None:
    with structlog.testing.capture_logs() as logs:
        app = build(
            _exposed_codec(allow_unauthenticated=True),
            logger=get_logger(),
            registry=CollectorRegistry(),
        )
        await app.pool.close(0)
    [line] = [e for e in logs if e["event"] == "codec_unauthenticated"]
    assert line["log_level"] == "warning"
    assert line["address"] == "0.0.0.0:0" and line["loopback"] is False
