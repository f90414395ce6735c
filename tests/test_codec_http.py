"""proxy.codec_http over a real aiohttp server on 127.0.0.1, with real signed tokens, and the
SDK adapter (proxy.sdk_codec) talking to it."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import json
import subprocess
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import ClientResponse, ClientSession, web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from temporalio.api.common.v1 import Payload as TemporalPayload
from temporalio.converter import DataConverter

from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.codec.body import VALUES_PER_PAYLOAD, CodecLimits, check_json_bounds
from proxy.codec.http import codec_requires_authorization, codec_routes
from proxy.codec.payload import KeyRing, Payload, PayloadCodec
from proxy.config.parse import parse_config
from proxy.config.schema import CodecConfig, CorsConfig
from proxy.errors import ConfigError
from proxy.keys.jwks import StaticKeyProvider
from proxy.metrics import CodecMetrics
from proxy.model import AuthInfo, Claims
from proxy.sdk_codec import EncryptionCodec
from tests.jwt_helpers import rs256_token, rsa_key

KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(50, 82))
KEY_NS = bytes(range(200, 232))
UI = "https://ui.example.test"
OTHER = "https://evil.example.test"


def shared_codec() -> PayloadCodec:
    return PayloadCodec(KeyRing({"old": KEY_OLD, "new": KEY_NEW}), encrypt_key_id="new")


def limits(**over: float) -> CodecLimits:
    return dataclasses.replace(CodecLimits.from_config(CodecConfig()), **over)


def rejected(registry: CollectorRegistry, operation: str, reason: str) -> float:
    value = registry.get_sample_value(
        "temporal_auth_proxy_codec_rejected_total", {"operation": operation, "reason": reason}
    )
    assert value is not None
    return value


def make_codec() -> PayloadCodec:
    ring = KeyRing({"old": KEY_OLD, "new": KEY_NEW, "ns-key": KEY_NS})
    return PayloadCodec(
        ring, encrypt_key_id="new", namespace_keys={"billing": "ns-key", "*": ["new", "old"]}
    )


def token(*permissions: str, sub: str = "someone") -> str:
    claims = {"sub": sub, "permissions": list(permissions), "exp": int(time.time()) + 600}
    return "Bearer " + rs256_token(claims)


READER = token("orders:read", sub="reader")
WRITER = token("orders:write", "billing:write", sub="writer")
SYSTEM = token("temporal-system:admin", sub="operator")
WORKER_ONLY = token("orders:worker", sub="worker")


def mapper() -> DefaultJWTClaimMapper:
    return DefaultJWTClaimMapper(StaticKeyProvider({"rsa1": rsa_key().public_key()}))


def plain_json(data: bytes, encoding: bytes = b"json/plain") -> dict[str, Any]:
    return {
        "metadata": {"encoding": base64.b64encode(encoding).decode()},
        "data": base64.b64encode(data).decode(),
    }


def from_json(item: dict[str, Any]) -> TemporalPayload:
    """Temporal's own JSON mapping, to check the answer independently of our message class."""
    return json_format.ParseDict(item, TemporalPayload())


Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def _start(**overrides: Any) -> str:
        kwargs: dict[str, Any] = {
            "claim_mapper": mapper(),
            "require_authorization": True,
            "cors": CorsConfig(origins=(UI,)),
        }
        kwargs.update(overrides)
        codec = kwargs.pop("codec", None) or make_codec()
        app = web.Application()
        app.add_routes(codec_routes(codec, **kwargs))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield _start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def post(
    http: ClientSession,
    url: str,
    body: Any,
    auth: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[ClientResponse, Any]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if auth is not None:
        hdrs["Authorization"] = auth
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers=hdrs) as resp:
        text = await resp.text()
        assert resp.content_type == "application/json", text
        return resp, json.loads(text)


# -------------------------------------------------------------------------- round trips


async def test_encode_then_decode_round_trip_and_bytes(start: Start, http: ClientSession) -> None:
    base = await start()
    items = [plain_json(b'{"card":"4111"}'), plain_json(b"", b"binary/null")]
    resp, encoded = await post(http, f"{base}/orders/encode", {"payloads": items}, WRITER)
    assert resp.status == 200, encoded
    assert len(encoded["payloads"]) == 2
    for sent, got in zip(items, encoded["payloads"], strict=True):
        outer = from_json(got)
        assert outer.metadata["encoding"] == b"binary/encrypted"
        assert outer.metadata["encryption-key-id"] == b"new"
        # Independent decryption: nonce first, then ciphertext+tag, no associated data.
        inner = AESGCM(KEY_NEW).decrypt(outer.data[:12], outer.data[12:], None)
        assert TemporalPayload.FromString(inner) == from_json(sent)
    resp, decoded = await post(http, f"{base}/orders/decode", encoded, READER)
    assert resp.status == 200, decoded
    assert [from_json(p) for p in decoded["payloads"]] == [from_json(p) for p in items]


async def test_decode_without_namespace_in_path_uses_x_namespace(
    start: Start, http: ClientSession
) -> None:
    base = await start()
    [sealed] = make_codec().encode([from_json_ours(plain_json(b"42"))])
    body = {"payloads": [to_json(sealed)]}
    resp, answer = await post(http, f"{base}/decode", body, READER, {"X-Namespace": "orders"})
    assert resp.status == 200, answer
    assert from_json(answer["payloads"][0]).data == b"42"
    # Without any namespace the reader has no role ("" is system roles only).
    resp, answer = await post(http, f"{base}/decode", body, READER)
    assert resp.status == 403
    assert answer == {"error": "Request unauthorized."}


