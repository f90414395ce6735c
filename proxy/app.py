"""Composition root: `build(cfg)` wires every part from config; `App.run()` owns one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import __version__, methods
from proxy.admin import (
    AdminLimits,
    AdminMetrics,
    GuardedSite,
    build_admin_app,
    metrics_registry,
    raise_file_limit,
)
from proxy.audit import build_audit_log
from proxy.authz.build import build_authorizer
from proxy.authz.policy_build import PolicyReloader, build_policy_reloader
from proxy.claims.build import build_claim_mapper
from proxy.codec.build import build_codec_routes
from proxy.codec.payload import PayloadCodec
from proxy.codec.reload import ReloadableCodec
from proxy.config.schema import Config
from proxy.encryption.reload import reload_payload_keys
from proxy.encryption.service import PayloadEncryption, shipped_api_version
from proxy.errors import ConfigError
from proxy.forward import ForwardingHandler, UpstreamPool, channel_options, close_channels
from proxy.gate import Gate, build_gate
from proxy.interfaces import Logger, TaskSpawner
from proxy.keys.build import build_key_provider
from proxy.keys.idp import IdpKeys
from proxy.keys.jwks import JwksKeyProvider
from proxy.memory import trim_loop
from proxy.metrics import (
    EncryptionMetrics,
    PolicyMetrics,
    ProxyMetrics,
    build_proxy_metrics,
    multiprocess_dir,
    set_build_info,
)
from proxy.ratelimit import build_rate_limiter
from proxy.tls.credentials import FrontendCredentials, channel_credentials
from proxy.tls.material import ClientMaterial, load_tls_materials
from proxy.tls.peer import peer_identity
from proxy.tls.reload import TLSReloader
from proxy.wire.write import HEALTH_REQUEST, health_serving

KEY_RETRY_SECONDS = 5.0


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class App:
    cfg: Config
    registry: CollectorRegistry
    metrics: ProxyMetrics
    log: Logger
    reloader: TLSReloader
    frontend: FrontendCredentials | None
    keys: JwksKeyProvider | IdpKeys | None
    gate: Gate
    pool: UpstreamPool
    handler: ForwardingHandler
    admin: web.Application | None = None
    policies: PolicyReloader | None = None  # authorizer: cedar
    server: grpc.aio.Server | None = None
    encryption: PayloadEncryption | None = None
    encryption_metrics: EncryptionMetrics | None = None
    temporal_api: str = ""  # the shipped Temporal API descriptors (ApiVersion.label())
    config_path: str | None = None  # re-read on SIGHUP for encryption and codec.keys
    codec: ReloadableCodec | None = None  # the Codec Server's (codec.enabled)
    port: int = 0
    listening: bool = False
    draining: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: asyncio.TaskGroup | None = None

    def channel_factory(self, material: ClientMaterial | None) -> Callable[[], grpc.aio.Channel]:
        return make_channel_factory(self.cfg, material)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        checks = {
            "listening": "ok" if self.listening else "not listening",
            "draining": "draining" if self.draining else "ok",
        }
        if self.keys is not None:
            checks["jwks"] = "ok" if self.keys.loaded else "no key set loaded"
        checks["upstream"] = await self.upstream_health()
        return all(v == "ok" for v in checks.values()), checks

    async def upstream_health(self) -> str:
        try:
            reply = await self.pool.channel.unary_unary(methods.HEALTH_CHECK)(
                HEALTH_REQUEST, timeout=self.cfg.upstream.health_check_timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"health check failed: {exc.code().name}"
        return "ok" if health_serving(reply) else "not serving"

    def request_stop(self) -> None:
        self._stop.set()

    async def reload_tls(self) -> None:
        generation = self.reloader.generation
        await asyncio.to_thread(self.reloader.reload)
        if self.reloader.generation != generation:
            # grpcio channel credentials cannot be swapped: rebuild the upstream channels.
            factory = self.channel_factory(self.reloader.internode_material)
            old = self.pool.swap(factory)
            closing = close_channels(old, self.cfg.listen.shutdown_grace_period)
            if self._tasks is not None:
                # In the background: the reload loop must not wait for in-flight calls.
                self._tasks.create_task(closing, name="close-old-upstream")
            else:
                await closing

    async def on_sighup(self) -> None:
        await self.reload_tls()
        await self.reload_encryption()

    async def reload_encryption(self) -> bool:
        """SIGHUP: re-read the config file's `encryption` and the codec's keys (see
        `proxy.encryption.reload`); changes to anything else need a restart."""
        if self.config_path is None or self.encryption is None:
            return False
        applied = await reload_payload_keys(
            self.config_path,
            self.cfg,
            encryption=self.encryption,
            codec=self.codec,
            metrics=self.encryption_metrics,
            log=self.log,
        )
        if applied is None:
            return False
        self.cfg = applied
        return True

    async def _reload_loop(self) -> None:
        interval = self.cfg.tls.refresh_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            await self.reload_tls()

    async def _keys_loop(self) -> None:
        assert self.keys is not None
        await self.keys.refresh()
        # Temporal would wait for the next interval (or forever with 0); we retry until the
        # first set loads, since nothing can be authorized before that.
        while not self.keys.loaded:
            await asyncio.sleep(KEY_RETRY_SECONDS)
            await self.keys.refresh()
        await self.keys.run()

    async def start(self) -> None:
        """Bind and start both listeners (separate from run() so tests can await readiness)."""
        self.server = build_server(self.cfg, self.handler, self.frontend)
        host, port = _split_address(self.cfg.listen.address)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.frontend is not None:
                self.port = self.server.add_secure_port(address, self.frontend.credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError("listen.address", f"cannot listen on {address}: {exc}") from exc
        await self.server.start()
        self.listening = True
        self.log.info(
            "listening",
            address=address,
            port=self.port,
            tls=self.frontend is not None,
            version=__version__,
            temporal_api=self.temporal_api,
            encrypted_namespaces=sorted(self.cfg.encryption.namespaces),
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, action in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, action)
        runner: web.AppRunner | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(
                        signal.SIGHUP, lambda: tg.create_task(self.on_sighup(), name="sighup")
                    )
                if self.policies is not None:
                    self._watch_policies(loop, tg, self.policies)
                if self.keys is not None:
                    tg.create_task(self._keys_loop(), name="jwks")
                if self.server is None:
                    await self.start()
                runner = await self.start_admin(tg)
                tg.create_task(self._reload_loop(), name="tls-reload")
                tg.create_task(self.reloader.run_expiration_checks(), name="cert-expiry")
                tg.create_task(trim_loop(self.handler), name="malloc-trim")
                await self._stop.wait()
                await self.drain()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            if runner is not None:
                await runner.cleanup()
            await self.pool.close(0)

    def _watch_policies(
        self, loop: asyncio.AbstractEventLoop, tg: asyncio.TaskGroup, policies: PolicyReloader
    ) -> None:
        """Policy files: polled for changes, and re-read on SIGHUP (beside the TLS reload)."""
        tg.create_task(policies.run(), name="policy-reload")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(
                signal.SIGHUP,
                lambda: (
                    tg.create_task(self.on_sighup(), name="sighup"),
                    tg.create_task(policies.reload(), name="sighup-policies"),
                ),
            )

    async def start_admin(self, tasks: TaskSpawner) -> web.AppRunner:
        """Bind the admin listener; its accept loop and connections run in `tasks`."""
        assert self.admin is not None
        a = self.cfg.admin
        soft, hard = raise_file_limit()
        # Leave most descriptors to gRPC: the admin cap should be a small share of the limit.
        if a.max_connections > soft // 4:
            self.log.warning(
                "file_limit_low", soft=soft, hard=hard, admin_max_connections=a.max_connections
            )
        runner = web.AppRunner(
            self.admin, access_log=None, handle_signals=False, keepalive_timeout=a.idle_timeout
        )
        await runner.setup()
        host, port = _split_address(a.address)
        ssl_ctx = None
        tls = a.tls
        if tls.enabled:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(tls.cert_file, tls.key_file)
        site = GuardedSite(
            runner,
            host,
            port,
            limits=AdminLimits.from_config(a),
            metrics=AdminMetrics(self.registry),
            logger=self.log,
            tasks=tasks,
            ssl_context=ssl_ctx,
            reuse_port=self.cfg.listen.workers != 1,
        )
        await site.start()
        self.log.info(
            "admin_listening",
            address=a.address,
            tls=ssl_ctx is not None,
            max_connections=a.max_connections,
            file_limit=soft,
        )
        return runner

    async def drain(self) -> None:
        """Readiness goes 503 first, then in-flight calls get the grace period, then cancel."""
        self.draining = True
        grace = self.cfg.listen.shutdown_grace_period
        self.log.info("draining", grace_period=grace)
        if self.server is not None:
            await self.server.stop(grace)
        self.log.info("stopped")


class _Stopped(Exception):
    """Ends the TaskGroup (and cancels the background loops) after a drain."""


def make_channel_factory(
    cfg: Config, material: ClientMaterial | None
) -> Callable[[], grpc.aio.Channel]:
    options = channel_options(
        cfg.listen.max_message_size,
        cfg.listen.max_header_list_size,
        transparent_retries=cfg.upstream.transparent_retries,
    )
    address = cfg.upstream.address
    if material is None:
        return lambda: grpc.aio.insecure_channel(address, options=options)
    credentials, tls_options = channel_credentials(material)
    all_options = options + list(tls_options)
    return lambda: grpc.aio.secure_channel(address, credentials, options=all_options)


def build_server(
    cfg: Config, handler: ForwardingHandler, frontend: FrontendCredentials | None
) -> grpc.aio.Server:
    server = grpc.aio.server(options=server_options(cfg))
    server.add_generic_rpc_handlers((handler,))
    return server


def server_options(cfg: Config) -> list[tuple[str, Any]]:
    """grpc-core's arguments for the listener. grpc ignores a name it does not know, silently:
    tests/test_app.py checks each against the grpc library."""
    return [
        ("grpc.max_send_message_length", cfg.listen.max_message_size),
        ("grpc.max_receive_message_length", cfg.listen.max_message_size),
        ("grpc.max_metadata_size", cfg.listen.max_header_list_size),
        # grpcio turns SO_REUSEPORT on by default: a second copy would start silently.
        ("grpc.so_reuseport", 1 if cfg.listen.workers != 1 else 0),
        # Hostile clients (SECURITY.md "Limits"). Announced in SETTINGS; grpc-core also
        # refuses (REFUSED_STREAM) new streams while the connection's streams that were reset
        # but not yet released by the application exceed it ("overload protection"), which
        # is what bounds a rapid-reset flood: grpc-core sends no GOAWAY for it.
        ("grpc.max_concurrent_streams", cfg.listen.max_concurrent_streams),
        ("grpc.http.overload_protection", 1),
        # Temporal's frontend keepalive policy: pings while calls or none are open, at most
        # one per 10 s; grpc's strike rule (as grpc-go's) sends GOAWAY ENHANCE_YOUR_CALM
        # "too_many_pings" on the third early ping with no data sent back in between.
        # SDK core and the Go SDK/CLI ping every 30 s.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        # grpc-core queues calls that arrive faster than the event loop takes them (a burst
        # of long polls from workers reconnecting). Past listen.maxConcurrentCalls nothing
        # in the queue could be served anyway, so the queue has the same bound; grpc drops
        # calls beyond it as CANCELLED before any handler runs.
        ("grpc.server.max_pending_requests", cfg.listen.max_concurrent_calls),
        ("grpc.server.max_pending_requests_hard_limit", cfg.listen.max_concurrent_calls),
    ]


def build(cfg: Config, *, logger: Logger, registry: CollectorRegistry | None = None) -> App:
    """Build and validate everything `serve` needs. Raises ConfigError; binds nothing."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = build_proxy_metrics(cfg, registry)
    materials = load_tls_materials(cfg.tls)
    frontend = FrontendCredentials(materials.frontend) if materials.frontend is not None else None

    def on_material(expiries: Any) -> None:
        for label, not_after in expiries.items():
            metrics.set_certificate_expiry(label, not_after)

    reloader = TLSReloader(
        cfg.tls,
        materials,
        frontend=frontend,
        on_reload=metrics.on_tls_reload,
        on_material=on_material,
        logger=logger,
    )
    keys = build_key_provider(cfg, metrics, logger)
    mapper = build_claim_mapper(cfg, keys, logger)
    # authorizer: cedar: decisions counted by policy id; the policy files reloaded.
    policy_metrics = PolicyMetrics(registry) if cfg.authorization.authorizer == "cedar" else None
    authorizer = build_authorizer(
        cfg, observe=policy_metrics.observe if policy_metrics is not None else None
    )
    policies = build_policy_reloader(
        cfg,
        authorizer,
        logger=logger,
        on_loaded=policy_metrics.loaded if policy_metrics is not None else None,
        on_reload=policy_metrics.on_reload if policy_metrics is not None else None,
    )
    require_client_auth = frontend is not None and frontend.require_client_auth
    gate = build_gate(
        cfg,
        claim_mapper=mapper,
        authorizer=authorizer,
        metrics=metrics,
        logger=logger,
        peer_always_verified=require_client_auth,
    )
    audit = build_audit_log(cfg)
    encryption_metrics = EncryptionMetrics(registry, namespace_labels=cfg.metrics.namespace_labels)
    encryption = PayloadEncryption.build(cfg, metrics=encryption_metrics, logger=logger)
    temporal_api = shipped_api_version().label()
    set_build_info(registry, version=__version__, temporal_api=temporal_api)
    pool = UpstreamPool(make_channel_factory(cfg, materials.internode), cfg.upstream.channels)
    handler = ForwardingHandler(
        gate=gate,
        pool=pool,
        metrics=metrics,
        logger=logger,
        lookup=methods.lookup,
        is_forwarded=methods.is_forwarded,
        auth_header_name=cfg.authorization.auth_header_name,
        auth_extra_header_name=cfg.authorization.auth_extra_header_name,
        strip_authorization=cfg.upstream.authorization == "strip",
        read_peer=(
            (lambda ctx: peer_identity(ctx.auth_context()))
            # Every verified certificate is read (once per connection, memoized) so that its
            # key usage is checked as Go's TLS stack would.
            if require_client_auth
            else None
        ),
        limiter=build_rate_limiter(cfg),
        audit=audit,
        max_concurrent_calls=cfg.listen.max_concurrent_calls,
        encryption=encryption,
    )
    app = App(
        cfg=cfg,
        registry=registry,
        metrics=metrics,
        log=logger,
        reloader=reloader,
        frontend=frontend,
        keys=keys,
        gate=gate,
        pool=pool,
        handler=handler,
        policies=policies,
        encryption=encryption,
        encryption_metrics=encryption_metrics,
        temporal_api=temporal_api,
    )
    if cfg.codec.enabled:
        app.codec = ReloadableCodec(PayloadCodec.from_config(cfg.codec))
    app.admin = build_admin_app(
        registry=metrics_registry(registry, multiprocess_dir()),
        readiness=app.readiness,
        extra_routes=build_codec_routes(
            cfg, mapper, registry, logger, authorizer=authorizer, codec=app.codec
        ),
    )
    return app
