"""Claim mapper chain: union, jwt-only, cert-only, cert-and-jwt over a real certificate mapper
and Temporal's real default JWT mapper."""

from __future__ import annotations

import time
from typing import Any

import pytest

from proxy.claims.build import build_claim_mapper
from proxy.claims.cert import CertificateClaimMapper, CertificateRule
from proxy.claims.chain import ChainClaimMapper
from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.config.parse import parse_config
from proxy.errors import ConfigError, CredentialError
from proxy.keys.build import build_key_provider
from proxy.keys.jwks import JwksKeyProvider, StaticKeyProvider
from proxy.model import AuthInfo, Claims, Reason, Role
from tests.jwt_helpers import jwks, rs256_token, rsa_jwk, rsa_key
from tests.test_claims_cert import TLS, peer


def cert_mapper() -> CertificateClaimMapper:
    return CertificateClaimMapper(
        [CertificateRule.build({"spiffe_id": "spiffe://prod/ns/*/sa/*"}, ["{1}:read"])]
    )


def jwt_mapper() -> DefaultJWTClaimMapper:
    return DefaultJWTClaimMapper(StaticKeyProvider({"rsa1": rsa_key().public_key()}))


def token(*permissions: str, sub: str = "alice") -> str:
    payload = {"sub": sub, "permissions": list(permissions), "exp": int(time.time()) + 300}
    return "Bearer " + rs256_token(payload)


PEER = peer(uris=("spiffe://prod/ns/payments/sa/w",))


def chain(mode: Any) -> ChainClaimMapper:
    return ChainClaimMapper(mode, cert=cert_mapper(), token=jwt_mapper())


async def test_union_ors_roles_and_takes_the_token_subject() -> None:
    claims = await chain("union").get_claims(
        AuthInfo(peer=PEER, token=token("payments:write", "orders:read"))
    )
    assert dict(claims.namespaces) == {
        "payments": Role.READER | Role.WRITER,
        "orders": Role.READER,
    }
    assert claims.subject == "alice" and claims.auth_type == "jwt"


async def test_union_with_only_a_certificate() -> None:
    claims = await chain("union").get_claims(AuthInfo(peer=PEER))
    assert dict(claims.namespaces) == {"payments": Role.READER}
    assert claims.auth_type == "cert"


async def test_union_with_only_a_token() -> None:
    claims = await chain("union").get_claims(AuthInfo(token=token("orders:write")))
    assert dict(claims.namespaces) == {"orders": Role.WRITER}


async def test_union_refuses_a_bad_token_even_with_a_good_certificate() -> None:
    with pytest.raises(CredentialError):
        await chain("union").get_claims(AuthInfo(peer=PEER, token="Bearer not.a.token"))


async def test_union_without_credentials() -> None:
    with pytest.raises(CredentialError) as caught:
        await chain("union").get_claims(AuthInfo())
    assert caught.value.reason is Reason.CERTIFICATE_REQUIRED


async def test_cert_and_jwt_requires_both() -> None:
    m = chain("cert-and-jwt")
    with pytest.raises(CredentialError) as no_token:
        await m.get_claims(AuthInfo(peer=PEER))
    assert no_token.value.reason is Reason.TOKEN_REQUIRED
    with pytest.raises(CredentialError) as no_cert:
        await m.get_claims(AuthInfo(token=token("orders:write")))
    assert no_cert.value.reason is Reason.CERTIFICATE_REQUIRED
    both = await m.get_claims(AuthInfo(peer=PEER, token=token("orders:write")))
    assert dict(both.namespaces) == {"payments": Role.READER, "orders": Role.WRITER}


async def test_cert_only_ignores_tokens_even_bad_ones() -> None:
    m = chain("cert-only")
    claims = await m.get_claims(AuthInfo(peer=PEER, token="Bearer garbage"))
    assert dict(claims.namespaces) == {"payments": Role.READER}
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(token=token("orders:write")))
    assert caught.value.reason is Reason.CERTIFICATE_REQUIRED


