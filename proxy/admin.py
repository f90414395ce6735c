"""Admin HTTP: /metrics, /healthz, /readyz (and the codec routes when enabled)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.config.schema import AdminConfig
from proxy.interfaces import Logger, TaskSpawner

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

    app = web.Application(middlewares=[guard_middleware, *middlewares])
    app[_SLOTS_HOLDER] = []  # filled by GuardedSite: the connections' deadlines
    app.add_routes(
        [
            web.get("/metrics", metrics),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            *extra_routes,
        ]
    )
    return app


# ------------------------------------------------------------- the guarded admin listener
#
# aiohttp bounds idle keep-alive connections (keepalive_timeout) but has no TLS handshake,
# request-head or body deadline and no connection cap; its listener is asyncio's, which keeps
# accepting until the process runs out of file descriptors (then gRPC cannot accept either).
# So the admin port gets its own accept loop: over `maxConnections` a socket is closed as soon
# as it is accepted (before any TLS), and each connection is wrapped in a protocol that owns
# the deadlines. The request-head deadline starts at the head's first byte; the body deadline
# when the head is in (signalled by `guard_middleware`); a reply the client stops reading is
# bounded by the idle timeout (transport pause_writing / resume_writing).

CLOSE_REASONS = (
    "over_limit",
    "handshake_failed",
    "idle_timeout",
    "header_timeout",
    "body_timeout",
    "write_timeout",
)
ACCEPT_RETRY_SECONDS = 0.5  # after EMFILE and the like, as asyncio's own accept loop does
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminLimits:
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 30.0

    @classmethod
    def from_config(cls, cfg: AdminConfig) -> AdminLimits:
        return cls(
            max_connections=cfg.max_connections,
            header_timeout=cfg.header_timeout,
            body_timeout=cfg.body_timeout,
            idle_timeout=cfg.idle_timeout,
        )


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "temporal_auth_proxy_admin_connections",
            "Connections open on the admin listener (TLS handshakes included)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        closed = Counter(
            "temporal_auth_proxy_admin_connections_closed_total",
            "Admin connections the proxy closed itself, by reason",
            ["reason"],
            registry=registry,
        )
        self.closed = {reason: closed.labels(reason=reason) for reason in CLOSE_REASONS}


class _Slots:
    """The connection count shared by the accept loop and the connections."""

    def __init__(self, limit: int, metrics: AdminMetrics) -> None:
        self.limit = limit
        self.active = 0
        self.by_transport: dict[Any, _GuardedProtocol] = {}
        self._metrics = metrics

    def take(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        self._metrics.connections.inc()
        return True

    def give(self) -> None:
        self.active -= 1
        self._metrics.connections.dec()


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's RequestHandler behind deadlines; every transport callback is passed on."""

    def __init__(
        self, inner: asyncio.Protocol, limits: AdminLimits, slots: _Slots, metrics: AdminMetrics
    ) -> None:
        self._inner = inner
        self._limits = limits
        self._slots = slots
        self._metrics = metrics
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_reason = ""
        self._awaiting_head = True
        self._seen_bytes = False
        self._released = False

    # deadlines
    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer_reason = reason
        self._timer = self._loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._metrics.closed[self._timer_reason].inc()
        if self._transport is not None:
            self._transport.abort()  # close() would wait for a reader that never reads

    def head_received(self, body_pending: bool) -> None:
        self._awaiting_head = False
        if body_pending:
            self._arm(self._limits.body_timeout, "body_timeout")
        else:
            self._disarm()

    def body_received(self) -> None:
        if self._timer_reason == "body_timeout":
            self._disarm()

    def request_done(self) -> None:
        # aiohttp's keep-alive timer bounds the wait for the next request; its first byte
        # starts the head deadline again.
        self._awaiting_head = True
        self._seen_bytes = False
        if self._timer_reason == "body_timeout":
            self._disarm()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._slots.by_transport[transport] = self
        # Before the first request aiohttp (before 3.10) has no timer: bound it here.
        self._arm(self._limits.idle_timeout, "idle_timeout")
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head and not self._seen_bytes:
            self._seen_bytes = True
            self._arm(self._limits.header_timeout, "header_timeout")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._timer is None:
            self._arm(self._limits.idle_timeout, "write_timeout")
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._timer_reason == "write_timeout":
            self._disarm()
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._slots.by_transport.pop(self._transport, None)
        self.release()
        self._inner.connection_lost(exc)

    @property
    def established(self) -> bool:
        return self._transport is not None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots.give()


@web.middleware
async def guard_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tells the connection's guard that the head is in (and when the body is)."""
    holder: list[_Slots] = request.app[_SLOTS_HOLDER]
    guard = holder[0].by_transport.get(request.transport) if holder else None
    if guard is None:
        return await handler(request)
    body_pending = request.body_exists and not request.content.is_eof()
    guard.head_received(body_pending)
    if body_pending:
        request.content.on_eof(guard.body_received)
    try:
        return await handler(request)
    finally:
        guard.request_done()


_SLOTS_HOLDER: web.AppKey[list[_Slots]] = web.AppKey("admin_slots_holder", list)


class GuardedSite(web.BaseSite):
    """A TCP site with the accept loop and deadlines above; `runner.cleanup()` stops it."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        limits: AdminLimits,
        metrics: AdminMetrics,
        logger: Logger,
        tasks: TaskSpawner,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        # The accept loop and each connection run in the owner's TaskGroup (the app's).
        self._tasks = tasks
        self._host = host
        self._port = port
        self._limits = limits
        self._metrics = metrics
        self._log = logger
        self._reuse_port = reuse_port
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._slots = _Slots(limits.max_connections, metrics)
        holder = runner.app.get(_SLOTS_HOLDER)
        if holder is None:
            # Without guard_middleware a finished head would never stop its deadline.
            raise ValueError("GuardedSite serves only apps made by build_admin_app")
        holder[:] = [self._slots]
        self.bound_port = 0

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.bound_port or self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self._host or None, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.bound_port = sock.getsockname()[1]
        self._accepting = self._tasks.create_task(self._accept_loop(sock), name="admin-accept")

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._serving):
            task.cancel()
        await super().stop()

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    continue  # that one connection went away before we took it
                # Out of descriptors or memory: back off instead of spinning; the repeat
                # filter turns a storm of these into one line per interval.
                self._log.error("admin_accept_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if not self._slots.take():
                self._metrics.closed["over_limit"].inc()
                conn.close()
                continue
            task = self._tasks.create_task(self._serve(conn), name="admin-connection")
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        protocol: _GuardedProtocol | None = None

        def factory() -> _GuardedProtocol:
            nonlocal protocol
            protocol = _GuardedProtocol(server(), self._limits, self._slots, self._metrics)
            return protocol

        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            await loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=(
                    self._limits.header_timeout if self._ssl_context is not None else None
                ),
            )
        except BaseException as exc:
            # A failed or timed-out TLS handshake (or shutdown): our protocol never saw
            # connection_made, so the slot is freed here rather than in connection_lost.
            conn.close()
            if protocol is None:
                self._slots.give()
            elif not protocol.established:
                protocol.release()
            if not isinstance(exc, Exception):
                raise
            self._metrics.closed["handshake_failed"].inc()


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go programs (Temporal among them) do
    at start: the default soft limit (often 1024) is what runs out first under many
    connections. Returns (soft, hard) after the attempt."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
