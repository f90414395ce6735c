"""The Codec Server's HTTP endpoints (aiohttp), for Temporal's Web UI and CLI.

`codec_routes(...)` returns route definitions for the admin application:

* `POST /encode`, `POST /decode`, `POST /download`, and the same under `/{namespace}/`;
* `OPTIONS` on each of them for CORS preflights.

Body and answer are `{"payloads": [...]}` in protobuf JSON (Temporal's `Payloads`). The namespace
comes from the path or the `X-Namespace` header (the UI and CLI send it); when both are given
they must agree, so the namespace that is authorized is the one whose key encrypts. Query
parameters are ignored (the UI sends `preserveStorageRefs`).

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
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from google.protobuf import json_format

from proxy.codec import CodecError, Payload, PayloadCodec, Payloads
from proxy.config import Config, CorsConfig
from proxy.errors import ConfigError, CredentialError
from proxy.interfaces import ClaimMapper
from proxy.model import AuthInfo, Reason, Role

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "NAMESPACE_HEADER",
    "UNAUTHORIZED",
    "codec_requires_authorization",
    "codec_routes",
]

NAMESPACE_HEADER = "X-Namespace"
UNAUTHORIZED = "Request unauthorized."
DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024
# Below this, JSON and crypto work is cheaper than a hop to a worker thread. Above it the work
# leaves the event loop, which the admin listener shares with the gRPC proxy.
_INLINE_LIMIT = 64 * 1024
_PREFLIGHT_MAX_AGE = "600"

_log = structlog.get_logger("proxy.codec")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Op(enum.Enum):
    ENCODE = ("encode", Role.WRITER)
    DECODE = ("decode", Role.READER)
    DOWNLOAD = ("download", Role.READER)

    def __init__(self, path: str, role: Role) -> None:
        self.path = path
        self.role = role


class _BadRequest(Exception):
    """A request we answer with 400 and this message."""


class _TooLarge(Exception):
    """A body over `max_body_size`: 413."""


def codec_requires_authorization(cfg: Config) -> bool:
    """`codec.requireAuthorization`, defaulting to "yes when JWT (or any claim mapper) is on"."""
    if cfg.codec.require_authorization is not None:
        return cfg.codec.require_authorization
    az = cfg.authorization
    has_jwt_keys = any(uri.strip() for uri in az.jwt_key_provider.key_source_uris)
    # A plugin claim mapper is fail-closed too: it exists to check credentials.
    return has_jwt_keys or az.claim_mapper.strip().lower() not in ("", "noop")


def codec_routes(
    codec: PayloadCodec,
    *,
    claim_mapper: ClaimMapper | None,
    require_authorization: bool,
    cors: CorsConfig,
    auth_header_name: str = "authorization",
    extra_header_name: str = "authorization-extras",
    audience: str = "",
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> list[web.RouteDef]:
    """Routes for `app.add_routes(...)`: the codec endpoints and their CORS preflights."""
    if require_authorization and claim_mapper is None:
        raise ConfigError("codec.requireAuthorization", "authorization needs a claim mapper")
    server = _CodecServer(
        codec,
        claim_mapper=claim_mapper if require_authorization else None,
        cors=cors,
        auth_header_name=auth_header_name,
        extra_header_name=extra_header_name,
        audience=audience,
        max_body_size=max_body_size,
    )
    routes: list[web.RouteDef] = []
    for op in _Op:
        handler = server.handler(op)
        for path in (f"/{op.path}", f"/{{namespace}}/{op.path}"):
            routes.append(web.post(path, handler))
            routes.append(web.options(path, server.preflight))
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
        max_body_size: int,
    ) -> None:
        self._codec = codec
        self._mapper = claim_mapper
        self._origins = frozenset(cors.origins)
        self._credentials = cors.allow_credentials
        self._auth_header = auth_header_name
        self._extra_header = extra_header_name
        self._audience = audience
        self._max_body = max_body_size
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
        response = web.Response(status=204)
        self._cors(request, response)
        if "Access-Control-Allow-Origin" in response.headers:
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = self._allow_headers
            response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
        return response

    # --------------------------------------------------------------------- handlers

    def handler(self, op: _Op) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return self._cors(request, await self._handle(op, request))

        return handle

    async def _handle(self, op: _Op, request: web.Request) -> web.StreamResponse:
        try:
            namespace = _namespace(request)
            if not await self._authorized(op, namespace, request):
                return _error(403, UNAUTHORIZED)
            body = await self._read_body(request)
            if len(body) <= _INLINE_LIMIT:
                answer = self._process(op, namespace, body)
            else:
                answer = await asyncio.to_thread(self._process, op, namespace, body)
        except _BadRequest as exc:
            return _error(400, str(exc))
        except CodecError as exc:
            return _error(400, str(exc))
        except _TooLarge:
            return _error(413, f"request body is larger than {self._max_body} bytes")
        except Exception:
            # A bug, not the caller's fault: the traceback goes to the log, not the answer.
            _log.exception("codec_failed", operation=op.path)
            return _error(500, "internal error")
        return web.Response(body=answer, content_type="application/json")

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
        role = claims.role_in(namespace)
        if role < op.role:
            detail = f"role {int(role)} below required {int(op.role)}"
            return self._deny(
                op, namespace, Reason.INSUFFICIENT_ROLE, detail, subject=claims.subject
            )
        return True

    @staticmethod
    def _deny(op: _Op, namespace: str, reason: Reason, detail: str, subject: str = "") -> bool:
        _log.warning(
            "codec_denied",
            operation=op.path,
            namespace=namespace,
            reason=str(reason),
            detail=detail,
            subject=subject,
        )
        return False

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body:
            raise _TooLarge
        # Read the stream ourselves: request.read() would apply the admin app's
        # client_max_size (1 MiB by default), too small for a history's payloads.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _process(self, op: _Op, namespace: str, body: bytes) -> bytes:
        payloads = _parse_payloads(body)
        if op is _Op.ENCODE:
            out = self._codec.encode(payloads, namespace)
        else:
            out = self._codec.decode(payloads)
        return _dump_payloads(out)


def _namespace(request: web.Request) -> str:
    from_path = request.match_info.get("namespace")
    from_header = request.headers.get(NAMESPACE_HEADER)
    if from_path is not None and from_header is not None and from_path != from_header:
        raise _BadRequest(f"namespace in the path and the {NAMESPACE_HEADER} header differ")
    return from_path if from_path is not None else (from_header or "")


def _parse_payloads(body: bytes) -> list[Payload]:
    # json_format.Parse accepts any JSON value (`[]` becomes an empty message), so the shape
    # is checked here first.
    try:
        raw: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("payloads"), list):
        raise _BadRequest('body must be a JSON object {"payloads": [...]}')
    try:
        message = json_format.ParseDict(raw, Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise _BadRequest(f"body is not a valid Payloads message: {exc}") from None
    return list(message.payloads)


def _dump_payloads(payloads: list[Payload]) -> bytes:
    # Built by hand so an empty list is still written as "payloads": [] (clients index it).
    data = {"payloads": [json_format.MessageToDict(p) for p in payloads]}
    return json.dumps(data, separators=(",", ":")).encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
