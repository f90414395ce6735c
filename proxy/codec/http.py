"""The Codec Server's HTTP endpoints (aiohttp), for Temporal's Web UI and CLI.

`codec_routes(...)` returns route definitions for the admin application:

* `POST <prefix>/encode`, `/decode`, `/download`, and the same under `<prefix>/<namespace>/`
  (`codec.pathPrefix`, empty by default): the operation is the last path segment;
* `OPTIONS` on each of them for CORS preflights; any other path under the prefix is a JSON 404
  (405 for another method on an operation), with CORS like every other answer.

Body and answer are `{"payloads": [...]}` in protobuf JSON (Temporal's `Payloads`). The namespace
comes from the `X-Namespace` header (the UI and CLI send it), else from the segment before the
operation; the literal segment `{namespace}` (the Web UI does not expand it) means "use the
header". When path and header both name one they must agree, so the namespace that is authorized
is the one whose key encrypts. Query parameters are ignored (the UI sends `preserveStorageRefs`).

Every answer counts `temporal_auth_proxy_codec_requests_total{operation,code}` and
`..._codec_duration_seconds{operation}` and logs one `codec_request` line (info; preflights at
debug) without tokens or payloads.

`/download` is, in Temporal's SDK handler, "fetch these external-storage references and decode
them". The proxy has no storage drivers, so it decodes what it is given: encrypted payloads are
decrypted, anything else (storage references included) comes back unchanged. It needs the same
role as `/decode`.

Authorization, when required, works like the gRPC side: the `Authorization` header (the CLI's
`--codec-auth`, the UI's `passAccessToken`) and `Authorization-Extras` go through the claim
mapper; decode needs `Role.READER` or more on the namespace, encode `Role.WRITER` or more, system
roles included. A caller without a token, with refused credentials or with too small a role gets
403 `{"error": "Request unauthorized."}`; the reason goes to the log as `codec_denied`.
Client errors are 400 with `{"error": "..."}`; nothing answers with a traceback.

Hostile clients: every request is bounded before it costs memory (`CodecLimits`): the body size
(413), then a structural scan of the raw bytes that stops at the first limit (payload count, JSON
nesting depth, JSON values) before `json.loads` builds a single object, so a 4 MiB body of `{},`
costs its own bytes, not a million dicts. At most `max_concurrent_requests` requests hold a body
at once, and all parsing and crypto run on that many worker threads, never on the event loop the
admin listener shares with the gRPC proxy. Every refusal is counted in
`temporal_auth_proxy_codec_rejected_total{operation,reason}`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.codec.body import (
    CodecLimits,
    Rejected,
    bad_request,
    dump_payloads,
    parse_payloads,
)
from proxy.codec.payload import (
    WILDCARD_NAMESPACE,
    CodecError,
    KeyNotAllowedError,
    NoNamespaceKeysError,
    PayloadCodec,
)
from proxy.config.schema import CodecConfig, CorsConfig
from proxy.config.validate import codec_requires_authorization
from proxy.errors import ConfigError, CredentialError
from proxy.interfaces import Authorizer, ClaimMapper, Logger
from proxy.methods import CODEC_DECODE, CODEC_DOWNLOAD, CODEC_ENCODE
from proxy.metrics import CodecMetrics
from proxy.model import AuthInfo, CallTarget, Reason, Role

__all__ = [
    "NAMESPACE_HEADER",
    "NAMESPACE_PLACEHOLDER",
    "UNAUTHORIZED",
    "codec_requires_authorization",
    "codec_routes",
]

NAMESPACE_HEADER = "X-Namespace"
UNAUTHORIZED = "Request unauthorized."
_PREFLIGHT_MAX_AGE = "600"
_CHUNK = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Op(enum.Enum):
    ENCODE = ("encode", Role.WRITER, CODEC_ENCODE)
    DECODE = ("decode", Role.READER, CODEC_DECODE)
    DOWNLOAD = ("download", Role.READER, CODEC_DOWNLOAD)

    def __init__(self, path: str, role: Role, action: str) -> None:
        self.path = path
        self.role = role
        self.action = action  # the method-table name a policy authorizer decides


def codec_routes(
    codec: PayloadCodec,
    *,
    claim_mapper: ClaimMapper | None,
    require_authorization: bool,
    cors: CorsConfig,
    auth_header_name: str = "authorization",
    extra_header_name: str = "authorization-extras",
    audience: str = "",
    limits: CodecLimits | None = None,
    metrics: CodecMetrics | None = None,
    path_prefix: str = "",
    logger: Logger | None = None,
    authorizer: Authorizer | None = None,
) -> list[web.RouteDef]:
    """Routes for `app.add_routes(...)`: the codec endpoints and their CORS preflights.

    `limits` defaults to the config's defaults; `metrics` to a private registry (tests);
    `path_prefix` (`codec.pathPrefix`, e.g. `/codec`) serves everything under it; `logger`
    defaults to structlog's `proxy.codec` logger (tests; the app passes its own).
    `authorizer` (Cedar) decides each operation as the call `Codec/Encode` ... on the
    namespace, instead of the built-in role check (which is what it does without one)."""
    if require_authorization and claim_mapper is None:
        raise ConfigError("codec.requireAuthorization", "authorization needs a claim mapper")
    server = _CodecServer(
        codec,
        claim_mapper=claim_mapper if require_authorization else None,
        cors=cors,
        auth_header_name=auth_header_name,
        extra_header_name=extra_header_name,
        audience=audience,
        limits=limits or CodecLimits.from_config(CodecConfig()),
        metrics=metrics or CodecMetrics(CollectorRegistry()),
        logger=logger if logger is not None else structlog.get_logger("proxy.codec"),
        authorizer=authorizer,
    )
    prefix = path_prefix.rstrip("/")
    routes: list[web.RouteDef] = []
    for op in _Op:
        handler = server.handler(op)
        # Any one segment names the namespace, braces included: the Web UI posts the literal
        # `{namespace}` (aiohttp's default segment pattern refuses braces).
        for path in (f"{prefix}/{op.path}", f"{prefix}/{{namespace:[^/]+}}/{op.path}"):
            routes.append(web.post(path, handler))
            routes.append(web.options(path, server.preflight))
    # Last, so the admin's own routes and the codec's match first: every other path under the
    # prefix answers a JSON 404 (or 405) that a browser can read (CORS).
    routes.append(web.route("*", f"{prefix}/{{tail:.*}}", server.fallback))
    return routes


def _canonical(header: str) -> str:
    return "-".join(part.capitalize() for part in header.strip().split("-"))


class _CodecServer:
    def __init__(
        self,
        codec: PayloadCodec,
        *,
        claim_mapper: ClaimMapper | None,
        cors: CorsConfig,
        auth_header_name: str,
        extra_header_name: str,
        audience: str,
        limits: CodecLimits,
        metrics: CodecMetrics,
        logger: Logger,
        authorizer: Authorizer | None = None,
    ) -> None:
        self._log = logger
        self._codec = codec
        self._authorizer = authorizer
        self._limits = limits
        self._metrics = metrics
        # Bodies held at once (read, parsed, answered), and the threads that parse them: JSON
        # and crypto never run on the event loop the gRPC proxy shares.
        self._slots = asyncio.Semaphore(limits.max_concurrent_requests)
        self._pool = ThreadPoolExecutor(
            max_workers=limits.max_concurrent_requests, thread_name_prefix="codec"
        )
        self._mapper = claim_mapper
        self._origins = frozenset(cors.origins)
        self._credentials = cors.allow_credentials
        self._auth_header = auth_header_name
        self._extra_header = extra_header_name
        self._audience = audience
        allowed = [auth_header_name, extra_header_name, NAMESPACE_HEADER, "Content-Type"]
        self._allow_headers = ", ".join(dict.fromkeys(_canonical(h) for h in allowed))

    # ------------------------------------------------------------------------- CORS

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        if not self._origins:
            return response
        # Caches must not hand one origin's answer to another.
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if origin is not None and origin in self._origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            if self._credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = web.Response(status=204)
        self._cors(request, response)
        if "Access-Control-Allow-Origin" in response.headers:
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = self._allow_headers
            response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
        self._observe("preflight", request, response, started)
        return response

    async def fallback(self, request: web.Request) -> web.StreamResponse:
        """Any other path under the prefix (or method on a codec path): JSON 404/405 + CORS."""
        started = time.perf_counter()
        ops = {op.path for op in _Op}
        if request.path.rsplit("/", 1)[-1] in ops and request.method not in ("POST", "OPTIONS"):
            response = _error(405, f"method {request.method[:16]} not allowed (use POST)")
            response.headers["Allow"] = "OPTIONS, POST"
        else:
            response = _error(
                404,
                "not found: the operation (encode, decode, download) is the last path segment, "
                "after at most one namespace segment (behind a path prefix? set codec.pathPrefix)",
            )
        self._cors(request, response)
        self._observe("unknown", request, response, started)
        return response

    # --------------------------------------------------------------------- handlers

    def handler(self, op: _Op) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            response = self._cors(request, await self._handle(op, request))
            self._observe(op.path, request, response, started)
            return response

        return handle

    def _observe(
        self,
        operation: str,
        request: web.Request,
        response: web.StreamResponse,
        started: float,
    ) -> None:
        """Metrics and one access-log line per request (info; preflights at debug). Never a
        token or a payload: method, path template, namespace, status, sizes, duration, origin."""
        elapsed = time.perf_counter() - started
        self._metrics.request(operation, response.status, elapsed)
        body = response.body if isinstance(response, web.Response) else None
        route = request.match_info.route.resource
        # Preflights and stray paths at debug: a scanner must not fill the log at info.
        log = self._log.debug if operation in ("preflight", "unknown") else self._log.info
        log(
            "codec_request",
            operation=operation,
            method=request.method,
            path=route.canonical if route is not None else "",
            namespace=_clip(_namespace_for_log(request)),
            status=response.status,
            bytes_in=request.content_length,
            bytes_out=len(body) if isinstance(body, bytes) else None,
            duration_ms=round(elapsed * 1000, 3),
            origin=_clip(request.headers.get("Origin", "")),
        )

    async def _handle(self, op: _Op, request: web.Request) -> web.StreamResponse:
        try:
            namespace = _namespace(request)
            if not await self._authorized(op, namespace, request):
                self._metrics.rejected(op.path, "unauthorized")
                return _error(403, UNAUTHORIZED)
            # Fails before the body is read when namespaceKeys gives this namespace nothing.
            self._codec.key_ids_for(namespace)
            answer = await self._process_in_slot(op, namespace, request)
        except Rejected as exc:
            return self._reject(op, exc.status, exc.reason, str(exc))
        except KeyNotAllowedError as exc:
            return self._reject(op, 400, "key_not_allowed", str(exc))
        except NoNamespaceKeysError as exc:
            return self._reject(op, 400, "namespace_without_keys", str(exc))
        except CodecError as exc:
            return self._reject(op, 400, "codec_error", str(exc))
        except Exception:
            # A bug, not the caller's fault: the traceback goes to the log, not the answer.
            self._log.error("codec_failed", operation=op.path, exc_info=True)
            return _error(500, "internal error")
        return web.Response(body=answer, content_type="application/json")

    def _reject(self, op: _Op, status: int, reason: str, message: str) -> web.Response:
        self._metrics.rejected(op.path, reason)
        return _error(status, message)

    async def _process_in_slot(self, op: _Op, namespace: str, request: web.Request) -> bytes:
        limit = self._limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Rejected(413, "body_too_large", _too_large(limit))
        try:
            async with asyncio.timeout(self._limits.slot_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Rejected(503, "busy", "codec server busy, retry later") from None
        handed_over = False
        try:
            try:
                async with asyncio.timeout(self._limits.body_timeout):
                    body = await self._read_body(request)
            except TimeoutError:
                raise Rejected(
                    408,
                    "body_timeout",
                    f"request body not received within {self._limits.body_timeout:g}s",
                ) from None
            work = asyncio.get_running_loop().run_in_executor(
                self._pool, self._process, op, namespace, body
            )
            del body
            # The slot is the thread's until its work ends, even if this request is cancelled.
            work.add_done_callback(lambda _: self._slots.release())
            handed_over = True
            return await asyncio.shield(work)
        finally:
            if not handed_over:
                self._slots.release()

    async def _authorized(self, op: _Op, namespace: str, request: web.Request) -> bool:
        if self._mapper is None:
            return True
        token = request.headers.get(self._auth_header, "")
        if not token:
            return self._deny(op, namespace, Reason.TOKEN_REQUIRED, "no token")
        info = AuthInfo(
            token=token,
            extra=request.headers.get(self._extra_header, ""),
            audience=self._audience,
        )
        try:
            claims = await self._mapper.get_claims(info)
        except CredentialError as exc:
            return self._deny(op, namespace, exc.reason, exc.detail)
        except Exception as exc:
            # Fail closed; the message of a foreign exception may quote the credentials.
            detail = f"claim mapper raised {type(exc).__name__}"
            return self._deny(op, namespace, Reason.CLAIM_MAPPER_ERROR, detail)
        if self._authorizer is not None:
            try:
                result = await self._authorizer.authorize(
                    claims, CallTarget(api_name=op.action, namespace=namespace)
                )
            except Exception as exc:  # fail closed, as the gRPC side
                detail = f"authorizer raised {type(exc).__name__}"
                return self._deny(op, namespace, Reason.AUTHORIZER_ERROR, detail)
            if not result.allowed:
                return self._deny(
                    op,
                    namespace,
                    result.reason,
                    "denied by the authorizer",
                    subject=claims.subject,
                    policies=result.policies,
                )
            return True
        role = claims.role_in(namespace)
        if role < op.role:
            detail = f"role {int(role)} below required {int(op.role)}"
            return self._deny(
                op, namespace, Reason.INSUFFICIENT_ROLE, detail, subject=claims.subject
            )
        return True

    def _deny(
        self,
        op: _Op,
        namespace: str,
        reason: Reason,
        detail: str,
        subject: str = "",
        policies: tuple[str, ...] | None = None,
    ) -> bool:
        extra = {"policies": list(policies)} if policies is not None else {}
        self._log.warning(
            "codec_denied",
            operation=op.path,
            namespace=namespace,
            reason=str(reason),
            detail=detail,
            subject=subject,
            **extra,
        )
        return False

    async def _read_body(self, request: web.Request) -> bytearray:
        # Read the stream ourselves: request.read() would apply the admin app's
        # client_max_size (1 MiB by default), too small for a history's payloads.
        limit = self._limits.max_body_bytes
        body = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            if len(body) + len(chunk) > limit:
                raise Rejected(413, "body_too_large", _too_large(limit))
            body += chunk
        return body  # not copied to bytes: one body-sized buffer per request

    def _process(self, op: _Op, namespace: str, body: bytearray) -> bytes:
        """On a worker thread: parse within the limits, encode or decode, serialize."""
        try:
            payloads = parse_payloads(body, self._limits)
        finally:
            # A refusal's traceback keeps the frames, and so the body, alive until the cycle
            # collector runs; a stream of hostile bodies would pile up. Free it now.
            body.clear()
        if op is _Op.ENCODE:
            out = self._codec.encode(payloads, namespace)
        else:
            out = self._codec.decode(payloads, namespace)
        return dump_payloads(out)


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes (codec.maxBodyBytes)"


# The literal segment the Web UI sends (it does not expand the template): "use the header".
NAMESPACE_PLACEHOLDER = "{namespace}"


def _namespace(request: web.Request) -> str:
    """X-Namespace, else the segment before the operation; both given: they must agree."""
    from_path = request.match_info.get("namespace")
    if from_path == NAMESPACE_PLACEHOLDER:
        from_path = None
    from_header = request.headers.get(NAMESPACE_HEADER)
    if from_path is not None and from_header is not None and from_path != from_header:
        raise bad_request(
            f"namespace in the path and the {NAMESPACE_HEADER} header differ "
            "(served behind a path prefix? set codec.pathPrefix)"
        )
    namespace = from_header if from_header is not None else (from_path or "")
    if namespace == WILDCARD_NAMESPACE:
        # `*` in codec.namespaceKeys means "every namespace not named"; it names none itself.
        raise bad_request("'*' is not a namespace")
    return namespace


def _namespace_for_log(request: web.Request) -> str:
    try:
        return _namespace(request)
    except Rejected:
        return request.headers.get(NAMESPACE_HEADER, "")


def _clip(value: str, limit: int = 200) -> str:
    """Caller strings in log lines are bounded (marked when cut)."""
    return value if len(value) <= limit else value[:limit] + "...[truncated]"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
