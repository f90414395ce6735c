"""Admin HTTP: /metrics, /healthz, /readyz (and the codec routes when enabled)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]


def metrics_registry(own: CollectorRegistry, multiproc_dir: str | None) -> CollectorRegistry:
    """With worker processes, /metrics reads every worker's files and shows the sum."""
    if not multiproc_dir:
        return own
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=multiproc_dir)  # type: ignore[no-untyped-call]  # untyped lib
    return merged


def build_admin_app(
    *,
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    extra_routes: Iterable[web.AbstractRouteDef] = (),
    middlewares: Iterable[Any] = (),
) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ok, checks = await readiness()
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
        )

    app = web.Application(middlewares=list(middlewares))
    app.add_routes(
        [
            web.get("/metrics", metrics),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            *extra_routes,
        ]
    )
    return app
