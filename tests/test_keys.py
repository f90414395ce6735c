"""JWKS key providers: parsing, all-or-nothing refresh over real loopback HTTP, file URIs."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.errors import CredentialError, KeySourceError
from proxy.interfaces import KeyProvider
from proxy.keys.fetch import redact_uri
from proxy.keys.jwks import JwksKeyProvider, StaticKeyProvider, parse_jwks
from proxy.model import AuthInfo, Reason
from tests.jwt_helpers import b64url, ec_jwk, ec_key, jwks, rs256_token, rsa_jwk, rsa_key


class RecordingLogger:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, name, kw in self.events if name == event]


@dataclass
class JwksServer:
    """A loopback HTTP server whose answer the test changes between refreshes."""

    status: int = 200
    body: bytes = b""
    requests: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    url: str = ""


@pytest.fixture
def server() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/jwks")
                self.end_headers()
                return
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/jwks"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/jwks"
    finally:
        sock.close()


@pytest.fixture
def drip_url() -> Iterator[str]:
    """Answers 200 and then one byte every 50 ms: no single read ever times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")
            deadline = time.monotonic() + 1.5
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                stop.wait(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/jwks"
    finally:
        stop.set()
        sock.close()
        thread.join(timeout=5)


RSA1 = rsa_jwk(rsa_key(), "rsa1")
EC1 = ec_jwk(ec_key(), "ec1")


def make(uris: tuple[str, ...], **kw: Any) -> tuple[JwksKeyProvider, RecordingLogger, list[Any]]:
    log = RecordingLogger()
    seen: list[Any] = []
    kw.setdefault("refresh_interval", 0)
    provider = JwksKeyProvider(
        uris, logger=log, on_refresh=lambda ok, n: seen.append((ok, n)), **kw
    )
    return provider, log, seen


def assert_no_key_material(log: RecordingLogger) -> None:
    text = json.dumps([e[2] for e in log.events], default=str)
    for secret in (RSA1["n"], EC1["x"], EC1["y"]):
        assert secret not in text


# --------------------------------------------------------------------------- over HTTP


async def test_initial_load_over_http(server: JwksServer) -> None:
    server.body = jwks(RSA1, EC1)
    provider, log, seen = make((server.url,))
    assert isinstance(provider, KeyProvider)
    assert not provider.loaded and provider.last_success is None
    assert await provider.refresh() is True
    assert provider.loaded and provider.key_count == 2 and provider.generation == 1
    assert provider.last_success is not None and provider.last_success <= time.time()
    assert provider.get_key("RS256", "rsa1") == rsa_key().public_key()
    assert provider.get_key("ES256", "ec1") == ec_key().public_key()
    assert log.named("jwks_refreshed") == [
        {"rsa_keys": 1, "ec_keys": 1, "skipped_keys": 0, "sources": 1}
    ]
    assert seen == [(True, 2)]
    assert_no_key_material(log)


async def test_rotation_is_picked_up_by_refresh(server: JwksServer) -> None:
    server.body = jwks(RSA1)
    provider, _, _ = make((server.url,))
    await provider.refresh()
    server.body = jwks(rsa_jwk(rsa_key("next"), "rsa2"))
    assert await provider.refresh() is True
    assert provider.generation == 2
    assert provider.get_key("RS256", "rsa2") == rsa_key("next").public_key()
    with pytest.raises(CredentialError) as err:
        provider.get_key("RS256", "rsa1")
    assert err.value.reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, jwks(rsa_jwk(rsa_key("next"), "rsa2"))),  # a valid JWKS body, but not 2xx
        (404, b"not found"),
        (200, b"<html>garbage</html>"),
        (200, b""),
        (200, b'{"keys": {}}'),
    ],
)
async def test_failed_refresh_keeps_old_keys_and_logs(
    server: JwksServer, status: int, body: bytes
) -> None:
    server.body = jwks(RSA1)
    provider, log, seen = make((server.url,))
    await provider.refresh()
    server.status, server.body = status, body
    assert await provider.refresh() is False
    assert provider.generation == 1 and provider.key_count == 1
    assert provider.get_key("RS256", "rsa1") == rsa_key().public_key()
    (failure,) = log.named("jwks_refresh_failed")
    assert failure["uri"] == server.url
    if status != 200:
        assert str(status) in failure["error"]
    assert seen == [(True, 1), (False, 1)]
    assert_no_key_material(log)


