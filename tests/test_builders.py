"""The construction switches, one per seam: each config value builds the right real object.

Names come in any case (as Temporal's do); config normalizes them once and the builders compare
exactly; a plugin's `module.path:Factory` is kept as written.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import methods
from proxy.audit import AuditLog, build_audit_log
from proxy.authz import DefaultAuthorizer, NoopAuthorizer
from proxy.authz.build import build_authorizer
from proxy.claims import DefaultJWTClaimMapper, NoopClaimMapper
from proxy.claims.build import build_claim_mapper
from proxy.claims.cert import CertificateClaimMapper
from proxy.claims.chain import ChainClaimMapper
from proxy.claims.idp import IdpClaimMapper
from proxy.codec.build import build_codec_routes
from proxy.config.parse import parse_config
from proxy.config.schema import AuthorizationConfig, Config
from proxy.errors import ConfigError
from proxy.gate import build_gate
from proxy.interfaces import Authorizer, ClaimMapper
from proxy.keys.build import build_key_provider
from proxy.keys.idp import IdpKeys
from proxy.keys.jwks import JwksKeyProvider
from proxy.metrics import ProxyMetrics, build_proxy_metrics
from proxy.model import AuthInfo, CallTarget, Claims, Decision, Reason, Result
from proxy.ratelimit import RateLimiter, build_rate_limiter
from tests.jwt_helpers import jwks as jwk_set
from tests.jwt_helpers import rsa_jwk, rsa_key
from tests.test_claims_cert import TLS

ROOT = Path(__file__).resolve().parent.parent
JWKS_URI = "https://127.0.0.1:1/jwks.json"  # never fetched: building does not touch the network
RULES = [{"spiffeId": "spiffe://prod/ns/*/sa/*", "grants": ["{1}:read"]}]
KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # 32 bytes


# ------------------------------------------------------------------ plugins (real factories)


class PluginMapper:
    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        return Claims.build(subject="plugin")


class PluginAuthorizer:
    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        return Result(decision=Decision.ALLOW, reason=Reason.ALLOWED)


def make_mapper() -> ClaimMapper:
    return PluginMapper()


def MakeAuthorizer() -> Authorizer:
    return PluginAuthorizer()


# ----------------------------------------------------------------------------------- helpers


def config(tls: dict[str, Any] | None = None, **authorization: Any) -> Config:
    raw: dict[str, Any] = {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"authorizer": "noop", "claimMapper": "noop", **authorization},
    }
    if tls is not None:
        raw["tls"] = tls
    return parse_config(raw, env={})


def metrics() -> ProxyMetrics:
    return ProxyMetrics(CollectorRegistry(), method_names=())


def mapper_for(cfg: Config) -> ClaimMapper:
    """As `serve` and `explain` do: the key sets first, then the mapper over them."""
    keys = build_key_provider(cfg, metrics(), None)
    return build_claim_mapper(cfg, keys, None)


def idp_issuer(tmp_path: Path) -> dict[str, Any]:
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(jwk_set(rsa_jwk(rsa_key(), "rsa1")))
    return {
        "issuer": "https://idp.example",
        "jwksFile": str(jwks),
        "audience": ["proxy"],
        "permissionsClaim": "permissions",
    }


# ------------------------------------------------------------------------ name normalization


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("default", "default"),
        ("Default", "default"),
        ("NOOP", "noop"),
        ("", "noop"),
        ("Cert", "cert"),
        ("CHAIN", "chain"),
        ("IdP", "idp"),
        ("tests.test_builders:make_mapper", "tests.test_builders:make_mapper"),
        ("Tests.Mod:Factory", "Tests.Mod:Factory"),
    ],
)
def test_config_stores_the_claim_mapper_name_normalized_once(written: str, stored: str) -> None:
    assert AuthorizationConfig(claim_mapper=written).claim_mapper == stored
    base = AuthorizationConfig()
    assert dataclasses.replace(base, claim_mapper=written).claim_mapper == stored


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("DEFAULT", "default"),
        ("Noop", "noop"),
        ("", "noop"),
        ("tests.test_builders:MakeAuthorizer", "tests.test_builders:MakeAuthorizer"),
    ],
)
def test_config_stores_the_authorizer_name_normalized_once(written: str, stored: str) -> None:
    cfg = config(authorizer=written)
    assert cfg.authorization.authorizer == stored


def test_an_unknown_name_is_reported_as_written() -> None:
    with pytest.raises(ConfigError) as caught:
        config(claimMapper="Certs")
    assert caught.value.path == "authorization.claimMapper"
    assert "unknown value 'Certs' (default, noop, cert, chain, idp or module.path:Factory)" in str(
        caught.value
    )
    with pytest.raises(ConfigError) as caught:
        config(authorizer="Strict")
    assert caught.value.path == "authorization.authorizer"
    assert "unknown value 'Strict' (default, noop, cedar or module.path:Factory)" in str(
        caught.value
    )


# -------------------------------------------------------------------------- build_claim_mapper


@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
def test_default_builds_temporals_jwt_mapper(name: str) -> None:
    cfg = config(claimMapper=name, jwtKeyProvider={"keySourceURIs": [JWKS_URI]})
    assert isinstance(mapper_for(cfg), DefaultJWTClaimMapper)


@pytest.mark.parametrize("name", ["noop", "NoOp", ""])
def test_noop_builds_the_noop_mapper(name: str) -> None:
    assert isinstance(mapper_for(config(claimMapper=name)), NoopClaimMapper)


@pytest.mark.parametrize("name", ["cert", "CERT"])
def test_cert_builds_the_certificate_mapper(name: str) -> None:
    cfg = config(TLS, claimMapper=name, certificateRules=RULES)
    assert isinstance(mapper_for(cfg), CertificateClaimMapper)


@pytest.mark.parametrize("name", ["idp", "IDP"])
def test_idp_builds_the_idp_mapper(name: str, tmp_path: Path) -> None:
    cfg = config(claimMapper=name, idp={"issuers": [idp_issuer(tmp_path)]})
    assert isinstance(mapper_for(cfg), IdpClaimMapper)


@pytest.mark.parametrize(
    ("mode", "members", "cert", "token"),
    [
        ("union", ["cert", "jwt"], CertificateClaimMapper, DefaultJWTClaimMapper),
        ("union", ["cert", "idp"], CertificateClaimMapper, IdpClaimMapper),
        ("union", ["cert"], CertificateClaimMapper, None),
        ("cert-and-jwt", ["cert", "jwt"], CertificateClaimMapper, DefaultJWTClaimMapper),
        ("cert-and-jwt", ["idp", "cert"], CertificateClaimMapper, IdpClaimMapper),
        ("jwt-only", ["cert", "jwt"], None, DefaultJWTClaimMapper),
        ("jwt-only", ["idp"], None, IdpClaimMapper),
        ("cert-only", ["cert", "jwt"], CertificateClaimMapper, None),
    ],
)
def test_chain_builds_its_own_members(
    mode: str, members: list[str], cert: type | None, token: type | None, tmp_path: Path
) -> None:
    cfg = config(
        TLS,
        claimMapper="Chain",
        chain={"mode": mode, "members": members},
        certificateRules=RULES,
        jwtKeyProvider={"keySourceURIs": [JWKS_URI]},
        idp={"issuers": [idp_issuer(tmp_path)]},
    )
    built = mapper_for(cfg)
    assert isinstance(built, ChainClaimMapper)
    assert built.mode == mode
    # The members the mode uses, each built by the same switch as the stand-alone mappers.
    for member, expected in ((built._cert, cert), (built._token, token)):
        if expected is None:
            assert member is None
        else:
            assert type(member) is expected


def test_a_plugin_claim_mapper_is_loaded_as_written() -> None:
    built = mapper_for(config(claimMapper="tests.test_builders:make_mapper"))
    assert isinstance(built, PluginMapper)


def test_a_token_mapper_without_its_key_set_is_a_config_error(tmp_path: Path) -> None:
    jwt_cfg = config(claimMapper="default", jwtKeyProvider={"keySourceURIs": [JWKS_URI]})
    idp_cfg = config(claimMapper="idp", idp={"issuers": [idp_issuer(tmp_path)]})
    jwks = build_key_provider(jwt_cfg, metrics(), None)
    idp_keys = build_key_provider(idp_cfg, metrics(), None)
    assert isinstance(jwks, JwksKeyProvider) and isinstance(idp_keys, IdpKeys)
    for keys in (None, idp_keys):
        with pytest.raises(ConfigError) as caught:
            build_claim_mapper(jwt_cfg, keys, None)
        assert caught.value.path == "authorization.jwtKeyProvider.keySourceURIs"
    for keys in (None, jwks):
        with pytest.raises(ConfigError) as caught:
            build_claim_mapper(idp_cfg, keys, None)
        assert caught.value.path == "authorization.idp.issuers"


# ---------------------------------------------------------------------------- build_authorizer


@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
def test_default_builds_temporals_authorizer(name: str) -> None:
    assert isinstance(build_authorizer(config(authorizer=name)), DefaultAuthorizer)


@pytest.mark.parametrize("name", ["noop", "NOOP", ""])
def test_noop_builds_the_noop_authorizer(name: str) -> None:
    assert isinstance(build_authorizer(config(authorizer=name)), NoopAuthorizer)


def test_a_plugin_authorizer_is_loaded_as_written() -> None:
    built = build_authorizer(config(authorizer="tests.test_builders:MakeAuthorizer"))
    assert isinstance(built, PluginAuthorizer)


# --------------------------------------------------------------------- limiter, audit, metrics


def test_rate_limiter_only_when_enabled() -> None:
    off = config()
    assert build_rate_limiter(off) is None
    on = dataclasses.replace(off, rate_limits=dataclasses.replace(off.rate_limits, enabled=True))
    assert isinstance(build_rate_limiter(on), RateLimiter)


def test_audit_log_only_when_enabled(tmp_path: Path) -> None:
    off = config()
    assert build_audit_log(off) is None
    path = tmp_path / "audit.log"
    on = dataclasses.replace(
        off, audit=dataclasses.replace(off.audit, enabled=True, sink="file", path=str(path))
    )
    audit = build_audit_log(on)
    assert isinstance(audit, AuditLog)
    audit.close()


def test_metrics_have_the_method_table_and_the_namespace_allow_list() -> None:
    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {"authorizer": "noop", "claimMapper": "noop"},
            "metrics": {"namespaceLabels": ["payments"]},
        },
        env={},
    )
    registry = CollectorRegistry()
    built = build_proxy_metrics(cfg, registry)
    assert built.namespace_labels == frozenset({"payments"})
    built.request_duration.labels(method="StartWorkflowExecution").observe(0.1)
    names = {s.labels.get("method") for m in registry.collect() for s in m.samples}
    assert "StartWorkflowExecution" in names


# ---------------------------------------------------------------------------------- codec


def test_codec_routes_only_when_enabled() -> None:
    off = config()
    assert build_codec_routes(off, NoopClaimMapper(), CollectorRegistry()) == []
    on = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {"authorizer": "noop", "claimMapper": "noop"},
            "codec": {"enabled": True, "keys": {"k1": KEY_B64}, "encryptKeyId": "k1"},
            "admin": {"address": "127.0.0.1:9090"},  # unauthenticated: loopback only
        },
        env={},
    )
    routes = build_codec_routes(on, NoopClaimMapper(), CollectorRegistry())
    assert routes and all(isinstance(r, web.RouteDef) for r in routes)
    assert any(r.path.endswith("/decode") for r in routes)


# ------------------------------------------------------------------------------------- gate


async def _decide(cfg: Config, mode: Any = None) -> tuple[bool, bool]:
    gate = build_gate(
        cfg,
        claim_mapper=PluginMapper(),  # a subject without roles
        authorizer=build_authorizer(cfg),
        metrics=metrics(),
        logger=_Quiet(),
        peer_always_verified=False,
        mode=mode,
    )
    info = methods.lookup("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution")
    assert info is not None
    verdict = await gate.check(info, b"", token="Bearer x")
    return verdict.allowed, verdict.would_deny


class _Quiet:
    def info(self, event: str, **kw: Any) -> None:
        pass

    warning = error = debug = info


async def test_gate_runs_the_configured_mode_unless_told_otherwise() -> None:
    shadow = config(authorizer="default", mode="shadow")
    # No roles: default denies; shadow forwards and records the denial.
    assert await _decide(shadow) == (True, True)
    assert await _decide(shadow, mode="enforce") == (False, False)
    assert await _decide(config(authorizer="default")) == (False, False)


# ---------------------------------------------------------------------------------- layering


def test_explain_uses_the_builders_without_importing_app() -> None:
    code = "import proxy.explain, sys; assert 'proxy.app' not in sys.modules, 'proxy.app'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