async def test_namespace_key_is_used_for_that_namespace(start: Start, http: ClientSession) -> None:
    base = await start()
    body = {"payloads": [plain_json(b"x")]}
    _, billing = await post(http, f"{base}/encode", body, WRITER, {"X-Namespace": "billing"})
    _, orders = await post(http, f"{base}/orders/encode", body, WRITER)
    assert from_json(billing["payloads"][0]).metadata["encryption-key-id"] == b"ns-key"
    assert from_json(orders["payloads"][0]).metadata["encryption-key-id"] == b"new"


async def test_old_key_still_decodes_over_http(start: Start, http: ClientSession) -> None:
    base = await start()
    retired = PayloadCodec(KeyRing({"old": KEY_OLD}), encrypt_key_id="old")
    [sealed] = retired.encode([from_json_ours(plain_json(b"legacy"))])
    resp, answer = await post(
        http, f"{base}/orders/decode", {"payloads": [to_json(sealed)]}, READER
    )
    assert resp.status == 200
    assert from_json(answer["payloads"][0]).data == b"legacy"


async def test_download_decodes_and_passes_references_through(
    start: Start, http: ClientSession
) -> None:
    base = await start()
    [sealed] = make_codec().encode([from_json_ours(plain_json(b"blob"))])
    reference = plain_json(b'{"driver":"s3"}', b"json/external-storage-reference")
    body = {"payloads": [to_json(sealed), reference]}
    resp, answer = await post(http, f"{base}/orders/download", body, READER)
    assert resp.status == 200, answer
    assert from_json(answer["payloads"][0]).data == b"blob"
    assert from_json(answer["payloads"][1]) == from_json(reference)


async def test_unknown_query_parameters_are_ignored(start: Start, http: ClientSession) -> None:
    base = await start()
    [sealed] = make_codec().encode([from_json_ours(plain_json(b"q"))])
    url = f"{base}/orders/decode?preserveStorageRefs=true&whatever=1"
    resp, answer = await post(http, url, {"payloads": [to_json(sealed)]}, READER)
    assert resp.status == 200, answer
    assert from_json(answer["payloads"][0]).data == b"q"


async def test_empty_payload_list_answers_an_empty_list(start: Start, http: ClientSession) -> None:
    base = await start()
    resp, answer = await post(http, f"{base}/orders/decode", {"payloads": []}, READER)
    assert resp.status == 200
    assert answer == {"payloads": []}


# -------------------------------------------------------------------------- authorization


async def test_reader_can_decode_but_cannot_encode(start: Start, http: ClientSession) -> None:
    base = await start()
    body = {"payloads": [plain_json(b"x")]}
    with structlog.testing.capture_logs() as logs:
        resp, answer = await post(http, f"{base}/orders/encode", body, READER)
    assert resp.status == 403
    assert answer == {"error": "Request unauthorized."}
    [event] = [e for e in logs if e["event"] == "codec_denied"]
    assert event["reason"] == "insufficient_role"
    assert event["namespace"] == "orders" and event["operation"] == "encode"
    assert event["subject"] == "reader"
    assert READER.split()[1] not in json.dumps(logs, default=str)
    resp, _ = await post(http, f"{base}/orders/decode", body, READER)
    assert resp.status == 200


async def test_writer_can_encode_only_in_its_namespaces(start: Start, http: ClientSession) -> None:
    base = await start()
    body = {"payloads": [plain_json(b"x")]}
    resp, _ = await post(http, f"{base}/orders/encode", body, WRITER)
    assert resp.status == 200
    resp, answer = await post(http, f"{base}/shipping/encode", body, WRITER)
    assert resp.status == 403, answer


async def test_worker_role_is_below_reader(start: Start, http: ClientSession) -> None:
    base = await start()
    resp, _ = await post(http, f"{base}/orders/decode", {"payloads": []}, WORKER_ONLY)
    assert resp.status == 403


async def test_system_role_works_on_any_namespace(start: Start, http: ClientSession) -> None:
    base = await start()
    body = {"payloads": [plain_json(b"x")]}
    for ns in ("orders", "anything-else", "temporal-system"):
        resp, encoded = await post(http, f"{base}/{ns}/encode", body, SYSTEM)
        assert resp.status == 200, (ns, encoded)
        resp, decoded = await post(http, f"{base}/decode", encoded, SYSTEM, {"X-Namespace": ns})
        assert resp.status == 200, (ns, decoded)
    resp, _ = await post(http, f"{base}/encode", body, SYSTEM)
    assert resp.status == 200


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "token_required"),
        ("", "token_required"),
        ("Bearer not.a.jwt", "bad_token_format"),
        ("Basic dXNlcjpwYXNz", "bad_token_format"),
    ],
)
async def test_missing_or_bad_token_is_403(
    start: Start, http: ClientSession, auth: str | None, reason: str
) -> None:
    base = await start()
    with structlog.testing.capture_logs() as logs:
        resp, answer = await post(http, f"{base}/orders/decode", {"payloads": []}, auth)
    assert resp.status == 403
    assert answer == {"error": "Request unauthorized."}
    assert [e["reason"] for e in logs if e["event"] == "codec_denied"] == [reason]
    if auth:
        assert auth.split()[1] not in json.dumps(logs, default=str)


async def test_expired_token_is_403(start: Start, http: ClientSession) -> None:
    base = await start()
    expired = "Bearer " + rs256_token(
        {"sub": "late", "permissions": ["orders:read"], "exp": int(time.time()) - 10}
    )
    resp, answer = await post(http, f"{base}/orders/decode", {"payloads": []}, expired)
    assert resp.status == 403
    assert answer == {"error": "Request unauthorized."}