async def test_redirect_is_followed(server: JwksServer) -> None:
    server.body = jwks(RSA1)
    provider, _, _ = make((server.url.replace("/jwks", "/redirect"),))
    assert await provider.refresh() is True
    assert server.requests == 2


async def test_fetch_timeout_is_honoured(silent_url: str) -> None:
    provider, log, _ = make((silent_url,), fetch_timeout=0.3)
    start = time.monotonic()
    assert await provider.refresh() is False
    assert time.monotonic() - start < 2.5
    assert "timed out" in log.named("jwks_refresh_failed")[0]["error"]
    assert not provider.loaded


async def test_fetch_timeout_bounds_a_slow_drip(drip_url: str) -> None:
    provider, log, _ = make((drip_url,), fetch_timeout=0.3)
    start = time.monotonic()
    assert await provider.refresh() is False
    assert time.monotonic() - start < 1.0
    assert "timed out" in log.named("jwks_refresh_failed")[0]["error"]


async def test_refresh_is_all_or_nothing_across_uris(server: JwksServer, tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_bytes(jwks(RSA1))
    server.status, server.body = 500, b""
    provider, log, _ = make((good.as_uri(), "  ", server.url))
    assert await provider.refresh() is False
    assert not provider.loaded
    with pytest.raises(CredentialError) as err:
        provider.get_key("RS256", "rsa1")
    assert err.value.reason is Reason.NO_KEYS
    # Now both succeed; the later URI wins a kid collision.
    server.status, server.body = 200, jwks(rsa_jwk(rsa_key("next"), "rsa1"), EC1)
    assert await provider.refresh() is True
    assert provider.get_key("RS256", "rsa1") == rsa_key("next").public_key()
    assert provider.key_count == 2
    assert log.named("jwks_refreshed")[0]["sources"] == 2  # the blank URI is skipped


async def test_run_refreshes_periodically(server: JwksServer) -> None:
    server.body = jwks(RSA1)
    provider, _, _ = make((server.url,), refresh_interval=0.05)
    task = asyncio.create_task(provider.run())  # noqa: TID251 - the test owns and cancels it
    try:
        for _ in range(100):
            if provider.loaded:
                break
            await asyncio.sleep(0.02)
        server.body = jwks(rsa_jwk(rsa_key("next"), "rsa2"))
        for _ in range(100):
            if provider.generation >= 2 and provider.key_count == 1:
                try:
                    provider.get_key("RS256", "rsa2")
                    break
                except CredentialError:
                    pass
            await asyncio.sleep(0.02)
        assert provider.get_key("RS256", "rsa2") == rsa_key("next").public_key()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_with_zero_interval_loads_once_and_returns(server: JwksServer) -> None:
    server.body = jwks(RSA1)
    provider, _, _ = make((server.url,), refresh_interval=0)
    await asyncio.wait_for(provider.run(), timeout=5)
    assert provider.loaded and server.requests == 1
    # run() after an explicit refresh does not load again.
    provider2, _, _ = make((server.url,), refresh_interval=0)
    await provider2.refresh()
    await provider2.run()
    assert server.requests == 2


# --------------------------------------------------------------------------- file URIs, config


async def test_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(EC1))
    for uri in (path.as_uri(), f"file://localhost{path}"):
        provider, _, _ = make((uri,))
        assert await provider.refresh() is True
        assert provider.get_key("ES256", "ec1") == ec_key().public_key()


async def test_missing_file_fails(tmp_path: Path) -> None:
    provider, log, _ = make(((tmp_path / "absent.json").as_uri(),))
    assert await provider.refresh() is False
    assert "FileNotFoundError" in log.named("jwks_refresh_failed")[0]["error"]


