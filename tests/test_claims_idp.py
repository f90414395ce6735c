"""IdP token mapper: Keycloak / Azure AD / Okta / Auth0 shaped tokens, really signed with
RS256, PS256, ES384 and EdDSA, mapped to Temporal roles; every check failing closed."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from prometheus_client import CollectorRegistry

from proxy.claims.build import build_claim_mapper
from proxy.claims.idp import IdpClaimMapper, IssuerPolicy, RoleClaim
from proxy.claims.patterns import PatternError
from proxy.config.parse import parse_config
from proxy.errors import ConfigError, CredentialError
from proxy.keys.build import build_key_provider
from proxy.keys.idp import IdpKeys, IssuerKeys, VerificationKey
from proxy.metrics import ProxyMetrics
from proxy.model import AuthInfo, Reason, Role
from tests.jwt_helpers import assemble, b64url, ec_key, rsa_key, sign_hs256, sign_rs256

KEYCLOAK = "https://sso.example.com/realms/prod"
AZURE_TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AZURE = f"https://login.microsoftonline.com/{AZURE_TID}/v2.0"
OKTA = "https://example.okta.com/oauth2/default"
AUTH0 = "https://tenant.eu.auth0.com/"


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def rsa() -> RSAPrivateKey:
    return rsa_key("idp-rsa")


def ec384() -> ec.EllipticCurvePrivateKey:
    return ec_key("idp-ec384", "P-384")


def sign(payload: dict[str, Any], key: Any, alg: str, kid: str | None = "k1", **head: Any) -> str:
    headers = {"kid": kid, **head} if kid is not None else dict(head)
    return "Bearer " + pyjwt.encode(payload, key, algorithm=alg, headers=headers)


def now() -> int:
    return int(time.time())


def vk(key: Any, kid: str | None = "k1", alg: str = "") -> VerificationKey:
    return VerificationKey(kid=kid, key=key.public_key(), alg=alg)


def mapper(
    *policies: IssuerPolicy, keys: dict[str, list[VerificationKey]], **kw: Any
) -> IdpClaimMapper:
    idp = IdpKeys([IssuerKeys(iss, static_keys=ks) for iss, ks in keys.items()])
    return IdpClaimMapper(policies, idp, **kw)


def rc(path: str = "", claim: str = "", **_: Any) -> Any:
    def table(mapping: dict[str, list[str]]) -> RoleClaim:
        return RoleClaim.build(path=path, claim=claim, table=mapping)

    return table


# ------------------------------------------------------------------------ provider shapes


async def test_keycloak_realm_and_client_roles_and_scope() -> None:
    policy = IssuerPolicy(
        issuer=KEYCLOAK,
        audiences=frozenset({"temporal-proxy"}),
        subject_claim="azp",
        role_claims=(
            rc("realm_access.roles")({"temporal-admin": ["temporal-system:admin"]}),
            rc("resource_access.temporal-proxy.roles")({"*-writer": ["{1}:write"]}),
            rc("scope")({"temporal:*:read": ["{1}:read"]}),
        ),
    )
    m = mapper(policy, keys={KEYCLOAK: [vk(rsa())]})
    token = sign(
        {
            "iss": KEYCLOAK,
            "aud": ["temporal-proxy", "account"],
            "sub": "f1c3d3e2-0000-4000-8000-000000000001",
            "azp": "temporal-cli",
            "typ": "Bearer",
            "exp": now() + 300,
            "iat": now(),
            "realm_access": {"roles": ["temporal-admin", "offline_access"]},
            "resource_access": {
                "temporal-proxy": {"roles": ["payments-writer"]},
                "account": {"roles": ["orders-writer"]},  # another client's roles: ignored
            },
            "scope": "openid profile temporal:orders:read",
        },
        rsa(),
        "RS256",
    )
    claims = await m.get_claims(AuthInfo(token=token))
    assert claims.subject == "temporal-cli"
    assert claims.system == Role.ADMIN
    assert dict(claims.namespaces) == {"payments": Role.WRITER, "orders": Role.READER}
    assert claims.auth_type == "jwt"


async def test_azure_ad_v2_roles_groups_and_scp() -> None:
    group = "0b5c7d0e-1a2b-4c3d-9e8f-123456789abc"
    policy = IssuerPolicy(
        issuer=AZURE,
        audiences=frozenset({"api://temporal"}),
        subject_claim="oid",
        algorithms=frozenset({"PS256"}),
        role_claims=(
            rc("roles")({"Temporal.Payments.Write": ["payments:write"]}),
            rc("groups")({group: ["orders:read"]}),
            rc("scp")({"Workflows.Read": ["default:read"]}),
        ),
    )
    m = mapper(policy, keys={AZURE: [vk(rsa(), "nOo3ZDrODXEK1jKWhXslHR_KXEg")]})
    token = sign(
        {
            "iss": AZURE,
            "aud": "api://temporal",
            "tid": AZURE_TID,
            "oid": "5a9f0c7e-aaaa-4bbb-8ccc-ddddeeeeffff",
            "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
            "azp": "11111111-2222-3333-4444-555555555555",
            "ver": "2.0",
            "roles": ["Temporal.Payments.Write"],
            "groups": [group, "ffffffff-0000-0000-0000-000000000000"],
            "scp": "Workflows.Read User.Read",
            "nbf": now() - 5,
            "iat": now() - 5,
            "exp": now() + 300,
        },
        rsa(),
        "PS256",
        kid="nOo3ZDrODXEK1jKWhXslHR_KXEg",
    )
    claims = await m.get_claims(AuthInfo(token=token))
    assert claims.subject == "5a9f0c7e-aaaa-4bbb-8ccc-ddddeeeeffff"
    assert dict(claims.namespaces) == {
        "payments": Role.WRITER,
        "orders": Role.READER,
        "default": Role.READER,
    }


async def test_okta_groups_and_scp_array_with_es384() -> None:
    policy = IssuerPolicy(
        issuer=OKTA,
        audiences=frozenset({"api://temporal"}),
        subject_claim="cid",
        algorithms=frozenset({"ES384"}),
        role_claims=(
            rc("groups")({"Temporal-Readers": ["default:read"]}),
            rc("scp")({"temporal.write": ["default:write"]}),
        ),
    )
    m = mapper(policy, keys={OKTA: [vk(ec384())]})
    token = sign(
        {
            "ver": 1,
            "jti": "AT.abc",
            "iss": OKTA,
            "aud": "api://temporal",
            "iat": now(),
            "exp": now() + 300,
            "cid": "0oa1b2c3d4e5f6g7h8i9",
            "uid": "00u1a2b3c4d5e6f7g8h9",
            "scp": ["openid", "temporal.write"],
            "sub": "dev@example.com",
            "groups": ["Everyone", "Temporal-Readers"],
        },
        ec384(),
        "ES384",
    )
    claims = await m.get_claims(AuthInfo(token=token))
    assert claims.subject == "0oa1b2c3d4e5f6g7h8i9"
    assert dict(claims.namespaces) == {"default": Role.READER | Role.WRITER}


async def test_auth0_permissions_and_namespaced_roles_with_eddsa() -> None:
    policy = IssuerPolicy(
        issuer=AUTH0,
        audiences=frozenset({"https://temporal.example.com/api"}),
        algorithms=frozenset({"EdDSA"}),
        role_claims=(
            rc(claim="https://temporal.example.com/roles")({"*-admin": ["{1}:admin"]}),
            rc("permissions")({"read:workflows": ["default:read"]}),
        ),
        permissions_claim="https://temporal.example.com/permissions",
    )
    m = mapper(policy, keys={AUTH0: [vk(ed_key())]})
    token = sign(
        {
            "iss": AUTH0,
            "sub": "Xk3mFz9@clients",
            "aud": ["https://temporal.example.com/api", f"{AUTH0}userinfo"],
            "iat": now(),
            "exp": now() + 300,
            "gty": "client-credentials",
            "azp": "Xk3mFz9",
            "permissions": ["read:workflows", "write:workflows"],
            "https://temporal.example.com/roles": ["payments-admin"],
            "https://temporal.example.com/permissions": ["orders:write"],
        },
        ed_key(),
        "EdDSA",
    )
    claims = await m.get_claims(AuthInfo(token=token))
    assert claims.subject == "Xk3mFz9@clients"
    assert dict(claims.namespaces) == {
        "payments": Role.ADMIN,
        "default": Role.READER,
        "orders": Role.WRITER,
    }


async def test_two_issuers_each_with_its_own_keys_and_mapping() -> None:
    kc = IssuerPolicy(
        issuer=KEYCLOAK,
        audiences=frozenset({"temporal"}),
        role_claims=(rc("groups")({"ops": ["ops:admin"]}),),
    )
    okta = IssuerPolicy(
        issuer=OKTA,
        audiences=frozenset({"temporal"}),
        algorithms=frozenset({"ES384"}),
        role_claims=(rc("groups")({"ops": ["default:read"]}),),
    )
    m = mapper(kc, okta, keys={KEYCLOAK: [vk(rsa())], OKTA: [vk(ec384())]})
    base = {"aud": "temporal", "sub": "s", "exp": now() + 60, "groups": ["ops"]}
    a = await m.get_claims(AuthInfo(token=sign({**base, "iss": KEYCLOAK}, rsa(), "RS256")))
    b = await m.get_claims(AuthInfo(token=sign({**base, "iss": OKTA}, ec384(), "ES384")))
    assert dict(a.namespaces) == {"ops": Role.ADMIN}
    assert dict(b.namespaces) == {"default": Role.READER}
    # Keycloak's key cannot vouch for an Okta token, even with the same kid.
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(token=sign({**base, "iss": OKTA}, rsa(), "RS256")))
    assert caught.value.reason is Reason.UNSUPPORTED_ALGORITHM


# ------------------------------------------------------------------------ failing closed

POLICY = IssuerPolicy(
    issuer=KEYCLOAK,
    audiences=frozenset({"temporal"}),
    algorithms=frozenset({"RS256", "ES384"}),
    leeway=30,
    role_claims=(rc("groups")({"g": ["default:read"]}),),
)


def good(**over: Any) -> dict[str, Any]:
    payload = {"iss": KEYCLOAK, "aud": "temporal", "sub": "s", "exp": now() + 60, "groups": ["g"]}
    payload.update(over)
    return {k: v for k, v in payload.items() if v is not None}


def std_mapper(**kw: Any) -> IdpClaimMapper:
    return mapper(POLICY, keys={KEYCLOAK: [vk(rsa()), vk(ec384(), "ec")]}, **kw)


async def test_a_good_token_passes() -> None:
    claims = await std_mapper().get_claims(AuthInfo(token=sign(good(), rsa(), "RS256")))
    assert dict(claims.namespaces) == {"default": Role.READER}


def _hs256_with_public_key() -> str:
    pem = (
        rsa()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "Bearer " + assemble(
        {"alg": "HS256", "kid": "k1"}, good(), lambda data: sign_hs256(pem, data)
    )


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: _hs256_with_public_key(), Reason.UNSUPPORTED_ALGORITHM),
        (
            lambda: "Bearer " + assemble({"alg": "none", "kid": "k1"}, good()),
            Reason.UNSUPPORTED_ALGORITHM,
        ),
        (lambda: sign(good(), rsa(), "RS512"), Reason.UNSUPPORTED_ALGORITHM),
        (
            lambda: sign(good(iss="https://evil.example.com"), rsa(), "RS256"),
            Reason.ISSUER_MISMATCH,
        ),
        (lambda: sign(good(iss=None), rsa(), "RS256"), Reason.ISSUER_MISMATCH),
        (lambda: sign(good(aud="account"), rsa(), "RS256"), Reason.AUDIENCE_MISMATCH),
        (lambda: sign(good(aud=None), rsa(), "RS256"), Reason.AUDIENCE_MISMATCH),
        (lambda: sign(good(aud=["temporal", 7]), rsa(), "RS256"), Reason.AUDIENCE_MISMATCH),
        (lambda: sign(good(exp=now() - 31), rsa(), "RS256"), Reason.TOKEN_EXPIRED),
        (lambda: sign(good(exp=None), rsa(), "RS256"), Reason.INVALID_TOKEN),
        (lambda: sign(good(exp="9999999999"), rsa(), "RS256"), Reason.INVALID_TOKEN),
        (lambda: sign(good(exp=True), rsa(), "RS256"), Reason.INVALID_TOKEN),
        (lambda: sign(good(nbf=now() + 60), rsa(), "RS256"), Reason.TOKEN_NOT_YET_VALID),
        (lambda: sign(good(iat=now() + 60), rsa(), "RS256"), Reason.TOKEN_NOT_YET_VALID),
        (lambda: sign(good(sub=None), rsa(), "RS256"), Reason.BAD_SUBJECT),
        (lambda: sign(good(sub=""), rsa(), "RS256"), Reason.BAD_SUBJECT),
        (lambda: sign(good(sub=42), rsa(), "RS256"), Reason.BAD_SUBJECT),
        (lambda: sign(good(), rsa(), "RS256", kid="unknown"), Reason.UNKNOWN_KEY),
        (
            lambda: (
                "Bearer "
                + assemble({"alg": "RS256", "kid": 7}, good(), lambda d: sign_rs256(rsa(), d))
            ),
            Reason.INVALID_TOKEN,
        ),
        (lambda: sign(good(), rsa_key("other"), "RS256"), Reason.BAD_SIGNATURE),
        # An EC key named by kid "ec" cannot verify an RS256 token, and vice versa.
        (lambda: sign(good(), rsa(), "RS256", kid="ec"), Reason.UNKNOWN_KEY),
        (lambda: sign(good(), ec384(), "ES384", kid="k1"), Reason.UNKNOWN_KEY),
        (lambda: sign(good(), rsa(), "RS256", crit=["exp"]), Reason.INVALID_TOKEN),
        (lambda: "Token abc", Reason.BAD_TOKEN_FORMAT),
        (lambda: "Bearer a.b", Reason.BAD_TOKEN_FORMAT),
        (lambda: "Bearer " + b64url(b"[]") + "." + b64url(b"{}") + ".", Reason.BAD_TOKEN_FORMAT),
    ],
)
async def test_refusals(token: Any, reason: Reason) -> None:
    with pytest.raises(CredentialError) as caught:
        await std_mapper().get_claims(AuthInfo(token=token()))
    assert caught.value.reason is reason


async def test_leeway_admits_a_just_expired_token() -> None:
    claims = await std_mapper().get_claims(
        AuthInfo(token=sign(good(exp=now() - 10, nbf=now() + 10), rsa(), "RS256"))
    )
    assert claims.subject == "s"


async def test_the_tampered_payload_is_refused() -> None:
    token = sign(good(), rsa(), "RS256")
    head, _, sig = token.removeprefix("Bearer ").split(".")
    forged = b64url(json.dumps(good(groups=["g", "admins"])).encode())
    with pytest.raises(CredentialError) as caught:
        await std_mapper().get_claims(AuthInfo(token=f"Bearer {head}.{forged}.{sig}"))
    assert caught.value.reason is Reason.BAD_SIGNATURE


async def test_a_jwk_alg_restricts_its_key() -> None:
    m = mapper(POLICY, keys={KEYCLOAK: [vk(rsa(), alg="PS256")]})
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(token=sign(good(), rsa(), "RS256")))
    assert caught.value.reason is Reason.UNKNOWN_KEY


async def test_a_token_without_kid_tries_the_fitting_keys() -> None:
    m = mapper(POLICY, keys={KEYCLOAK: [vk(rsa_key("a"), None), vk(rsa(), None)]})
    claims = await m.get_claims(AuthInfo(token=sign(good(), rsa(), "RS256", kid=None)))
    assert claims.subject == "s"


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
async def test_small_rsa_keys_are_refused() -> None:
    small = rsa_key("small-1024", 1024)
    m = mapper(POLICY, keys={KEYCLOAK: [vk(small)]})
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(token=sign(good(), small, "RS256")))
    assert caught.value.reason is Reason.UNKNOWN_KEY


async def test_the_global_audience_is_also_enforced() -> None:
    token = sign(good(aud=["temporal", "other"]), rsa(), "RS256")
    assert (await std_mapper().get_claims(AuthInfo(token=token, audience="other"))).subject
    with pytest.raises(CredentialError):
        await std_mapper().get_claims(AuthInfo(token=token, audience="third"))


async def test_no_token_gives_empty_claims_like_temporals_mapper() -> None:
    claims = await std_mapper().get_claims(AuthInfo())
    assert dict(claims.namespaces) == {} and claims.auth_type == "none"  # no credential counted


async def test_verified_tokens_are_cached_until_they_expire() -> None:
    clock = [float(now())]
    m = std_mapper(clock=lambda: clock[0])
    token = sign(good(exp=int(clock[0]) + 10), rsa(), "RS256")
    first = await m.get_claims(AuthInfo(token=token))
    assert (await m.get_claims(AuthInfo(token=token))) is first
    clock[0] += 41  # past exp + 30 s leeway
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(token=token))
    assert caught.value.reason is Reason.TOKEN_EXPIRED


async def test_a_captured_temporal_system_group_grants_nothing_system_wide() -> None:
    policy = IssuerPolicy(
        issuer=KEYCLOAK,
        audiences=frozenset({"temporal"}),
        role_claims=(rc("groups")({"/temporal/*/admins": ["{1}:admin"]}),),
    )
    m = mapper(policy, keys={KEYCLOAK: [vk(rsa())]})
    token = sign(
        good(groups=["/temporal/temporal-system/admins", "/temporal/a/admins"]), rsa(), "RS256"
    )
    claims = await m.get_claims(AuthInfo(token=token))
    assert claims.system == Role.UNDEFINED
    assert dict(claims.namespaces) == {"a": Role.ADMIN}


def test_policy_refuses_hmac_none_and_missing_audience() -> None:
    for algs in ({"HS256"}, {"none"}, set()):
        with pytest.raises(ValueError):
            IssuerPolicy(issuer=KEYCLOAK, audiences=frozenset({"a"}), algorithms=frozenset(algs))
    with pytest.raises(ValueError):
        IssuerPolicy(issuer=KEYCLOAK, audiences=frozenset())


@pytest.mark.parametrize(
    "kw",
    [{}, {"path": "a", "claim": "b"}, {"path": "a..b"}],
)
def test_role_claim_errors(kw: dict[str, str]) -> None:
    with pytest.raises(PatternError):
        RoleClaim.build(table={"x": ["a:read"]}, **kw)


def test_escaped_dots_in_paths() -> None:
    claim = RoleClaim.build(path=r"resource_access.temporal\.proxy.roles", table={"r": ["a:read"]})
    assert claim.path == ("resource_access", "temporal.proxy", "roles")


# ------------------------------------------------------------------------ config


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def idp_config(issuer: dict[str, Any], **authorization: Any) -> Any:
    return parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {
                "authorizer": "default",
                "claimMapper": "idp",
                "idp": {"issuers": [issuer]},
                **authorization,
            },
        },
        env={},
    )


def base_issuer(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "k1.pem").write_bytes(pem(rsa()))
    return {
        "issuer": KEYCLOAK,
        "publicKeyFiles": [{"file": str(tmp_path / "k1.pem"), "kid": "k1"}],
        "audience": ["temporal"],
        "algorithms": ["RS256", "EdDSA"],
        "leeway": "30s",
        "roleClaims": [{"path": "realm_access.roles", "map": {"ops": ["default:admin"]}}],
    }


async def test_config_with_static_pem_and_jwks_file_keys(tmp_path: Path) -> None:
    from tests.jwt_helpers import b64url as enc

    issuer = base_issuer(tmp_path)
    okp = {
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": "ed",
        "x": enc(
            ed_key()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ),
    }
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [okp]}))
    issuer["jwksFile"] = str(tmp_path / "jwks.json")
    c = idp_config(issuer)
    keys = build_key_provider(c, ProxyMetrics(CollectorRegistry(), method_names=()), None)
    assert isinstance(keys, IdpKeys) and keys.loaded and keys.key_count == 2
    m = build_claim_mapper(c, keys, None)
    payload = good(realm_access={"roles": ["ops"]})
    for token in (sign(payload, rsa(), "RS256"), sign(payload, ed_key(), "EdDSA", kid="ed")):
        claims = await m.get_claims(AuthInfo(token=token))
        assert dict(claims.namespaces) == {"default": Role.ADMIN}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"algorithms": ["HS256"]}, "authorization.idp.issuers[0].algorithms[0]"),
        ({"algorithms": ["none"]}, "authorization.idp.issuers[0].algorithms[0]"),
        ({"audience": []}, "authorization.idp.issuers[0].audience"),
        ({"audience": "temporal"}, "authorization.idp.issuers[0].audience"),
        ({"issuer": ""}, "authorization.idp.issuers[0].issuer"),
        ({"publicKeyFiles": []}, "authorization.idp.issuers[0]"),
        ({"jwksUri": "https://x/jwks", "discovery": True}, "authorization.idp.issuers[0].jwksUri"),
        ({"jwksUri": "ftp://x/jwks"}, "authorization.idp.issuers[0]"),
        ({"leeway": "1h"}, "authorization.idp.issuers[0].leeway"),
        ({"leeway": 30}, "authorization.idp.issuers[0].leeway"),
        ({"roleClaims": []}, "authorization.idp.issuers[0].roleClaims"),
        (
            {"roleClaims": [{"path": "a", "claim": "b", "map": {"x": ["a:read"]}}]},
            "authorization.idp.issuers[0].roleClaims[0]",
        ),
        (
            {"roleClaims": [{"path": "a", "map": {"x": ["a:superuser"]}}]},
            "authorization.idp.issuers[0].roleClaims[0]",
        ),
        (
            {"roleClaims": [{"path": "a", "map": {"x": "a:read"}}]},
            "authorization.idp.issuers[0].roleClaims[0].map.x",
        ),
        (
            {"publicKeyFiles": [{"file": "/nonexistent/k.pem"}]},
            "authorization.idp.issuers[0].publicKeyFiles[0].file",
        ),
        ({"jwksFile": "/nonexistent/jwks.json"}, "authorization.idp.issuers[0].jwksFile"),
        ({"refetchInterval": "soon"}, "authorization.idp.issuers[0].refetchInterval"),
        ({"subjectClaims": "azp"}, "authorization.idp.issuers[0].subjectClaims"),
    ],
)
def test_idp_config_errors(tmp_path: Path, change: dict[str, Any], path: str) -> None:
    issuer = {**base_issuer(tmp_path), **change}
    with pytest.raises(ConfigError) as caught:
        c = idp_config(issuer)
        keys = build_key_provider(c, ProxyMetrics(CollectorRegistry(), method_names=()), None)
        build_claim_mapper(c, keys, None)
    assert caught.value.path == path


def test_a_bad_pem_file_is_a_config_error(tmp_path: Path) -> None:
    issuer = base_issuer(tmp_path)
    (tmp_path / "k1.pem").write_text("not a key")
    c = idp_config(issuer)
    with pytest.raises(ConfigError) as caught:
        build_key_provider(c, ProxyMetrics(CollectorRegistry(), method_names=()), None)
    assert caught.value.path == "authorization.idp.issuers[0].publicKeyFiles[0].file"


def test_duplicate_issuers_are_refused(tmp_path: Path) -> None:
    issuer = base_issuer(tmp_path)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "upstream": {"address": "127.0.0.1:7233"},
                "authorization": {"claimMapper": "idp", "idp": {"issuers": [issuer, issuer]}},
            },
            env={},
        )
    assert caught.value.path == "authorization.idp.issuers[1].issuer"


def test_effective_config_shows_the_idp_section(tmp_path: Path) -> None:
    from proxy.config.dump import effective_config

    out = effective_config(idp_config(base_issuer(tmp_path)))
    issuer = out["authorization"]["idp"]["issuers"][0]
    assert issuer["leeway"] == "30s"
    assert issuer["roleClaims"][0]["map"] == {"ops": ["default:admin"]}


def test_the_readme_examples_are_valid_config() -> None:
    """README "Identity without code": every YAML example parses and builds (copy-paste)."""
    import re

    import yaml

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Identity without code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    tls = {
        "frontend": {
            "server": {
                "certFile": "/x.pem",
                "keyFile": "/x.key",
                "clientCaFiles": ["/ca.pem"],
                "requireClientAuth": True,
            }
        }
    }
    for block in blocks:
        raw = yaml.safe_load(block)
        raw.update({"upstream": {"address": "127.0.0.1:7233"}, "tls": tls})
        # The air-gapped and private-CA examples name files on the operator's machine: parse
        # them, build the rest.
        parse_config(raw, env={})
        if "idp" in raw["authorization"]:
            idp = raw["authorization"]["idp"]
            local = ("jwksFile", "rootCaFiles")
            idp["issuers"] = [i for i in idp["issuers"] if not any(k in i for k in local)]
        cfg = parse_config(raw, env={})
        keys = build_key_provider(cfg, ProxyMetrics(CollectorRegistry(), method_names=()), None)
        assert build_claim_mapper(cfg, keys, None) is not None


async def test_a_permission_on_the_empty_namespace_is_ignored() -> None:
    # Issue 14: ":admin" (Temporal: admin on "") must not reach by-id and task-token calls.
    policy = IssuerPolicy(
        issuer=AUTH0,
        audiences=frozenset({"api"}),
        algorithms=frozenset({"EdDSA"}),
        role_claims=(rc("groups")({"ops": ["default:read"]}),),
        permissions_claim="perms",
    )
    m = mapper(policy, keys={AUTH0: [vk(ed_key())]})
    payload = {"iss": AUTH0, "sub": "s", "aud": "api", "exp": now() + 300}
    token = sign({**payload, "groups": ["ops"], "perms": [":admin", ":read"]}, ed_key(), "EdDSA")
    claims = await m.get_claims(AuthInfo(token=token))
    assert dict(claims.namespaces) == {"default": Role.READER}
    assert claims.role_in("") == Role.UNDEFINED


def test_a_grant_on_the_empty_namespace_fails_startup() -> None:
    with pytest.raises(PatternError, match="empty namespace grants nothing"):
        RoleClaim.build(path="groups", table={"ops": [":admin"]})