class _ExplodingMapper:
    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        raise RuntimeError(f"boom with {auth_info.token}")


class _RecordingMapper:
    def __init__(self) -> None:
        self.seen: list[AuthInfo] = []

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        self.seen.append(auth_info)
        return Claims()


async def test_claim_mapper_crash_fails_closed(start: Start, http: ClientSession) -> None:
    base = await start(claim_mapper=_ExplodingMapper())
    with structlog.testing.capture_logs() as logs:
        resp, answer = await post(http, f"{base}/orders/decode", {"payloads": []}, "Bearer s3cr3t")
    assert resp.status == 403
    assert answer == {"error": "Request unauthorized."}
    assert "s3cr3t" not in json.dumps(logs, default=str)


async def test_extra_header_and_custom_header_names_reach_the_mapper(
    start: Start, http: ClientSession
) -> None:
    recorder = _RecordingMapper()
    base = await start(
        claim_mapper=recorder,
        auth_header_name="x-token",
        extra_header_name="x-extra",
        audience="aud",
    )
    headers = {"X-Token": "Bearer t", "X-Extra": "more"}
    resp, _ = await post(http, f"{base}/orders/decode", {"payloads": []}, None, headers)
    assert resp.status == 403  # the recorder grants nothing
    [info] = recorder.seen
    assert (info.token, info.extra, info.audience) == ("Bearer t", "more", "aud")


async def test_no_authorization_when_not_required(start: Start, http: ClientSession) -> None:
    base = await start(claim_mapper=None, require_authorization=False)
    resp, encoded = await post(http, f"{base}/encode", {"payloads": [plain_json(b"open")]})
    assert resp.status == 200
    resp, decoded = await post(http, f"{base}/decode", encoded)
    assert from_json(decoded["payloads"][0]).data == b"open"


def test_required_authorization_needs_a_claim_mapper() -> None:
    with pytest.raises(ConfigError) as info:
        codec_routes(make_codec(), claim_mapper=None, require_authorization=True, cors=CorsConfig())
    assert info.value.path == "codec.requireAuthorization"


@pytest.mark.parametrize(
    ("authorization", "codec", "expected"),
    [
        ({"claimMapper": "noop"}, {}, False),
        ({"jwtKeyProvider": {"keySourceURIs": ["file:///jwks.json"]}}, {}, True),
        ({"claimMapper": "noop"}, {"requireAuthorization": True}, True),
        (
            {"jwtKeyProvider": {"keySourceURIs": ["file:///jwks.json"]}},
            {"requireAuthorization": False},
            False,
        ),
    ],
)
def test_require_authorization_default(
    authorization: dict[str, Any], codec: dict[str, Any], expected: bool
) -> None:
    cfg = parse_config(
        {"upstream": {"address": "up:7233"}, "authorization": authorization, "codec": codec},
        env={},
    )
    assert codec_requires_authorization(cfg) is expected


# -------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'"payloads"',
        b"{}",
        b'{"payloads": 5}',
        b'{"payloads": [{"data": 7}]}',
        b'{"payloads": [{"metadata": []}]}',
        b"[" * 100000,
    ],
)
async def test_malformed_body_is_400_json(start: Start, http: ClientSession, body: bytes) -> None:
    base = await start()
    resp, answer = await post(http, f"{base}/orders/decode", body, READER)
    assert resp.status == 400
    assert isinstance(answer["error"], str) and answer["error"]
    assert "Traceback" not in answer["error"]


async def test_garbage_ciphertext_is_400_json(start: Start, http: ClientSession) -> None:
    base = await start()
    garbage = {
        "metadata": {
            "encoding": base64.b64encode(b"binary/encrypted").decode(),
            "encryption-key-id": base64.b64encode(b"new").decode(),
        },
        "data": base64.b64encode(b"\x00" * 64).decode(),
    }
    resp, answer = await post(http, f"{base}/orders/decode", {"payloads": [garbage]}, READER)
    assert resp.status == 400
    assert "failed authentication" in answer["error"]
    garbage["metadata"]["encryption-key-id"] = base64.b64encode(b"nope").decode()
    resp, answer = await post(http, f"{base}/orders/decode", {"payloads": [garbage]}, READER)
    assert resp.status == 400
    assert "not a key of namespace 'orders'" in answer["error"]
    # Without namespaceKeys the whole ring is tried, and the unknown id is named.
    shared = await start(codec=shared_codec())
    resp, answer = await post(http, f"{shared}/orders/decode", {"payloads": [garbage]}, READER)
    assert resp.status == 400
    assert "unknown encryption key id 'nope'" in answer["error"]


class _BuggyCodec(PayloadCodec):
    def decode(self, payloads: Any, namespace: str = "") -> Any:
        raise RuntimeError("bug with internals")


async def test_unexpected_failure_is_a_json_500_without_details(
    start: Start, http: ClientSession
) -> None:
    codec = _BuggyCodec(KeyRing({"k": KEY_OLD}), encrypt_key_id="k")
    base = await start(codec=codec)
    with structlog.testing.capture_logs() as logs:
        resp, answer = await post(http, f"{base}/orders/decode", {"payloads": []}, READER)
    assert resp.status == 500
    assert answer == {"error": "internal error"}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["codec_failed"]


async def test_path_and_header_namespaces_must_agree(start: Start, http: ClientSession) -> None:
    base = await start()
    resp, answer = await post(
        http, f"{base}/orders/decode", {"payloads": []}, SYSTEM, {"X-Namespace": "billing"}
    )
    assert resp.status == 400
    assert "X-Namespace" in answer["error"]