@pytest.mark.parametrize(
    "uris",
    [
        ("file://example.com/etc/jwks.json",),
        ("ftp://example.com/jwks.json",),
        ("/etc/jwks.json",),
        ("", "  "),
        (),
    ],
)
def test_bad_uris_fail_at_construction(uris: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        JwksKeyProvider(uris, refresh_interval=0)


def test_redact_uri_drops_credentials() -> None:
    assert redact_uri("https://u:secret@idp.example:8443/keys?token=abc#x") == (
        "https://idp.example:8443/keys"
    )


async def test_unknown_kty_fails_the_whole_document(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(RSA1, {"kty": "XYZ", "kid": "odd"}, EC1))
    provider, log, _ = make((path.as_uri(),))
    assert await provider.refresh() is False
    assert not provider.loaded
    assert "kty" in log.named("jwks_refresh_failed")[0]["error"]


async def test_before_first_load_lookups_fail_closed(silent_url: str) -> None:
    provider, _, _ = make((silent_url,))
    for alg, kid in (("RS256", "rsa1"), ("ES256", "ec1")):
        with pytest.raises(CredentialError) as err:
            provider.get_key(alg, kid)
        assert err.value.reason is Reason.NO_KEYS
    mapper = DefaultJWTClaimMapper(provider)
    with pytest.raises(CredentialError) as err:
        await mapper.get_claims(AuthInfo(token=f"Bearer {rs256_token({'sub': 'a'})}"))
    assert err.value.reason is Reason.NO_KEYS


async def test_jwks_provider_end_to_end_with_mapper(server: JwksServer) -> None:
    server.body = jwks(RSA1)
    provider, _, _ = make((server.url,))
    await provider.refresh()
    mapper = DefaultJWTClaimMapper(provider)
    info = AuthInfo(token=f"Bearer {rs256_token({'sub': 'a', 'permissions': ['ns:read']})}")
    assert (await mapper.get_claims(info)).subject == "a"


# --------------------------------------------------------------------------- JWKS parsing


def _self_signed(key: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _x5c(cert: x509.Certificate) -> list[str]:
    return [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]


def _thumb(cert: x509.Certificate, algorithm: Any) -> str:
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(Encoding.DER))
    return b64url(digest.finalize())


CERT = _self_signed(rsa_key())
PRIVATE_RSA = {**RSA1, "kid": "priv", "d": b64url(b"\x01" * 32)}

PARSE_OK: list[tuple[str, list[dict[str, Any]], set[str], set[str], int]] = [
    ("rsa-and-ec", [RSA1, EC1], {"rsa1"}, {"ec1"}, 0),
    ("no-kid-is-empty-string", [rsa_jwk(rsa_key(), None)], {""}, set(), 0),
    ("ec-p384", [ec_jwk(ec_key("b", "P-384"), "p384")], set(), {"p384"}, 0),
    ("ec-p521", [ec_jwk(ec_key("c", "P-521"), "p521")], set(), {"p521"}, 0),
    ("private-rsa-skipped", [PRIVATE_RSA, EC1], set(), {"ec1"}, 1),
    ("private-ec-skipped", [{**EC1, "d": b64url(b"\x01" * 32)}], set(), set(), 1),
    ("oct-skipped", [{"kty": "oct", "k": b64url(b"secret"), "kid": "h"}], set(), set(), 1),
    (
        "ed25519-skipped",
        [{"kty": "OKP", "crv": "Ed25519", "x": b64url(bytes(32))}],
        set(),
        set(),
        1,
    ),
    ("alg-and-use-not-checked", [{**RSA1, "alg": "ES512", "use": "enc"}], {"rsa1"}, set(), 0),
    ("same-kid-both-maps", [RSA1, {**EC1, "kid": "rsa1"}], {"rsa1"}, {"rsa1"}, 0),
    ("padded-members-tolerated", [{**EC1, "x": EC1["x"] + "="}], set(), {"ec1"}, 0),
    (
        "x5c-and-thumbprints-match",
        [
            {
                **RSA1,
                "x5c": _x5c(CERT),
                "x5t": _thumb(CERT, hashes.SHA1()),  # noqa: S303 (x5t is SHA-1 by definition)
                "x5t#S256": _thumb(CERT, hashes.SHA256()),
            }
        ],
        {"rsa1"},
        set(),
        0,
    ),
]


@pytest.mark.parametrize(
    ("keys", "rsa", "ec", "skipped"), [p[1:] for p in PARSE_OK], ids=[p[0] for p in PARSE_OK]
)
def test_parse_jwks_accepts(
    keys: list[dict[str, Any]], rsa: set[str], ec: set[str], skipped: int
) -> None:
    log = RecordingLogger()
    ks = parse_jwks(jwks(*keys), log)
    assert (set(ks.rsa), set(ks.ec), ks.skipped) == (rsa, ec, skipped)
    assert len(log.named("jwks_key_skipped")) == skipped
    for event in log.named("jwks_key_skipped"):
        assert set(event) == {"index", "kid", "kty", "why"}


def test_later_kid_wins_within_a_document() -> None:
    ks = parse_jwks(jwks(rsa_jwk(rsa_key(), "k"), rsa_jwk(rsa_key("next"), "k")))
    assert ks.rsa["k"] == rsa_key("next").public_key()


def test_empty_object_is_an_empty_key_set() -> None:
    assert parse_jwks(b"{}").key_count == 0


def _off_curve() -> dict[str, Any]:
    jwk = dict(EC1)
    jwk["y"] = b64url(bytes(31) + b"\x05")
    return jwk


PARSE_FAIL: list[tuple[str, bytes]] = [
    ("not-json", b"{"),
    ("not-an-object", b"[]"),
    ("null", b"null"),
    ("keys-not-a-list", b'{"keys": "x"}'),
    ("key-not-an-object", jwks(RSA1)[:-2] + b", 5]}"),
    ("missing-kty", jwks({k: v for k, v in RSA1.items() if k != "kty"})),
    ("unknown-kty", jwks({"kty": "XYZ"})),
    ("okp-x25519", jwks({"kty": "OKP", "crv": "X25519", "x": b64url(bytes(32))})),
    ("ec-off-curve", jwks(_off_curve())),
    ("ec-short-coordinate", jwks({**EC1, "x": b64url(bytes(31))})),
    ("ec-unknown-curve", jwks({**EC1, "crv": "P-192"})),
    ("rsa-bad-base64", jwks({**RSA1, "n": "***"})),
    ("rsa-missing-e", jwks({k: v for k, v in RSA1.items() if k != "e"})),
    ("kid-not-a-string", jwks({**RSA1, "kid": 5})),
    ("private-with-bad-d", jwks({**RSA1, "d": "!"})),
    ("x5c-mismatch", jwks({**EC1, "x5c": _x5c(CERT)})),
    ("x5t-wrong-length", jwks({**RSA1, "x5t": b64url(b"short")})),
    ("x5t-mismatch", jwks({**RSA1, "x5c": _x5c(CERT), "x5t": b64url(bytes(20))})),
]


@pytest.mark.parametrize("document", [p[1] for p in PARSE_FAIL], ids=[p[0] for p in PARSE_FAIL])
def test_parse_jwks_rejects(document: bytes) -> None:
    with pytest.raises(KeySourceError) as err:
        parse_jwks(document, RecordingLogger())
    for secret in (RSA1["n"], EC1["x"]):
        assert secret not in str(err.value)


# --------------------------------------------------------------------------- static provider


def test_static_provider_separates_key_types() -> None:
    provider = StaticKeyProvider({"rsa1": rsa_key().public_key(), "ec1": ec_key().public_key()})
    assert isinstance(provider, KeyProvider)
    assert provider.get_key("RS256", "rsa1") == rsa_key().public_key()
    for alg, kid, reason in (
        ("ES256", "rsa1", Reason.UNKNOWN_KEY),
        ("RS256", "ec1", Reason.UNKNOWN_KEY),
        ("HS256", "rsa1", Reason.UNSUPPORTED_ALGORITHM),
    ):
        with pytest.raises(CredentialError) as err:
            provider.get_key(alg, kid)
        assert err.value.reason is reason


def test_static_provider_from_jwks() -> None:
    provider = StaticKeyProvider.from_jwks(jwks(RSA1, {**EC1, "kid": "rsa1"}))
    assert provider.get_key("RS256", "rsa1") == rsa_key().public_key()
    assert provider.get_key("ES256", "rsa1") == ec_key().public_key()
    with pytest.raises(ValueError):
        StaticKeyProvider({"x": object()})  # type: ignore[dict-item]
