"""Issue 16 item 10: key sources behind a private CA, over real TLS on loopback.

An https identity provider whose certificate comes from a private CA: with `rootCaFiles` /
`rootCaData` its discovery and JWKS load; without them, with another CA, or for another host
name the fetch fails verification (logged as jwks_refresh_failed); a rotated CA file counts from
the next fetch; a bad file fails startup with its key path; https never redirects to http.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from prometheus_client import CollectorRegistry

from proxy.claims.build import build_claim_mapper
from proxy.config.parse import parse_config
from proxy.config.schema import Config
from proxy.dev.pki import CertificateAuthority
from proxy.errors import ConfigError
from proxy.keys.build import build_key_provider
from proxy.keys.idp import IssuerKeys
from proxy.keys.jwks import JwksKeyProvider
from proxy.keys.trust import CaTrust
from proxy.metrics import ProxyMetrics
from proxy.model import AuthInfo, Role
from tests.https_idp import REALM, HttpsIdp
from tests.jwt_helpers import rsa_jwk, rsa_key
from tests.pki import SecretMount

KID = "kc-1"


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _log(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    debug = info = warning = error = _log

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.events if name == event]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("private IdP CA")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create("some other CA")


@pytest.fixture
def idp(ca: CertificateAuthority, tmp_path: Path) -> Iterator[HttpsIdp]:
    server = HttpsIdp(ca, tmp_path, keys=[rsa_jwk(rsa_key("trust-idp"), KID)])
    yield server
    server.close()


def ca_file(tmp_path: Path, ca: CertificateAuthority, name: str = "ca.pem") -> str:
    path = tmp_path / name
    path.write_bytes(ca.cert_pem)
    return str(path)


def idp_config(idp: HttpsIdp, **issuer: Any) -> Config:
    entry = {
        "issuer": idp.issuer,
        "discovery": True,
        "audience": ["temporal"],
        "permissionsClaim": "permissions",
        **issuer,
    }
    return parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {"claimMapper": "idp", "idp": {"issuers": [entry]}},
        }
    )


def build(cfg: Config, log: Log) -> Any:
    return build_key_provider(cfg, ProxyMetrics(CollectorRegistry(), method_names=()), log)


def token(issuer: str, *permissions: str) -> str:
    payload = {
        "iss": issuer,
        "aud": "temporal",
        "sub": "svc",
        "exp": int(time.time()) + 300,
        "permissions": list(permissions),
    }
    return "Bearer " + pyjwt.encode(payload, rsa_key("trust-idp"), "RS256", {"kid": KID})


async def test_discovery_and_jwks_over_https_with_the_issuers_private_ca(
    idp: HttpsIdp, ca: CertificateAuthority, tmp_path: Path
) -> None:
    log = Log()
    cfg = idp_config(idp, rootCaFiles=[ca_file(tmp_path, ca)])
    keys = build(cfg, log)
    assert await keys.refresh(), log.events
    assert idp.count(REALM + "/.well-known/openid-configuration") == 1
    assert idp.count(REALM + "/certs") == 1
    mapper = build_claim_mapper(cfg, keys, log)
    claims = await mapper.get_claims(AuthInfo(token=token(idp.issuer, "default:write")))
    assert claims.namespaces == {"default": Role.WRITER}


async def test_root_ca_data_works_like_the_file(idp: HttpsIdp, ca: CertificateAuthority) -> None:
    data = base64.b64encode(ca.cert_pem).decode()
    keys = build(idp_config(idp, rootCaData=[data]), Log())
    assert await keys.refresh()


async def test_without_the_ca_the_system_roots_refuse_the_idp(idp: HttpsIdp) -> None:
    log = Log()
    keys = build(idp_config(idp), log)
    assert not await keys.refresh()
    (failed,) = log.named("jwks_refresh_failed")
    assert "CERTIFICATE_VERIFY_FAILED" in failed["error"]
    assert failed["uri"] == idp.discovery_uri
    (issuer,) = keys.issuers
    assert issuer.last_error == failed["error"]
    assert idp.count(REALM + "/certs") == 0


async def test_another_ca_does_not_verify_the_idp(
    idp: HttpsIdp, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    log = Log()
    keys = build(idp_config(idp, rootCaFiles=[ca_file(tmp_path, other_ca)]), log)
    assert not await keys.refresh()
    assert "CERTIFICATE_VERIFY_FAILED" in log.named("jwks_refresh_failed")[0]["error"]


async def test_the_private_ca_replaces_the_system_roots_and_checks_the_host_name(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    # A certificate from the right CA, but for another name than the one we connect to.
    server = HttpsIdp(ca, tmp_path, keys=[], dns_names=("idp.other.test",), ip_addresses=())
    try:
        log = Log()
        keys = build(idp_config(server, rootCaFiles=[ca_file(tmp_path, ca)]), log)
        assert not await keys.refresh()
        error = log.named("jwks_refresh_failed")[0]["error"]
        assert "CERTIFICATE_VERIFY_FAILED" in error and "127.0.0.1" in error
    finally:
        server.close()
    context = CaTrust(files=[ca_file(tmp_path, ca)], path="x").context()
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("organizationName", "temporal-auth-proxy dev"),), (("commonName", "private IdP CA"),))
    ]


async def test_jwt_key_provider_with_a_private_ca(
    idp: HttpsIdp, ca: CertificateAuthority, tmp_path: Path
) -> None:
    def provider(**extra: Any) -> JwksKeyProvider:
        cfg = parse_config(
            {
                "upstream": {"address": "127.0.0.1:7233"},
                "authorization": {
                    "jwtKeyProvider": {"keySourceURIs": [idp.jwks_uri], **extra},
                },
            }
        )
        keys = build(cfg, log)
        assert isinstance(keys, JwksKeyProvider)
        return keys

    log = Log()
    without = provider()
    assert not await without.refresh()
    assert "CERTIFICATE_VERIFY_FAILED" in (without.last_error or "")
    with_ca = provider(rootCaFiles=[ca_file(tmp_path, ca)])
    assert await with_ca.refresh()
    assert with_ca.key_count == 1 and with_ca.last_error is None


async def test_a_rotated_ca_file_counts_from_the_next_fetch(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    # cert-manager rotates the IdP onto a new CA; the mounted CA file follows.
    old_server = HttpsIdp(ca, tmp_path / "old", keys=[rsa_jwk(rsa_key("trust-idp"), KID)])
    new_server = HttpsIdp(other_ca, tmp_path / "new", keys=[rsa_jwk(rsa_key("trust-idp"), KID)])
    try:
        mount = SecretMount(tmp_path / "mount", {"ca.crt": ca.cert_pem})
        log = Log()
        trust = CaTrust(files=[mount.path("ca.crt")], path="p", logger=log)
        old = IssuerKeys(old_server.issuer, jwks_uri=old_server.jwks_uri, trust=trust, logger=log)
        new = IssuerKeys(new_server.issuer, jwks_uri=new_server.jwks_uri, trust=trust, logger=log)
        assert await old.refresh()
        assert not await new.refresh()
        first = trust.context()
        assert trust.context() is first  # unchanged bytes: the same context
        mount.update({"ca.crt": other_ca.cert_pem})
        assert await new.refresh()
        assert not await old.refresh()
        # A rotated file that does not parse keeps the last good CAs, and says so.
        mount.update({"ca.crt": b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"})
        assert await new.refresh()
        (warning, *_) = log.named("key_source_ca_reload_failed")
        assert warning["path"] == "p.rootCaFiles[0]"
    finally:
        old_server.close()
        new_server.close()


async def test_https_never_redirects_to_http(
    idp: HttpsIdp, ca: CertificateAuthority, tmp_path: Path
) -> None:
    trust = CaTrust(files=[ca_file(tmp_path, ca)], path="p")
    log = Log()
    down = IssuerKeys(idp.issuer, jwks_uri=idp.url + "/redirect-http", trust=trust, logger=log)
    assert not await down.refresh()
    assert "refused redirect from https to http" in (down.last_error or "")
    assert idp.count(REALM + "/certs") == 0
    # Redirects within https are followed and verified against the same CA.
    same = IssuerKeys(idp.issuer, jwks_uri=idp.url + "/redirect-https", trust=trust, logger=log)
    assert await same.refresh()
    assert idp.count(REALM + "/certs") == 1


# ------------------------------------------------------------------ startup validation


def raw_issuer(**issuer: Any) -> dict[str, Any]:
    entry = {
        "issuer": "https://sso.example.test/realms/prod",
        "discovery": True,
        "audience": ["temporal"],
        "permissionsClaim": "permissions",
        **issuer,
    }
    return {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"claimMapper": "idp", "idp": {"issuers": [entry]}},
    }


def startup_error(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        build(parse_config(raw), Log())
    return exc.value


def test_a_missing_ca_file_fails_startup_with_its_key_path(tmp_path: Path) -> None:
    err = startup_error(raw_issuer(rootCaFiles=[str(tmp_path / "absent.pem")]))
    assert err.path == "authorization.idp.issuers[0].rootCaFiles[0]"
    assert "file not found" in err.message


def test_check_config_reports_a_missing_ca_file_with_its_key_path(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    raw = raw_issuer(rootCaFiles=[str(tmp_path / "absent.pem")])
    raw["authorization"]["authorizer"] = "default"
    config.write_text(json.dumps(raw))  # JSON is YAML
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "authorization.idp.issuers[0].rootCaFiles[0]: file not found" in r.stderr


def test_a_ca_file_that_is_not_pem_fails_startup(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    err = startup_error(raw_issuer(rootCaFiles=[str(bad)]))
    assert err.path == "authorization.idp.issuers[0].rootCaFiles[0]"
    err = startup_error(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {
                "jwtKeyProvider": {
                    "keySourceURIs": ["https://idp.test/jwks"],
                    "rootCaFiles": [str(tmp_path / "absent.pem")],
                }
            },
        }
    )
    assert err.path == "authorization.jwtKeyProvider.rootCaFiles[0]"


@pytest.mark.parametrize(
    ("issuer", "path", "message"),
    [
        (
            {"rootCaFiles": ["/a.pem"], "rootCaData": [base64.b64encode(b"-----BEGIN x").decode()]},
            "authorization.idp.issuers[0].rootCaFiles",
            "cannot specify both",
        ),
        (
            {"discovery": False, "jwksUri": "http://idp.test/certs", "rootCaFiles": ["/a.pem"]},
            "authorization.idp.issuers[0].rootCaFiles",
            "applies to https key sources",
        ),
        ({"rootCaData": ["bm90IHBlbQ=="]}, "authorization.idp.issuers[0].rootCaData[0]", "PEM"),
        ({"rootCaFiles": [""]}, "authorization.idp.issuers[0].rootCaFiles[0]", "empty"),
    ],
)
def test_ca_settings_are_checked_when_the_config_is_parsed(
    issuer: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw_issuer(**issuer))
    assert exc.value.path == path
    assert message in exc.value.message


def test_a_ca_for_a_jwt_key_provider_without_https_sources_is_an_error() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {
                "upstream": {"address": "127.0.0.1:7233"},
                "authorization": {
                    "jwtKeyProvider": {
                        "keySourceURIs": ["file:///etc/jwks.json"],
                        "rootCaFiles": ["/ca.pem"],
                    }
                },
            }
        )
    assert exc.value.path == "authorization.jwtKeyProvider.rootCaFiles"
    assert "applies to https key sources" in exc.value.message