async def test_body_over_the_limit_is_413(start: Start, http: ClientSession) -> None:
    registry = CollectorRegistry()
    base = await start(limits=limits(max_body_bytes=1024), metrics=CodecMetrics(registry))
    body = {"payloads": [plain_json(b"x" * 2000)]}
    resp, answer = await post(http, f"{base}/orders/encode", body, WRITER)
    assert resp.status == 413
    assert answer == {"error": "request body is larger than 1024 bytes (codec.maxBodyBytes)"}
    # Without a Content-Length (chunked), the stream is cut at the limit all the same.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 100

    hdrs = {"Authorization": READER, "Content-Type": "application/json"}
    async with http.post(f"{base}/orders/decode", data=chunks(), headers=hdrs) as resp:
        assert resp.status == 413
        assert "codec.maxBodyBytes" in (await resp.json())["error"]
    assert rejected(registry, "encode", "body_too_large") == 1
    assert rejected(registry, "decode", "body_too_large") == 1


async def test_large_body_is_processed_off_the_loop(start: Start, http: ClientSession) -> None:
    base = await start()
    big = [plain_json(bytes(range(256)) * 1024) for _ in range(4)]  # > 1 MiB of JSON
    resp, encoded = await post(http, f"{base}/orders/encode", {"payloads": big}, WRITER)
    assert resp.status == 200
    resp, decoded = await post(http, f"{base}/orders/decode", encoded, READER)
    assert [from_json(p) for p in decoded["payloads"]] == [from_json(p) for p in big]


# ------------------------------------------------------------------ hostile clients


async def test_payload_count_depth_and_values_are_bounded(
    start: Start, http: ClientSession
) -> None:
    registry = CollectorRegistry()
    base = await start(
        limits=limits(max_payloads=3, max_json_depth=6), metrics=CodecMetrics(registry)
    )
    url = f"{base}/orders/decode"
    ok = [plain_json(b"1")] * 3
    resp, answer = await post(http, url, {"payloads": ok}, READER)
    assert resp.status == 200, answer
    resp, answer = await post(http, url, {"payloads": [*ok, plain_json(b"1")]}, READER)
    assert resp.status == 400
    assert answer == {"error": "more than 3 payloads in one request (codec.maxPayloads)"}
    # Scalars are payloads too once parsed.
    resp, answer = await post(http, url, {"payloads": [1, 2, 3, 4]}, READER)
    assert resp.status == 400 and "codec.maxPayloads" in answer["error"]
    # Depth: 6 levels are fine (an unknown field), 7 are not, wherever they are.
    six = {"payloads": [{"x": [[{}]]}]}
    resp, answer = await post(http, url, six, READER)
    assert resp.status == 200, answer
    for deep in ({"payloads": [{"x": [[[{}]]]}]}, {"y": [[[[[[[]]]]]]]}, b"[" * 100_000):
        resp, answer = await post(http, url, deep, READER)
        assert resp.status == 400, deep
        assert answer == {"error": "JSON nested deeper than 6 levels (codec.maxJsonDepth)"}
    # Values: one payload with a huge metadata map.
    budget = VALUES_PER_PAYLOAD * 4
    meta = {f"k{i}": "" for i in range(budget)}
    resp, answer = await post(http, url, {"payloads": [{"metadata": meta}]}, READER)
    assert resp.status == 400
    assert answer["error"].startswith(f"body holds more than {budget} JSON values")
    # Strings made of escapes count against the same budget; brackets inside strings do not
    # count as nesting.
    escaped = b'{"payloads": [], "x": "' + b'\\"' * 100_000 + b'"}'
    resp, answer = await post(http, url, escaped, READER)
    assert resp.status == 400 and "JSON values" in answer["error"]
    # One long run of backslashes before a quote is charged as it is walked, and cut short.
    run = b'{"payloads": [], "x": "' + b"\\" * 4_000_000 + b'""}'
    resp, answer = await post(http, url, run, READER)
    assert resp.status == 400 and "JSON values" in answer["error"]
    quoted = {"payloads": [plain_json(b"1")], "x": '[[[[[[[[{{{{{{{{\\"]]]'}
    resp, answer = await post(http, url, quoted, READER)
    assert resp.status == 200, answer
    resp, answer = await post(http, url, b'{"payloads": [], "x": "unterminated', READER)
    assert resp.status == 400 and "not valid JSON" in answer["error"]
    assert rejected(registry, "decode", "too_many_payloads") == 2
    assert rejected(registry, "decode", "too_deep") == 3
    assert rejected(registry, "decode", "too_many_values") == 3
    assert rejected(registry, "decode", "bad_request") == 1


