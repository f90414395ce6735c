"""IdP key sets over a real loopback HTTP server: discovery, rotation with one refetch, a flood of
unknown kids making at most one fetch per interval, outage keeping the last keys, key-set age."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from prometheus_client import CollectorRegistry

from proxy.claims.build import build_claim_mapper
from proxy.claims.idp import IdpClaimMapper, IssuerPolicy, RoleClaim
from proxy.config.parse import parse_config
from proxy.errors import CredentialError, KeySourceError
from proxy.keys.build import build_key_provider
from proxy.keys.idp import IdpKeys, IssuerKeys, parse_discovery, parse_idp_jwks
from proxy.keys.jwk import load_public_key_pem
from proxy.metrics import ProxyMetrics
from proxy.model import AuthInfo, Reason, Role
from tests.jwt_helpers import b64url, ec_jwk, ec_key, rsa_jwk, rsa_key


@dataclass
class IdpServer:
    """A loopback identity provider: discovery document and JWKS; counts every request."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    discovery_issuer: str | None = None  # None: the server's own URL
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        return self.url

    def count(self, path: str = "/jwks") -> int:
        with self.lock:
            return self.hits[path]


@pytest.fixture
def idp() -> Iterator[IdpServer]:
    state = IdpServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.hits[self.path] += 1
            if state.delay:
                time.sleep(state.delay)
            if self.path == "/.well-known/openid-configuration":
                body = json.dumps(
                    {
                        "issuer": state.discovery_issuer or state.url,
                        "jwks_uri": state.url + "/jwks",
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                ).encode()
            elif self.path == "/jwks":
                body = json.dumps({"keys": state.keys}).encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def token(issuer: str, kid: str, key: Any = None, **claims: Any) -> str:
    payload = {"iss": issuer, "aud": "temporal", "sub": "svc", "exp": int(time.time()) + 300}
    payload.update(claims)
    signer = key if key is not None else rsa_key(kid)
    return "Bearer " + pyjwt.encode(payload, signer, algorithm="RS256", headers={"kid": kid})


def setup(
    server: IdpServer, *, discovery: bool = True, **kw: Any
) -> tuple[IssuerKeys, IdpClaimMapper]:
    keys = IssuerKeys(
        server.issuer,
        discovery_uri=server.url + "/.well-known/openid-configuration" if discovery else "",
        jwks_uri="" if discovery else server.url + "/jwks",
        **kw,
    )
    policy = IssuerPolicy(
        issuer=server.issuer,
        audiences=frozenset({"temporal"}),
        role_claims=(RoleClaim.build(path="groups", table={"ops": ["default:admin"]}),),
    )
    return keys, IdpClaimMapper([policy], IdpKeys([keys]), cache_size=0)


async def test_discovery_finds_the_jwks(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    keys, mapper = setup(idp)
    assert await keys.refresh()
    assert idp.count("/.well-known/openid-configuration") == 1 and idp.count() == 1
    claims = await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k1", groups=["ops"])))
    assert dict(claims.namespaces) == {"default": Role.ADMIN}


async def test_discovery_for_another_issuer_is_refused(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    idp.discovery_issuer = "https://evil.example.com"
    keys, _ = setup(idp)
    assert not await keys.refresh()
    assert not keys.loaded and idp.count() == 0


async def test_rotation_unknown_kid_succeeds_after_one_refetch(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    keys, mapper = setup(idp, discovery=False, refetch_interval=30)
    assert await keys.refresh()
    assert idp.count() == 1
    # The IdP rotates: k2 appears at the JWKS endpoint; a token signed with it arrives.
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1"), rsa_jwk(rsa_key("k2"), "k2")]
    claims = await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k2")))
    assert claims.subject == "svc"
    assert idp.count() == 2  # exactly one refetch
    # And the old kid still works without any fetch.
    await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k1")))
    assert idp.count() == 2


async def test_a_flood_of_unknown_kids_makes_one_fetch_per_interval(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    idp.delay = 0.2  # the flood arrives while the refetch is in flight
    clock = Clock()
    keys, mapper = setup(idp, discovery=False, refetch_interval=30, clock=clock)
    assert await keys.refresh()
    assert idp.count() == 1

    async def attempt(i: int) -> Reason | None:
        try:
            await mapper.get_claims(AuthInfo(token=token(idp.issuer, f"bogus-{i}", rsa_key("k1"))))
        except CredentialError as exc:
            return exc.reason
        return None

    reasons = await asyncio.gather(*(attempt(i) for i in range(100)))
    assert set(reasons) == {Reason.UNKNOWN_KEY}
    assert idp.count() == 2  # one refetch for all hundred
    # Still inside the interval: more unknown kids, no fetch at all.
    reasons = await asyncio.gather(*(attempt(i) for i in range(100, 200)))
    assert set(reasons) == {Reason.UNKNOWN_KEY}
    assert idp.count() == 2
    clock.now += 30
    await asyncio.gather(*(attempt(i) for i in range(200, 300)))
    assert idp.count() == 3  # the next interval allows exactly one more


async def test_refetch_interval_zero_never_refetches(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    keys, mapper = setup(idp, discovery=False, refetch_interval=0)
    assert await keys.refresh()
    idp.keys = [rsa_jwk(rsa_key("k2"), "k2")]
    with pytest.raises(CredentialError):
        await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k2")))
    assert idp.count() == 1


async def test_outage_keeps_the_last_good_keys_and_their_age_grows(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    wall = Clock()
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, method_names=())
    keys = IssuerKeys(idp.issuer, jwks_uri=idp.url + "/jwks", wall_clock=wall)
    group = IdpKeys([keys], metrics.on_jwks_refresh)
    policy = IssuerPolicy(issuer=idp.issuer, audiences=frozenset({"temporal"}))
    mapper = IdpClaimMapper([policy], group, cache_size=0)
    assert await group.refresh()
    assert keys.age() == 0.0
    assert (
        registry.get_sample_value("temporal_auth_proxy_jwks_last_success_timestamp_seconds") == 1000
    )
    idp.status = 503
    wall.now += 600
    assert not await group.refresh()
    idp.keys = []  # a broken answer after the outage must not replace the set either
    idp.status = 200
    assert not await group.refresh()
    assert keys.age() == 600.0 and group.oldest_age() == 600.0
    assert (await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k1")))).subject == "svc"
    assert (
        registry.get_sample_value("temporal_auth_proxy_jwks_refresh_total", {"result": "failure"})
        == 2
    )
    assert (
        registry.get_sample_value("temporal_auth_proxy_jwks_last_success_timestamp_seconds") == 1000
    )
    assert registry.get_sample_value("temporal_auth_proxy_jwks_keys") == 1


async def test_before_the_first_load_tokens_fail_with_no_keys(idp: IdpServer) -> None:
    idp.status = 500
    keys, mapper = setup(idp, discovery=False, refetch_interval=0)
    assert not await keys.refresh()
    with pytest.raises(CredentialError) as caught:
        await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k1")))
    assert caught.value.reason is Reason.NO_KEYS


async def test_run_refreshes_periodically(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    keys = IssuerKeys(idp.issuer, jwks_uri=idp.url + "/jwks", refresh_interval=0.05)
    task = asyncio.create_task(IdpKeys([keys]).run())  # noqa: TID251 - the test owns and cancels it
    try:
        deadline = time.monotonic() + 5
        while idp.count() < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert idp.count() >= 3


async def test_config_with_discovery_end_to_end(idp: IdpServer) -> None:
    idp.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {
                "authorizer": "default",
                "claimMapper": "idp",
                "idp": {
                    "issuers": [
                        {
                            "issuer": idp.issuer,
                            "discovery": True,
                            "audience": ["temporal"],
                            "refetchInterval": "1m",
                            "roleClaims": [{"path": "groups", "map": {"ops": ["a:read"]}}],
                        }
                    ]
                },
            },
        },
        env={},
    )
    keys = build_key_provider(cfg, ProxyMetrics(CollectorRegistry(), method_names=()), None)
    assert isinstance(keys, IdpKeys) and not keys.loaded
    assert await keys.refresh() and keys.loaded
    mapper = build_claim_mapper(cfg, keys, None)
    claims = await mapper.get_claims(AuthInfo(token=token(idp.issuer, "k1", groups=["ops"])))
    assert dict(claims.namespaces) == {"a": Role.READER}
    assert idp.count("/.well-known/openid-configuration") == 1


# ------------------------------------------------------------------------ documents


def test_parse_idp_jwks_keeps_only_public_signing_keys() -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    ed4 = ed448.Ed448PrivateKey.generate().public_key()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    doc = {
        "keys": [
            rsa_jwk(rsa_key("a"), "rsa", use="sig", alg="RS256"),
            rsa_jwk(rsa_key("b"), "enc", use="enc"),
            ec_jwk(ec_key("e", "P-384"), "ec"),
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url(ed.public_bytes(*raw))},
            {"kty": "OKP", "crv": "Ed448", "kid": "ed4", "x": b64url(ed4.public_bytes(*raw))},
            {"kty": "oct", "kid": "hmac", "k": b64url(b"secret")},
            {**rsa_jwk(rsa_key("c"), "private"), "d": b64url(b"x")},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64url(b"\0" * 32)},
            "not an object",
        ]
    }
    keys = parse_idp_jwks(json.dumps(doc))
    assert [(k.kid, k.alg) for k in keys] == [
        ("rsa", "RS256"),
        ("ec", ""),
        ("ed", ""),
        ("ed4", ""),
    ]


@pytest.mark.parametrize("doc", [b"", b"[]", b"{}", b'{"keys": {}}', b'{"keys": []}'])
def test_parse_idp_jwks_refuses_documents_without_keys(doc: bytes) -> None:
    with pytest.raises(KeySourceError):
        parse_idp_jwks(doc)


def test_parse_discovery() -> None:
    doc = json.dumps({"issuer": "https://a", "jwks_uri": "https://a/keys"}).encode()
    assert parse_discovery(doc, "https://a") == "https://a/keys"
    for bad in (
        {"issuer": "https://b", "jwks_uri": "https://a/keys"},
        {"issuer": "https://a"},
        {"issuer": "https://a", "jwks_uri": "gopher://a/keys"},
    ):
        with pytest.raises(KeySourceError):
            parse_discovery(json.dumps(bad).encode(), "https://a")


def test_load_public_key_pem_takes_keys_and_certificates() -> None:
    from proxy.dev.pki import CertificateAuthority

    ca = CertificateAuthority.create("idp signing cert")
    assert load_public_key_pem(ca.cert_pem) == ca.certificate.public_key()
    pem = (
        rsa_key("p")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert load_public_key_pem(pem) == rsa_key("p").public_key()
    with pytest.raises(KeySourceError):
        load_public_key_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_issuer_keys_need_a_source() -> None:
    with pytest.raises(ValueError):
        IssuerKeys("https://a")
    with pytest.raises(ValueError):
        IssuerKeys("https://a", jwks_uri="https://a/k", discovery_uri="https://a/d")


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert condition()


@dataclass
class Rotation:
    keys: IssuerKeys
    mapper: IdpClaimMapper
    runner: asyncio.Task[None]  # IdpKeys.run()
    caller: asyncio.Task[Any]  # a call with the new kid, waiting for the refetch


async def rotate_while_running(server: IdpServer, tg: asyncio.TaskGroup, delay: float) -> Rotation:
    """Running key sets; the IdP adds k2 and a k2 token arrives; returns once the refetch is out."""
    server.keys = [rsa_jwk(rsa_key("k1"), "k1")]
    # refresh_interval=0: no periodic refresh, so only a refetch can load a new key.
    keys = IssuerKeys(
        server.issuer, jwks_uri=server.url + "/jwks", refresh_interval=0, refetch_interval=30
    )
    group = IdpKeys([keys])
    policy = IssuerPolicy(issuer=server.issuer, audiences=frozenset({"temporal"}))
    mapper = IdpClaimMapper([policy], group, cache_size=0)
    runner = tg.create_task(group.run())
    await wait_for(lambda: keys.loaded)
    server.delay = delay
    server.keys = [rsa_jwk(rsa_key("k1"), "k1"), rsa_jwk(rsa_key("k2"), "k2")]
    caller = tg.create_task(mapper.get_claims(AuthInfo(token=token(server.issuer, "k2"))))
    await wait_for(lambda: server.count() == 2)
    return Rotation(keys=keys, mapper=mapper, runner=runner, caller=caller)


async def test_a_refetch_is_a_task_of_the_running_key_sets_and_ends_with_them(
    idp: IdpServer,
) -> None:
    async with asyncio.TaskGroup() as tg:
        # The refetch is still in flight when the key sets stop.
        r = await rotate_while_running(idp, tg, delay=1.0)
        refetches = [t for t in asyncio.all_tasks() if t.get_name().startswith("jwks-refetch")]
        assert len(refetches) == 1
        r.runner.cancel()
        await asyncio.wait([r.runner])
        # Nothing outlives the key sets' run(): the refetch was cancelled with it, and so was
        # the call waiting for it (at shutdown, after the drain).
        assert refetches[0].cancelled()
        await asyncio.wait([r.caller])
        assert r.caller.cancelled()


async def test_a_caller_giving_up_does_not_cancel_the_refetch_of_running_key_sets(
    idp: IdpServer,
) -> None:
    async with asyncio.TaskGroup() as tg:
        r = await rotate_while_running(idp, tg, delay=0.3)
        r.caller.cancel()
        # The shared refetch completes for the callers that stay, and for the next token.
        await wait_for(lambda: bool(r.keys.lookup("k2")))
        claims = await r.mapper.get_claims(AuthInfo(token=token(idp.issuer, "k2")))
        assert claims.subject == "svc" and idp.count() == 2
        r.runner.cancel()
