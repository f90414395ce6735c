"""Issue 16 item 10, end to end: an identity provider behind a private CA.

A real https IdP on loopback (discovery + JWKS, certificate from a CA minted for this test and
unknown to the system roots, as an in-cluster Keycloak's is). With the issuer's `rootCaFiles`
the proxy (`serve`) verifies its tokens against the real Temporal dev server; without them, or
with another CA, the fetch fails verification (jwks_refresh_failed) and every token of that
issuer is denied with no_keys. `jwtKeyProvider.rootCaFiles` does the same for Temporal's mapper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

from proxy.dev.pki import CertificateAuthority
from tests.e2e.rig import Pki, ProxyProcess, mtls_channel, sample, wait_until
from tests.https_idp import REALM, HttpsIdp
from tests.jwt_helpers import rsa_jwk, rsa_key

DESCRIBE_NS = "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace"
DESCRIBE_DEFAULT = DescribeNamespaceRequest(namespace="default").SerializeToString()
REFRESH = "temporal_auth_proxy_jwks_refresh_total"
DECISIONS = "temporal_auth_proxy_authz_decisions_total"
KID = "kc-private-1"


@pytest.fixture(scope="module")
def idp_ca() -> CertificateAuthority:
    return CertificateAuthority.create("in-cluster IdP CA")


@pytest.fixture
def idp(idp_ca: CertificateAuthority, tmp_path: Path) -> Iterator[HttpsIdp]:
    server = HttpsIdp(idp_ca, tmp_path, keys=[rsa_jwk(rsa_key("e2e-private-ca"), KID)])
    yield server
    server.close()


def write_ca(directory: Path, ca: CertificateAuthority) -> str:
    path = directory / f"ca-{ca.certificate.serial_number:x}.pem"
    path.write_bytes(ca.cert_pem)
    return str(path)


def idp_overrides(idp: HttpsIdp, **issuer: Any) -> dict[str, Any]:
    return {
        "authorization": {
            "authorizer": "default",
            "claimMapper": "idp",
            "idp": {
                "issuers": [
                    {
                        "issuer": idp.issuer,
                        "discovery": True,
                        "audience": ["temporal-proxy"],
                        "subjectClaim": "azp",
                        "fetchTimeout": "5s",
                        "roleClaims": [
                            {
                                "path": "realm_access.roles",
                                "map": {"temporal-readers": ["default:read"]},
                            }
                        ],
                        **issuer,
                    }
                ]
            },
        }
    }


def keycloak_token(issuer: str) -> str:
    now = int(time.time())
    payload = {
        "iss": issuer,
        "aud": ["temporal-proxy", "account"],
        "sub": "0f7c2a6e-0000-4000-8000-000000000043",
        "azp": "temporal-cli",
        "exp": now + 300,
        "iat": now,
        "realm_access": {"roles": ["temporal-readers"]},
    }
    return pyjwt.encode(payload, rsa_key("e2e-private-ca"), "RS256", {"kid": KID})


def describe(pki: Pki, proxy: ProxyProcess, token: str) -> grpc.StatusCode:
    """DescribeNamespace(default) through the proxy with `token`: the status code."""
    with mtls_channel(pki, proxy.address) as ch:
        try:
            reply = ch.unary_unary(DESCRIBE_NS)(
                DESCRIBE_DEFAULT, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.RpcError as exc:
            assert exc.details() == "Request unauthorized."
            return exc.code()
    assert b"default" in reply
    return grpc.StatusCode.OK


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return sample(proxy.metrics(), name, **labels) or 0.0


def test_an_idp_behind_a_private_ca_verifies_with_the_issuers_ca(
    start_proxy: Any, pki: Pki, idp: HttpsIdp, idp_ca: CertificateAuthority, tmp_path: Path
) -> None:
    proxy = start_proxy(idp_overrides(idp, rootCaFiles=[write_ca(tmp_path, idp_ca)]))
    assert describe(pki, proxy, keycloak_token(idp.issuer)) is grpc.StatusCode.OK
    assert idp.count(REALM + "/.well-known/openid-configuration") >= 1
    assert idp.count(REALM + "/certs") >= 1
    assert metric(proxy, REFRESH, result="success") >= 1
    assert metric(proxy, REFRESH, result="failure") == 0
    assert metric(proxy, DECISIONS, decision="allow", reason="allowed") == 1


@pytest.mark.parametrize("ca", ["none", "another CA"])
def test_without_the_issuers_ca_the_fetch_fails_and_its_tokens_are_denied(
    start_proxy: Any, pki: Pki, idp: HttpsIdp, tmp_path: Path, ca: str
) -> None:
    over: dict[str, Any] = {}
    if ca != "none":
        over["rootCaFiles"] = [write_ca(tmp_path, CertificateAuthority.create("not the IdP's"))]
    proxy = start_proxy(idp_overrides(idp, **over), wait_ready=False)
    wait_until(lambda: metric(proxy, REFRESH, result="failure") >= 1, 15, what="a failed fetch")
    failed = [e for e in proxy.events() if e.get("event") == "jwks_refresh_failed"]
    assert failed and "CERTIFICATE_VERIFY_FAILED" in failed[0]["error"]
    assert failed[0]["uri"] == idp.discovery_uri
    status, body = proxy.get("/readyz")
    assert status == 503 and json.loads(body)["checks"]["jwks"] == "no key set loaded"
    assert idp.count(REALM + "/certs") == 0  # nothing was read past the refused handshake
    token = keycloak_token(idp.issuer)
    assert describe(pki, proxy, token) is grpc.StatusCode.PERMISSION_DENIED
    assert metric(proxy, DECISIONS, decision="deny", reason="no_keys") == 1
    assert metric(proxy, DECISIONS, decision="allow") == 0


def test_jwt_key_provider_over_https_with_a_private_ca(
    start_proxy: Any, pki: Pki, idp_ca: CertificateAuthority, tmp_path: Path
) -> None:
    # Temporal's default mapper, its JWKS on the private-CA https server.
    rig_keys = json.loads(pki.jwks_path.read_text())["keys"]
    server = HttpsIdp(idp_ca, tmp_path, keys=rig_keys)
    try:
        auth = {
            "authorizer": "default",
            "claimMapper": "default",
            "jwtKeyProvider": {
                "keySourceURIs": [server.jwks_uri],
                "refreshInterval": "1m",
                "rootCaFiles": [write_ca(tmp_path, idp_ca)],
            },
        }
        proxy = start_proxy({"authorization": auth})
        assert describe(pki, proxy, pki.token("default:read")) is grpc.StatusCode.OK
        assert describe(pki, proxy, pki.token("other:read")) is grpc.StatusCode.PERMISSION_DENIED
        assert metric(proxy, "temporal_auth_proxy_jwks_keys") == 2
    finally:
        server.close()
