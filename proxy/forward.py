"""The data path: a grpc.aio generic handler that gates each unary call and relays its bytes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import grpc
import grpc.aio

from proxy.audit import AuditLog, AuditRecord, workflow_id
from proxy.encryption.service import CallCrypto, EncryptionRefused, PayloadEncryption
from proxy.gate import Gate, Verdict, auth_type_label
from proxy.interfaces import Logger
from proxy.listfilter import FilteredListing, ListingError, readable_by
from proxy.metrics import ProxyMetrics
from proxy.model import MethodInfo, PeerIdentity
from proxy.ratelimit import RateLimiter
from proxy.wire.write import DENIED_MESSAGE, denial_status_bytes

# Request metadata that belongs to one HTTP/2 hop, or that grpc sets itself, never relayed.
_HOP_BY_HOP = frozenset(
    {
        "user-agent",
        "te",
        "content-type",
        "content-length",
        "trailer",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-message-type",
        "grpc-internal-encoding-request",
        # Temporal strips these inbound: only the server may assert a principal.
        "temporal-principal-type",
        "temporal-principal-name",
    }
)
UNAVAILABLE_MESSAGE = "upstream unavailable"
# The most one upstream page of a filtered ListNamespaces may take (also without a deadline).
LIST_PAGE_TIMEOUT = 30.0
TOO_MANY_CALLS_MESSAGE = "temporal-auth-proxy: too many calls in flight"

Metadata = Sequence[tuple[str, str | bytes]]
PeerReader = Callable[[Any], PeerIdentity | None]


def channel_options(
    max_message_size: int, max_header_list_size: int, *, transparent_retries: bool = True
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_size),
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_metadata_size", max_header_list_size),
        # Long polls sit idle for ~70 s: keep the connection warm without upsetting the
        # frontend's ping policy (Temporal permits pings without streams, every 10 s at most).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Several channels must mean several connections.
        ("grpc.use_local_subchannel_pool", 1),
        # Come back quickly after the frontend restarts.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 3_000),
        # grpc-core's retry filter, with no retry policy configured, only does transparent
        # retries; without it each call is smaller (see UpstreamConfig.transparent_retries).
        ("grpc.enable_retries", 1 if transparent_retries else 0),
    ]


def _subject(verdict: Verdict, peer: PeerIdentity | None) -> str:
    if verdict.claims is not None and verdict.claims.subject:
        return verdict.claims.subject
    return peer.subject if peer is not None else ""


class UpstreamPool:
    """Round-robin over N channels to the frontend; `swap` replaces them all (new TLS material)."""

    def __init__(self, factory: Callable[[], grpc.aio.Channel], size: int) -> None:
        self._factory = factory
        self._size = size
        self._channels = [factory() for _ in range(size)]
        self._cycle = itertools.cycle(range(size))
        self._callables: list[dict[str, Any]] = [{} for _ in range(size)]

    def callable_for(self, method: str) -> Any:
        i = next(self._cycle)
        cache = self._callables[i]
        mc = cache.get(method)
        if mc is None:
            mc = self._channels[i].unary_unary(method)
            if len(cache) < 1024:  # AdminService accepts any name; keep the cache bounded
                cache[method] = mc
        return mc

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channels[0]

    def swap(self, factory: Callable[[], grpc.aio.Channel]) -> list[grpc.aio.Channel]:
        """New calls go to fresh channels; returns the old ones for `close_channels`."""
        old = self._channels
        self._factory = factory
        self._channels = [factory() for _ in range(self._size)]
        self._callables = [{} for _ in range(self._size)]
        return old

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(*(ch.close(grace) for ch in self._channels), return_exceptions=True)


async def close_channels(channels: list[grpc.aio.Channel], grace: float) -> None:
    """Calls already on `channels` may finish within `grace`; then they are cancelled."""
    await asyncio.gather(*(ch.close(grace) for ch in channels), return_exceptions=True)


class ForwardingHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs
    """One unary byte-relay for every forwarded method; anything else gets UNIMPLEMENTED."""

    def __init__(
        self,
        *,
        gate: Gate,
        pool: UpstreamPool,
        metrics: ProxyMetrics,
        logger: Logger,
        lookup: Callable[[str], MethodInfo | None],
        is_forwarded: Callable[[str], bool],
        auth_header_name: str = "authorization",
        auth_extra_header_name: str = "authorization-extras",
        strip_authorization: bool = False,
        read_peer: PeerReader | None = None,
        limiter: RateLimiter | None = None,
        audit: AuditLog | None = None,
        max_concurrent_calls: int = 8000,
        encryption: PayloadEncryption | None = None,
    ) -> None:
        self._gate = gate
        self._pool = pool
        self._metrics = metrics
        self._log = logger
        self._lookup = lookup
        self._is_forwarded = is_forwarded
        self._auth = auth_header_name.lower()
        self._extra = auth_extra_header_name.lower()
        self._drop = _HOP_BY_HOP | ({self._auth, self._extra} if strip_authorization else set())
        self._read_peer = read_peer
        self._limiter = limiter
        self._audit = audit
        self._encryption = encryption
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._denied_trailers = (("grpc-status-details-bin", denial_status_bytes()),)
        self._max_calls = max_concurrent_calls
        self.calls = 0  # calls in flight in this process, as counted against the cap
        self.abandoned = 0  # calls that ended before their request arrived (ever)
        self._loop: asyncio.AbstractEventLoop | None = None  # grpc.aio's, set on the first call
        self._rejected = metrics.calls_rejected_total.labels(reason="max_concurrent_calls")
        self._abandoned_total = metrics.calls_abandoned_total
        self._on_abandoned = self._abandoned  # bound once: one per call would cost a little
        # stream_unary: grpc.aio calls it before any request message arrives, so a rejected
        # header-only stream is answered at once instead of being held until it sends one.
        self._reject_handler = grpc.stream_unary_rpc_method_handler(self._reject)

    def _abandoned(self, _task: object) -> None:
        # The call's task ended before the relay ran: its request message never arrived (the
        # client reset the stream or dropped the connection, or grpc refused the message).
        self.calls -= 1
        self.abandoned += 1
        self._abandoned_total.inc()

    async def _reject(self, _requests: object, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_CALLS_MESSAGE)
        return b""  # not reached: abort raises

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        loop = self._loop
        if loop is None:  # current_task(loop) is ~4x cheaper than current_task() on 3.11
            loop = self._loop = asyncio.get_running_loop()
        handler = self._handlers.get(method)
        if handler is None:
            info = self._lookup(method) if self._is_forwarded(method) else None
            if info is None:
                self._metrics.request("unknown", "UNIMPLEMENTED").inc()
                return None
            handler = grpc.unary_unary_rpc_method_handler(self._relay(info))
            if len(self._handlers) < 1024:
                self._handlers[method] = handler
        # grpc.aio runs this in the call's own task as soon as the call arrives, before its
        # request message: counting here covers held header-only streams too. The relay
        # takes the slot over when it starts; if it never does, the task's end releases it.
        # A plain counter: everything here runs on the event loop's thread.
        task = asyncio.current_task(loop)
        # No task to tie the slot to (grpc.aio always runs this in the call's task): refuse
        # rather than let a call past the cap uncounted.
        if task is None or self.calls >= self._max_calls:
            self._rejected.inc()
            info = self._lookup(method)
            self._metrics.request(
                info.short_name if info is not None else "unknown", "RESOURCE_EXHAUSTED"
            ).inc()
            return self._reject_handler
        self.calls += 1
        task.add_done_callback(self._on_abandoned)
        return handler

    def _relay(self, info: MethodInfo) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        gate, pool, metrics, log = self._gate, self._pool, self._metrics, self._log
        method, short = info.full_name, info.short_name
        auth, extra_name, drop = self._auth, self._extra, self._drop
        read_peer = self._read_peer
        limiter, audit, mode = self._limiter, self._audit, gate.mode
        encryption = self._encryption
        duration = metrics.duration(short)
        inflight = metrics.inflight
        denied_trailers = self._denied_trailers
        abandoned, current_task, loop = self._on_abandoned, asyncio.current_task, self._loop

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = perf_counter()
            task = current_task(loop)
            counted = task is not None and task.remove_done_callback(abandoned) > 0
            inflight.inc()
            code = "OK"
            namespace = ""
            verdict: Verdict | None = None
            peer: PeerIdentity | None = None
            try:
                token = extra = ""
                seen_token = seen_extra = False
                outbound: list[tuple[str, str | bytes]] = []
                for key, value in context.invocation_metadata() or ():
                    if key == auth:
                        # Temporal reads the first value only.
                        if not seen_token:
                            seen_token, token = True, value if isinstance(value, str) else ""
                    elif key == extra_name and not seen_extra:
                        seen_extra, extra = True, value if isinstance(value, str) else ""
                    if key in drop or key[0] == ":":
                        continue
                    outbound.append((key, value))
                peer = read_peer(context) if read_peer is not None else None
                verdict = await gate.check(info, request, token=token, extra=extra, peer=peer)
                namespace = verdict.namespace
                if not verdict.allowed:
                    code = "PERMISSION_DENIED"
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE, denied_trailers
                    )
                if limiter is not None:
                    scope = limiter.check(info, _subject(verdict, peer), namespace)
                    if scope is not None:
                        code = "RESOURCE_EXHAUSTED"
                        metrics.rate_limited_total.labels(scope=scope).inc()
                        await context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"temporal-auth-proxy: rate limit exceeded ({scope})",
                        )
                listing: FilteredListing | None = None
                upstream_request = request
                if verdict.filter_namespaces and verdict.claims is not None:
                    # The proxy pages upstream itself; see listfilter for why.
                    try:
                        listing = FilteredListing(request, readable_by(verdict.claims))
                        upstream_request = listing.next_request()
                    except ListingError as exc:
                        code = exc.status
                        log.warning("list_namespaces_refused", reason=exc.reason, error=exc.detail)
                        await context.abort(getattr(grpc.StatusCode, exc.status), exc.message)
                # Payload encryption: after ALLOW (a denied call is never parsed for payloads).
                crypto: CallCrypto | None = None
                if encryption is not None:
                    try:
                        crypto = encryption.call(info, namespace)
                        if crypto is not None:
                            upstream_request = await crypto.seal_async(upstream_request)
                    except EncryptionRefused as exc:
                        code = exc.code
                        await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
                remaining = context.time_remaining()
                timeout = remaining if remaining is not None and remaining < 1e9 else None
                if listing is not None:
                    timeout = (
                        LIST_PAGE_TIMEOUT if timeout is None else min(timeout, LIST_PAGE_TIMEOUT)
                    )
                call = pool.callable_for(method)(
                    upstream_request, metadata=outbound, timeout=timeout
                )
                try:
                    response: bytes = await call
                    while listing is not None:
                        follow = listing.feed(response)
                        if follow is None:
                            response = listing.result()
                            break
                        remaining = context.time_remaining()
                        call = pool.callable_for(method)(
                            follow,
                            metadata=outbound,
                            timeout=LIST_PAGE_TIMEOUT
                            if remaining is None
                            else min(remaining, LIST_PAGE_TIMEOUT),
                        )
                        response = await call
                except ListingError as exc:
                    code = exc.status
                    log.warning("list_namespaces_refused", reason=exc.reason, error=exc.detail)
                    await context.abort(getattr(grpc.StatusCode, exc.status), exc.message)
                except grpc.aio.AioRpcError as exc:
                    status = exc.code()
                    code = status.name
                    metrics.upstream_errors_total.labels(code=code).inc()
                    details = exc.details() or ""
                    initial = tuple(exc.initial_metadata() or ())
                    trailing = tuple(exc.trailing_metadata() or ())
                    if status is grpc.StatusCode.UNAVAILABLE and not initial and not trailing:
                        # Generated by our channel, not by Temporal: keep internals out.
                        log.warning("upstream_unavailable", method=short, error=details)
                        details = UNAVAILABLE_MESSAGE
                    if crypto is not None and trailing:
                        try:
                            trailing = crypto.open_trailers(trailing)
                        except EncryptionRefused as refused:
                            code = refused.code
                            await context.abort(
                                getattr(grpc.StatusCode, refused.code), refused.message
                            )
                    if initial:
                        await context.send_initial_metadata(initial)
                    await context.abort(status, details, trailing)
                if crypto is not None:
                    try:
                        response = await crypto.open_async(response)
                    except EncryptionRefused as exc:
                        code = exc.code
                        await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
                # grpc.aio hands out Metadata objects but accepts only tuples back.
                initial_md = await call.initial_metadata()
                if initial_md:
                    await context.send_initial_metadata(tuple(initial_md))
                trailing_md = await call.trailing_metadata()
                if trailing_md:
                    context.set_trailing_metadata(tuple(trailing_md))
                return response
            except Exception:
                # An abort set `code` already; anything else reaches the caller as UNKNOWN.
                if code == "OK":
                    code = "UNKNOWN"
                raise
            except asyncio.CancelledError:
                # grpc cancels the handler both when the caller gives up and when its
                # deadline passes; the caller sees DEADLINE_EXCEEDED in the second case.
                remaining = context.time_remaining()
                code = (
                    "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
                )
                raise
            finally:
                if counted:
                    self.calls -= 1
                inflight.dec()
                elapsed = perf_counter() - started
                duration.observe(elapsed)
                metrics.request(short, code, namespace).inc()
                if audit is not None and verdict is not None:
                    allowed = verdict.allowed and not verdict.would_deny
                    if audit.wants(info, allowed):
                        audit.write(
                            AuditRecord(
                                subject=_subject(verdict, None),
                                auth_type=auth_type_label(verdict.claims),
                                peer=peer,
                                method=short,
                                namespace=namespace,
                                workflow_id=(
                                    workflow_id(info, request) if verdict.body_read else ""
                                ),
                                decision="allow" if allowed else "deny",
                                reason=verdict.result.reason.value,
                                mode=mode,
                                upstream_status=code,
                                duration_seconds=elapsed,
                            )
                        )

        return relay