async def test_jwt_only_ignores_the_certificate() -> None:
    m = chain("jwt-only")
    claims = await m.get_claims(AuthInfo(peer=PEER, token=token("orders:write")))
    assert dict(claims.namespaces) == {"orders": Role.WRITER}
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(peer=PEER))
    assert caught.value.reason is Reason.TOKEN_REQUIRED


def test_modes_check_their_members() -> None:
    with pytest.raises(ValueError):
        ChainClaimMapper("cert-and-jwt", cert=cert_mapper())
    with pytest.raises(ValueError):
        ChainClaimMapper("jwt-only", cert=cert_mapper())
    with pytest.raises(ValueError):
        ChainClaimMapper("sometimes", cert=cert_mapper())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- config


def cfg(authorization: dict[str, Any]) -> Any:
    return parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "tls": TLS,
            "authorization": {
                "authorizer": "default",
                "claimMapper": "chain",
                "certificateRules": [
                    {"spiffeId": "spiffe://prod/ns/*/sa/*", "grants": ["{1}:read"]}
                ],
                **authorization,
            },
        },
        env={},
    )


async def test_config_builds_a_chain_with_temporals_default_mapper(tmp_path: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_jwk(rsa_key(), "rsa1")))
    c = cfg(
        {
            "chain": {"mode": "cert-and-jwt", "members": ["cert", "jwt"]},
            "jwtKeyProvider": {"keySourceURIs": [path.as_uri()]},
        }
    )
    from prometheus_client import CollectorRegistry

    from proxy.metrics import ProxyMetrics

    keys = build_key_provider(c, ProxyMetrics(CollectorRegistry(), method_names=()), None)
    assert isinstance(keys, JwksKeyProvider)
    assert await keys.refresh()
    m = build_claim_mapper(c, keys, None)
    claims = await m.get_claims(AuthInfo(peer=PEER, token=token("orders:write")))
    assert dict(claims.namespaces) == {"payments": Role.READER, "orders": Role.WRITER}


@pytest.mark.parametrize(
    ("chain_cfg", "path"),
    [
        ({"mode": "both"}, "authorization.chain.mode"),
        ({"members": ["cert", "oidc"]}, "authorization.chain.members[1]"),
        ({"members": ["cert", "cert"]}, "authorization.chain.members"),
        ({"members": ["jwt", "idp"]}, "authorization.chain.members"),
        ({"members": []}, "authorization.chain.members"),
        ({"mode": "cert-and-jwt", "members": ["cert"]}, "authorization.chain.members"),
        ({"mode": "cert-only", "members": ["jwt"]}, "authorization.chain.members"),
        ({"mode": "jwt-only", "members": ["cert"]}, "authorization.chain.members"),
        ({"members": ["cert", "jwt"]}, "authorization.jwtKeyProvider.keySourceURIs"),
        ({"members": ["cert", "idp"]}, "authorization.idp.issuers"),
    ],
)
def test_chain_config_errors(chain_cfg: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cfg({"chain": chain_cfg})
    assert caught.value.path == path


def test_cert_only_chain_needs_no_token_config() -> None:
    c = cfg({"chain": {"mode": "cert-only", "members": ["cert", "jwt"]}})
    assert build_key_provider(c, None, None) is None  # type: ignore[arg-type]
    assert isinstance(build_claim_mapper(c, None, None), ChainClaimMapper)


class _EmptyNamespaceMember:
    """A member (say, a plugin) that puts a role under the empty namespace."""

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        return Claims.build(subject="p", namespaces={"": Role.ADMIN, "orders": Role.READER})


async def test_union_drops_a_members_role_on_the_empty_namespace() -> None:
    m = ChainClaimMapper("union", cert=cert_mapper(), token=_EmptyNamespaceMember())
    claims = await m.get_claims(AuthInfo(peer=PEER, token="Bearer x"))
    assert dict(claims.namespaces) == {"payments": Role.READER, "orders": Role.READER}