def test_the_scan_is_bounded_by_the_limits_not_the_body() -> None:
    """CPU time of the structural scan for 4 MiB bodies built to make it walk byte by byte."""
    lim = limits()
    four = 4 * 1024 * 1024
    bodies = [
        b'{"payloads": [' + b"{}," * (four // 3) + b"{}]}",
        b'{"payloads": ' + b"[" * four + b"]}",
        b'{"payloads": [], "x": "' + b'\\"' * (four // 3) + b'"}',
        b'{"payloads": [], "x": "' + b"\\" * four + b'""}',
        b'{"payloads": [' + b'"",' * (four // 3) + b'""]}',
    ]
    for body in bodies:
        started = time.thread_time()
        with pytest.raises(Exception, match=r"JSON|payloads") as info:
            check_json_bounds(body, lim)
        spent = time.thread_time() - started
        assert spent < 0.08, (body[:30], spent, info.value)


async def test_hostile_body_never_stalls_the_event_loop(start: Start, http: ClientSession) -> None:
    """4 MiB of `{},` (the finding: 900 MiB and a 5 s stall): refused after a bounded scan on a
    worker thread, while a ticker on the same loop keeps its 5 ms rhythm."""
    base = await start()
    hostile = b'{"payloads": [' + b"{}," * (4 * 1024 * 1024 // 3) + b"{}]}"
    deep = b'{"payloads": ' + b"[" * (4 * 1024 * 1024) + b"]}"

    async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
        while not stop.is_set() and len(lags) < 2000:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    # The loop's own jitter on this (shared, 2-core) machine first, then under attack.
    baseline: list[float] = []
    quiet = asyncio.Event()
    task = asyncio.create_task(ticker(quiet, baseline))  # noqa: TID251 - the test owns and cancels it
    await asyncio.sleep(0.5)
    quiet.set()
    await task
    lags: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(ticker(stop, lags))  # noqa: TID251 - the test owns and cancels it
    started, sent = time.perf_counter(), 0
    try:
        # Bounded: at least 1 s of attack for enough ticks, at most 40 bodies.
        while sent < 40 and time.perf_counter() - started < 1:
            for body in (hostile, deep):
                resp, answer = await post(http, f"{base}/orders/decode", body, READER)
                assert resp.status == 400, answer
                sent += 1
    finally:
        stop.set()
        await task
    print(f"max loop lag {max(lags) * 1000:.1f} ms over {len(lags)} ticks")
    assert lags and max(lags) <= max(baseline) + 0.1, (max(baseline), sorted(lags)[-5:])


async def test_refused_bodies_are_freed_at_once(start: Start, http: ClientSession) -> None:
    """A refusal's traceback holds the parsing frames; without freeing the body there, every
    hostile body stayed in memory until the cycle collector ran (RSS grew with each one)."""
    base = await start()
    hostile = b'{"payloads": [' + b"{}," * (4 * 1024 * 1024 // 3) + b"{}]}"
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(8):
            resp, _ = await post(http, f"{base}/orders/decode", hostile, READER)
            assert resp.status == 400
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < 16 * 1024 * 1024, f"{held / 2**20:.1f} MiB still held"


class _ThreadRecordingCodec(PayloadCodec):
    """Records where and how many decodes run at once, each taking `delay` seconds."""

    def __init__(self, delay: float = 0.2) -> None:
        super().__init__(KeyRing({"k": KEY_NEW}), encrypt_key_id="k")
        self.delay = delay
        self.threads: set[str] = set()
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def decode(self, payloads: Any, namespace: str = "") -> Any:
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        return super().decode(payloads, namespace)


async def test_processing_runs_on_a_bounded_pool_off_the_loop(
    start: Start, http: ClientSession
) -> None:
    codec = _ThreadRecordingCodec()
    base = await start(codec=codec, limits=limits(max_concurrent_requests=2))
    body = {"payloads": [plain_json(b"1")]}  # small: even these leave the loop
    answers = await asyncio.gather(
        *(post(http, f"{base}/orders/decode", body, READER) for _ in range(5))
    )
    assert [resp.status for resp, _ in answers] == [200] * 5
    assert codec.peak == 2
    assert codec.threads and all(name.startswith("codec") for name in codec.threads)
    assert threading.current_thread().name not in codec.threads


async def test_a_slow_body_gets_408_and_a_full_server_503(
    start: Start, http: ClientSession
) -> None:
    codec = _ThreadRecordingCodec(delay=0.6)
    registry = CollectorRegistry()
    base = await start(
        codec=codec,
        limits=limits(max_concurrent_requests=1, slot_timeout=0.9, body_timeout=0.5),
        metrics=CodecMetrics(registry),
    )
    url = f"{base}/orders/decode"

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"payloads": ['
        await asyncio.sleep(1.5)
        yield b"]}"

    hdrs = {"Authorization": READER, "Content-Type": "application/json"}
    async with http.post(url, data=trickle(), headers=hdrs) as resp:
        assert resp.status == 408
        assert await resp.json() == {"error": "request body not received within 0.5s"}
    # One slot: a decode holds it 0.6 s (on its thread); the next request waits for it (0.9 s
    # at most) and holds it 0.6 s more, so a third arriving with both times out: 503.
    body = {"payloads": [plain_json(b"1")]}
    answers = await asyncio.gather(*(post(http, url, body, READER) for _ in range(3)))
    statuses = sorted(resp.status for resp, _ in answers)
    assert statuses == [200, 200, 503], answers
    assert {"error": "codec server busy, retry later"} in [a for _, a in answers]
    assert rejected(registry, "decode", "body_timeout") == 1
    assert rejected(registry, "decode", "busy") == 1


async def test_namespace_keys_isolate_decode(start: Start, http: ClientSession) -> None:
    """The finding: a reader of `default` posted a `payments` payload to /default/decode and
    got the plaintext."""
    ring = KeyRing({"pay-2": KEY_NEW, "pay-1": KEY_OLD, "dflt": KEY_NS})
    codec = PayloadCodec(ring, namespace_keys={"payments": ["pay-2", "pay-1"], "default": "dflt"})
    registry = CollectorRegistry()
    base = await start(codec=codec, metrics=CodecMetrics(registry))
    payments_writer = token("payments:write", sub="pay-worker")
    default_reader = token("default:read", sub="snoop")
    both = token("payments:read", "default:read", "other:read", sub="both")
    body = {"payloads": [plain_json(b'"card 4111"')]}
    resp, sealed = await post(http, f"{base}/payments/encode", body, payments_writer)
    assert resp.status == 200
    assert from_json(sealed["payloads"][0]).metadata["encryption-key-id"] == b"pay-2"
    old = PayloadCodec(KeyRing({"pay-1": KEY_OLD}), encrypt_key_id="pay-1")
    old_sealed = {
        "payloads": [to_json(p) for p in old.encode([from_json_ours(body["payloads"][0])])]
    }
    for auth in (default_reader, both):
        resp, answer = await post(http, f"{base}/default/decode", sealed, auth)
        assert resp.status == 400, answer
        assert answer == {
            "error": "encrypted payload uses key id 'pay-2', which is not a key of namespace "
            "'default' (codec.namespaceKeys)"
        }
        resp, answer = await post(
            http, f"{base}/decode", old_sealed, auth, {"X-Namespace": "default"}
        )
        assert resp.status == 400 and "'pay-1'" in answer["error"]
    # payments itself decodes with its current and its previous key.
    for sealed_body in (sealed, old_sealed):
        resp, answer = await post(http, f"{base}/payments/decode", sealed_body, both)
        assert resp.status == 200, answer
        assert answer == body
    # A namespace without keys is refused before its body is read.
    resp, answer = await post(http, f"{base}/other/decode", body, both)
    assert resp.status == 400
    assert answer == {"error": "namespace 'other' has no codec keys (codec.namespaceKeys)"}
    assert rejected(registry, "decode", "key_not_allowed") == 4
    assert rejected(registry, "decode", "namespace_without_keys") == 1


# -------------------------------------------------------------------------- CORS


async def test_cors_preflight_for_an_allowed_origin(start: Start, http: ClientSession) -> None:
    base = await start()
    headers = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    for path in ("/decode", "/encode", "/orders/decode", "/download"):
        async with http.options(base + path, headers=headers) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == UI
            assert resp.headers["Access-Control-Allow-Methods"] == "POST"
            allowed = {h.strip() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert allowed == {
                "Authorization",
                "Authorization-Extras",
                "X-Namespace",
                "Content-Type",
            }
            assert "Access-Control-Allow-Credentials" not in resp.headers
            assert "Origin" in resp.headers.getall("Vary")


async def test_no_cors_headers_for_another_origin(start: Start, http: ClientSession) -> None:
    base = await start()
    async with http.options(
        f"{base}/decode", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"}
    ) as resp:
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    resp, _ = await post(http, f"{base}/orders/decode", {"payloads": []}, READER, {"Origin": OTHER})
    assert resp.status == 200
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_cors_headers_on_answers_and_errors(start: Start, http: ClientSession) -> None:
    base = await start()
    resp, _ = await post(http, f"{base}/orders/decode", {"payloads": []}, READER, {"Origin": UI})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    # The UI must be able to read a denial, not see an opaque CORS failure.
    resp, _ = await post(http, f"{base}/orders/encode", {"payloads": []}, READER, {"Origin": UI})
    assert resp.status == 403
    assert resp.headers["Access-Control-Allow-Origin"] == UI


async def test_cors_allow_credentials(start: Start, http: ClientSession) -> None:
    base = await start(
        cors=CorsConfig(origins=(UI, "http://localhost:8233"), allow_credentials=True)
    )
    async with http.options(
        f"{base}/decode",
        headers={"Origin": "http://localhost:8233", "Access-Control-Request-Method": "POST"},
    ) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:8233"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    resp, _ = await post(http, f"{base}/orders/decode", {"payloads": []}, READER, {"Origin": UI})
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"


# -------------------------------------------------------------------------- SDK adapter


def sdk_codec() -> EncryptionCodec:
    return EncryptionCodec({"old": KEY_OLD, "new": KEY_NEW}, encrypt_key_id="new")


async def test_sdk_codec_round_trips_through_a_data_converter() -> None:
    converter = dataclasses.replace(DataConverter.default, payload_codec=sdk_codec())
    encoded = await converter.encode(["hello", {"n": 1}])
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in encoded)
    assert all(p.metadata["encryption-key-id"] == b"new" for p in encoded)
    inner = AESGCM(KEY_NEW).decrypt(encoded[0].data[:12], encoded[0].data[12:], None)
    assert TemporalPayload.FromString(inner).data == b'"hello"'
    assert await converter.decode(encoded) == ["hello", {"n": 1}]


async def test_sdk_codec_passes_plain_payloads_through() -> None:
    p = TemporalPayload(metadata={"encoding": b"json/plain"}, data=b"1")
    [out] = await sdk_codec().decode([p])
    assert out == p


async def test_sdk_encodes_server_decodes(start: Start, http: ClientSession) -> None:
    base = await start()
    original = TemporalPayload(metadata={"encoding": b"json/plain"}, data=b'"from the worker"')
    [sealed] = await sdk_codec().encode([original])
    body = {"payloads": [json_format.MessageToDict(sealed)]}
    resp, answer = await post(http, f"{base}/orders/decode", body, READER)
    assert resp.status == 200, answer
    assert from_json(answer["payloads"][0]) == original


async def test_server_encodes_sdk_decodes(start: Start, http: ClientSession) -> None:
    base = await start()
    body = {"payloads": [plain_json(b'"from the UI"')]}
    resp, answer = await post(http, f"{base}/orders/encode", body, WRITER)
    assert resp.status == 200
    [decoded] = await sdk_codec().decode([from_json(answer["payloads"][0])])
    assert decoded.data == b'"from the UI"'


async def test_sdk_codec_from_core_codec_uses_namespace_key() -> None:
    codec = EncryptionCodec.from_codec(make_codec(), namespace="billing")
    [sealed] = await codec.encode([TemporalPayload(data=b"x")])
    assert sealed.metadata["encryption-key-id"] == b"ns-key"
    assert (await codec.decode([sealed]))[0].data == b"x"


# -------------------------------------------------------------------------- helpers


def from_json_ours(item: dict[str, Any]) -> Payload:
    return json_format.ParseDict(item, Payload())


def to_json(payload: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(payload)
    return result


# -------------------------------------------------------------------------- the real CLI


def _started_input(show_json: str) -> dict[str, Any]:
    for event in json.loads(show_json)["events"]:
        attrs = event.get("workflowExecutionStartedEventAttributes")
        if attrs is not None:
            payload: dict[str, Any] = attrs["input"]["payloads"][0]
            return payload
    raise AssertionError("no WorkflowExecutionStarted event")


@pytest.mark.e2e
async def test_temporal_cli_decodes_through_the_codec_endpoint(
    start: Start, tmp_path: Path
) -> None:
    """A worker with EncryptionCodec writes history; `temporal workflow show` reads it back
    through these routes (the CLI's own request format: POST /decode, X-Namespace,
    Authorization from --codec-auth). The gRPC leg goes straight to the dev server here; the
    same check through the proxy belongs to the e2e suite."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    from tests.e2e.rig import TEMPORAL, TemporalDevServer
    from tests.e2e.workflows import GreetingWorkflow, greet

    dev = await asyncio.to_thread(TemporalDevServer, tmp_path, ())
    try:
        base = await start()
        converter = dataclasses.replace(DataConverter.default, payload_codec=sdk_codec())
        client = await Client.connect(dev.address, data_converter=converter)
        workflow_id = f"codec-{uuid.uuid4()}"
        async with Worker(
            client, task_queue=workflow_id, workflows=[GreetingWorkflow], activities=[greet]
        ):
            result = await client.execute_workflow(
                GreetingWorkflow.run, "sekrit-name", id=workflow_id, task_queue=workflow_id
            )
        assert result == "Hello, sekrit-name!"

        def show(*codec_args: str) -> str:
            args = [TEMPORAL, "workflow", "show", "--address", dev.address]
            args += ["--workflow-id", workflow_id, "--output", "json", *codec_args]
            done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            return done.stdout

        raw = _started_input(await asyncio.to_thread(show))
        assert base64.b64decode(raw["metadata"]["encoding"]) == b"binary/encrypted"
        assert b"sekrit-name" not in base64.b64decode(raw["data"])
        reader = token("default:read", sub="cli-user")
        for endpoint in (base, base + "/{namespace}"):
            decoded = _started_input(
                await asyncio.to_thread(show, "--codec-endpoint", endpoint, "--codec-auth", reader)
            )
            assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain"
            assert base64.b64decode(decoded["data"]) == b'"sekrit-name"'
    finally:
        await asyncio.to_thread(dev.stop)


# ------------------------------------------------- paths, CORS on errors, observability


async def raw_post(
    http: ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_every_path_shape_the_cli_and_ui_send(start: Start, http: ClientSession) -> None:
    """The operation is the last segment; the namespace comes from X-Namespace, else the
    segment before it; `{namespace}` (the UI posts it unexpanded) means "use the header"."""
    sealed = {"payloads": [to_json(p) for p in shared_codec().encode([plain_ours(b'"x"')])]}
    body = json.dumps(sealed).encode()
    reader = {"Authorization": READER, "Content-Type": "application/json"}
    hdr = {**reader, "X-Namespace": "orders"}
    for prefix in ("", "/codec", "/a/b"):
        base = (await start(codec=shared_codec(), path_prefix=prefix)) + prefix
        for path, headers in (
            ("/decode", hdr),  # the CLI with a plain endpoint
            ("/orders/decode", reader),  # the CLI with {namespace} expanded
            ("/orders/decode", hdr),
            ("/%7Bnamespace%7D/decode", hdr),  # the Web UI
            ("/{namespace}/decode", hdr),
        ):
            status, _, answer = await raw_post(http, base + path, body, headers)
            assert status == 200, (prefix, path, answer)
            assert json.loads(answer)["payloads"][0]["data"] == base64.b64encode(b'"x"').decode()
        # {namespace} without a header names no namespace: the reader of orders has no role.
        status, _, _ = await raw_post(http, base + "/%7Bnamespace%7D/decode", body, reader)
        assert status == 403
        # Path and header disagree: still 400.
        status, _, answer = await raw_post(
            http, base + "/orders/decode", body, {**reader, "X-Namespace": "billing"}
        )
        assert status == 400 and b"X-Namespace" in answer
        # Deeper paths and other operations are JSON 404s; GET on an operation is a 405.
        for path in ("/x/orders/decode", "/orders/explode", "/nothing"):
            status, headers, answer = await raw_post(http, base + path, body, hdr)
            error = json.loads(answer)["error"]
            assert status == 404 and error.startswith("not found"), (prefix, path)
            assert "codec.pathPrefix" in error  # the hint for an endpoint behind an ingress path
        async with http.get(base + "/decode") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "OPTIONS, POST"
    # Outside the prefix nothing is served.
    base = await start(codec=shared_codec(), path_prefix="/codec")
    status, _, _ = await raw_post(http, base + "/decode", body, hdr)
    assert status == 404


def plain_ours(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


async def test_cors_on_every_answer_to_an_allowed_origin(start: Start, http: ClientSession) -> None:
    class _Broken(PayloadCodec):
        def decode(self, payloads: Any, namespace: str = "") -> Any:
            raise RuntimeError("bug")

    ok = await start(codec=shared_codec(), limits=limits(max_body_bytes=2048))
    broken = await start(codec=_Broken(KeyRing({"k": KEY_NEW}), encrypt_key_id="k"))
    good_body = json.dumps({"payloads": [plain_json(b"1")]}).encode()
    cases = [
        (200, ok + "/orders/decode", good_body, READER),
        (400, ok + "/orders/decode", b"not json", READER),
        (403, ok + "/orders/decode", good_body, None),
        (404, ok + "/nowhere/at/all", good_body, READER),
        (413, ok + "/orders/decode", b" " * 4096, READER),
        (500, broken + "/orders/decode", good_body, READER),
    ]
    for status, url, body, auth in cases:
        for origin, allowed in ((UI, True), (OTHER, False)):
            headers = {"Origin": origin, "Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = auth
            got, resp_headers, _ = await raw_post(http, url, body, headers)
            assert got == status, (url, body[:20])
            assert "Origin" in resp_headers.get("Vary", ""), status
            if allowed:
                assert resp_headers["Access-Control-Allow-Origin"] == UI, status
            else:
                assert "Access-Control-Allow-Origin" not in resp_headers, status
    preflight = {"Origin": UI, "Access-Control-Request-Method": "POST"}
    async with http.options(ok + "/%7Bnamespace%7D/decode", headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Max-Age"] == "600"
        assert resp.headers["Access-Control-Allow-Origin"] == UI


async def test_codec_requests_are_counted_timed_and_logged(
    start: Start, http: ClientSession
) -> None:
    registry = CollectorRegistry()
    base = await start(codec=shared_codec(), metrics=CodecMetrics(registry))
    secret = b'"card 4111 1111"'
    body = json.dumps({"payloads": [plain_json(secret)]}).encode()
    headers = {"Authorization": WRITER, "Origin": UI, "Content-Type": "application/json"}
    with structlog.testing.capture_logs() as logs:
        assert (await raw_post(http, f"{base}/orders/encode", body, headers))[0] == 200
        assert (await raw_post(http, f"{base}/payments/decode", body, headers))[0] == 403
        assert (await raw_post(http, f"{base}/x/y/decode", body, headers))[0] == 404
        async with http.options(f"{base}/decode", headers={"Origin": UI}) as resp:
            assert resp.status == 204

    def count(operation: str, code: str) -> float | None:
        return registry.get_sample_value(
            "temporal_auth_proxy_codec_requests_total", {"operation": operation, "code": code}
        )

    assert count("encode", "200") == 1
    assert count("decode", "403") == 1
    assert count("unknown", "404") == 1
    assert count("preflight", "204") == 1
    assert (
        registry.get_sample_value(
            "temporal_auth_proxy_codec_duration_seconds_count", {"operation": "encode"}
        )
        == 1
    )
    lines = [e for e in logs if e["event"] == "codec_request"]
    assert [(e["operation"], e["status"], e["log_level"]) for e in lines] == [
        ("encode", 200, "info"),
        ("decode", 403, "info"),
        ("unknown", 404, "debug"),
        ("preflight", 204, "debug"),
    ]
    first = lines[0]
    assert first["method"] == "POST"
    assert first["path"] == "/{namespace}/encode"
    assert first["namespace"] == "orders"
    assert first["origin"] == UI
    assert first["bytes_in"] == len(body) and first["bytes_out"] > 0
    assert first["duration_ms"] >= 0
    # Never a token or a payload.
    text = repr(logs)
    assert WRITER.split()[1] not in text
    assert base64.b64encode(secret).decode() not in text and "4111" not in text


def test_path_prefix_config() -> None:
    def cfg(prefix: str) -> Any:
        raw = {
            "upstream": {"address": "127.0.0.1:7233"},
            "admin": {"address": "127.0.0.1:9090"},  # unauthenticated codec: loopback only
            "authorization": {"claimMapper": "noop"},
            "codec": {
                "enabled": True,
                "keys": {"k": base64.b64encode(KEY_NEW).decode()},
                "encryptKeyId": "k",
                "pathPrefix": prefix,
            },
        }
        return parse_config(raw, env={}).codec

    assert cfg("").path_prefix == ""
    assert cfg("/codec/v1").path_prefix == "/codec/v1"
    for bad in ("codec", "/codec/", "//x", "/{namespace}", "/a b", "/a?b"):
        with pytest.raises(ConfigError) as info:
            cfg(bad)
        assert info.value.path == "codec.pathPrefix", bad


async def test_the_wildcard_entry_is_not_a_namespace_a_caller_can_name(
    start: Start, http: ClientSession
) -> None:
    # `*` in namespaceKeys covers every namespace not named; a caller with a role on a
    # namespace literally called `*` must not reach those keys through /*/decode.
    ring = KeyRing({"pay": KEY_NEW, "rest": KEY_NS})
    codec = PayloadCodec(ring, namespace_keys={"payments": "pay", "*": "rest"})
    base = await start(codec=codec)
    star = token("*:read", "*:write", sub="star")
    sealed = {
        "payloads": [to_json(p) for p in codec.encode([from_json_ours(plain_json(b"1"))], "x")]
    }
    for path, headers in ((f"{base}/*/decode", {}), (f"{base}/decode", {"X-Namespace": "*"})):
        resp, answer = await post(http, path, sealed, star, headers)
        assert resp.status == 400, answer
        assert answer == {"error": "'*' is not a namespace"}
