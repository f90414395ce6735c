"""The guarded admin listener over real loopback sockets: deadlines and the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import AdminLimits, AdminMetrics, GuardedSite, build_admin_app, raise_file_limit
from proxy.dev.pki import CertificateAuthority

LIMITS = AdminLimits(max_connections=3, header_timeout=1.0, body_timeout=1.0, idle_timeout=1.0)


async def _ready() -> tuple[bool, dict[str, str]]:
    return True, {}


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


class Admin:
    def __init__(self, registry: CollectorRegistry, site: GuardedSite) -> None:
        self.registry = registry
        self.site = site

    def closed(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "temporal_auth_proxy_admin_connections_closed_total", {"reason": reason}
        )
        return value or 0.0

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.site.bound_port)


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    async with _admin(None) as a:
        yield a


@pytest.fixture
async def tls_admin(tmp_path: Path) -> AsyncIterator[tuple[Admin, ssl.SSLContext]]:
    ca = CertificateAuthority.create("admin test CA")
    cert_path, key_path = ca.issue(
        "admin.test", dns_names=("admin.test",), ip_addresses=("127.0.0.1",), server=True
    ).write(tmp_path, "admin")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    async with _admin(server_ctx) as a:
        yield a, client_ctx


@contextlib.asynccontextmanager
async def _admin(ssl_context: ssl.SSLContext | None) -> AsyncIterator[Admin]:
    registry = CollectorRegistry()
    app = build_admin_app(
        registry=registry, readiness=_ready, extra_routes=[web.post("/echo", _echo)]
    )
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=LIMITS.idle_timeout)
    await runner.setup()
    async with asyncio.TaskGroup() as tg:
        site = GuardedSite(
            runner,
            "127.0.0.1",
            0,
            limits=LIMITS,
            metrics=AdminMetrics(registry),
            logger=None,
            tasks=tg,
            ssl_context=ssl_context,
        )
        await site.start()
        try:
            yield Admin(registry, site)
        finally:
            await runner.cleanup()


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (reads and discards any answer)."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        with contextlib.suppress(ConnectionResetError):  # a reset is a close too
            while await reader.read(65536):
                pass
    return time.monotonic() - started


async def test_a_good_request_is_answered(admin: Admin) -> None:
    reader, writer = await admin.open()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    head = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_request_head_sent_byte_by_byte_is_closed_at_the_header_timeout(
    admin: Admin,
) -> None:
    reader, writer = await admin.open()
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())  # noqa: TID251 - the test owns and cancels it
    try:
        await _closed_after(reader, 5)
    finally:
        sender.cancel()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5, elapsed
    assert admin.closed("header_timeout") == 1


async def test_slow_body_is_closed_at_the_body_timeout(admin: Admin) -> None:
    reader, writer = await admin.open()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    elapsed = await _closed_after(reader, 5)
    assert 0.9 <= elapsed < 2.5, elapsed
    assert admin.closed("body_timeout") == 1


async def test_connection_that_sends_nothing_is_closed_at_the_idle_timeout(admin: Admin) -> None:
    reader, _ = await admin.open()
    elapsed = await _closed_after(reader, 5)
    assert 0.9 <= elapsed < 2.5, elapsed
    assert admin.closed("idle_timeout") == 1


async def test_connections_over_the_cap_are_closed_at_once(admin: Admin) -> None:
    held = [await admin.open() for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.1)
    reader, _ = await admin.open()
    assert await _closed_after(reader, 0.5) < 0.5
    assert admin.closed("over_limit") == 1
    # Once one held connection goes, a new one is served again.
    held[0][1].close()
    await asyncio.sleep(0.1)
    reader, writer = await admin.open()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 200")


async def test_tls_handshake_that_never_comes_is_closed_and_its_slot_freed(
    tls_admin: tuple[Admin, ssl.SSLContext],
) -> None:
    admin, client_ctx = tls_admin
    reader, _ = await admin.open()  # TCP only: no ClientHello
    elapsed = await _closed_after(reader, 5)
    assert 0.9 <= elapsed < 2.5, elapsed
    assert admin.closed("handshake_failed") == 1
    assert admin.registry.get_sample_value("temporal_auth_proxy_admin_connections") == 0
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", admin.site.bound_port, ssl=client_ctx, server_hostname="admin.test"
    )
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_slow_body_over_tls_is_closed_at_the_body_timeout(
    tls_admin: tuple[Admin, ssl.SSLContext],
) -> None:
    admin, client_ctx = tls_admin
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", admin.site.bound_port, ssl=client_ctx, server_hostname="admin.test"
    )
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    elapsed = await _closed_after(reader, 5)
    assert 0.9 <= elapsed < 2.5, elapsed
    assert admin.closed("body_timeout") == 1


async def test_over_the_cap_a_socket_is_closed_before_any_tls(
    tls_admin: tuple[Admin, ssl.SSLContext],
) -> None:
    admin, _ = tls_admin
    held = [await admin.open() for _ in range(LIMITS.max_connections)]  # all in handshake
    await asyncio.sleep(0.1)
    reader, writer = await admin.open()
    writer.write(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello
    assert await _closed_after(reader, 0.5) < 0.5
    assert admin.closed("over_limit") == 1
    for _, w in held:
        w.close()


def test_raise_file_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        assert raise_file_limit()[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
