"""Issue 7, end to end: identity without code against the real dev server.

Client certificates carrying SPIFFE URIs and DNS SANs (issued by the run's CA) reach exactly
their namespaces (`default`, `other`); the system worker's certificate is temporal-system:admin
and a cluster-scope call works; the chain requires certificate and token; an IdP found by OIDC
discovery on a loopback HTTP server vouches for Keycloak-shaped tokens.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
import pytest
from temporalio.service import RPCError, RPCStatusCode

from tests.e2e import sdk
from tests.e2e.rig import Pki, ProxyProcess, cli, jwt_authorization, sample
from tests.e2e.workflows import GreetingWorkflow
from tests.jwt_helpers import rsa_jwk, rsa_key

SPIFFE_RULE = "spiffe://e2e.test/ns/*/sa/worker-*"
CERT_RULES = [
    {"spiffeId": SPIFFE_RULE, "grants": ["{1}:write", "{1}:worker"]},
    {"dnsName": "*.readers.e2e.test", "grants": ["{1}:read"]},
    {"dnsName": "system-worker.e2e.test", "grants": ["temporal-system:admin"]},
]
DECISIONS = "temporal_auth_proxy_authz_decisions_total"


def issue(pki: Pki, name: str, **kw: Any) -> str:
    """A client certificate from the run's CA, registered under `name` for cli()/sdk."""
    if f"{name}.pem" not in pki.files:
        cert = pki.ca.issue(name, client=True, **kw)
        cert_path, key_path = cert.write(pki.dir, name)
        pki.files[f"{name}.pem"] = str(cert_path)
        pki.files[f"{name}.key"] = str(key_path)
    return name


@pytest.fixture
def cert_proxy(start_proxy: Any, pki: Pki) -> ProxyProcess:
    proxy: ProxyProcess = start_proxy(
        {
            "authorization": {
                "authorizer": "default",
                "claimMapper": "cert",
                "certificateRules": CERT_RULES,
            }
        }
    )
    return proxy


def start_args(wf_id: str, namespace: str) -> tuple[str, ...]:
    return (
        "workflow",
        "start",
        "--type",
        "Nothing",
        "--task-queue",
        "nowhere",
        "--workflow-id",
        wf_id,
        "--namespace",
        namespace,
    )


async def test_spiffe_worker_runs_a_workflow_in_its_namespace_only(
    cert_proxy: ProxyProcess, pki: Pki
) -> None:
    cert = issue(pki, "spiffe-other", uris=("spiffe://e2e.test/ns/other/sa/worker-1",))
    client = await sdk.connect(pki, cert_proxy.address, namespace="other", cert=cert)
    assert await sdk.run_greeting(client, "spiffe") == "Hello, spiffe!"
    elsewhere = await sdk.connect(pki, cert_proxy.address, namespace="default", cert=cert)
    with pytest.raises(RPCError) as caught:
        await elsewhere.start_workflow(
            GreetingWorkflow.run, "x", id=f"wf-{uuid.uuid4().hex[:8]}", task_queue="nowhere"
        )
    assert caught.value.status == RPCStatusCode.PERMISSION_DENIED
    metrics = cert_proxy.metrics()
    assert (sample(metrics, DECISIONS, decision="allow", auth_type="cert") or 0) > 0
    assert (sample(metrics, DECISIONS, decision="deny", reason="insufficient_role") or 0) >= 1


def test_the_rigs_client_certificate_reaches_default_by_its_spiffe_id(
    cert_proxy: ProxyProcess, pki: Pki
) -> None:
    # tests/e2e/rig.py issues `client` with spiffe://e2e.test/ns/default/sa/worker-a.
    wf_id = f"cert-{uuid.uuid4().hex[:8]}"
    assert cli(pki, cert_proxy.address, *start_args(wf_id, "default")).returncode == 0
    denied = cli(pki, cert_proxy.address, *start_args(wf_id, "other"))
    assert denied.returncode != 0 and "unauthorized" in (denied.stderr + denied.stdout).lower()


def test_dns_san_grants_read_on_the_namespace_it_names(cert_proxy: ProxyProcess, pki: Pki) -> None:
    cert = issue(pki, "reader-default", dns_names=("default.readers.e2e.test",))
    listed = cli(pki, cert_proxy.address, "workflow", "list", "--namespace", "default", cert=cert)
    assert listed.returncode == 0, listed.stderr
    wf_id = f"dns-{uuid.uuid4().hex[:8]}"
    assert cli(pki, cert_proxy.address, *start_args(wf_id, "default"), cert=cert).returncode != 0
    other = cli(pki, cert_proxy.address, "workflow", "list", "--namespace", "other", cert=cert)
    assert other.returncode != 0


def test_system_worker_certificate_is_cluster_admin(cert_proxy: ProxyProcess, pki: Pki) -> None:
    system = issue(pki, "system-worker", dns_names=("system-worker.e2e.test",))
    clusters = cli(pki, cert_proxy.address, "operator", "cluster", "list", cert=system)
    assert clusters.returncode == 0, clusters.stderr
    # System admin applies to every namespace, too.
    listed = cli(pki, cert_proxy.address, "workflow", "list", "--namespace", "other", cert=system)
    assert listed.returncode == 0, listed.stderr
    # A namespace worker's certificate is not.
    cert = issue(pki, "spiffe-other", uris=("spiffe://e2e.test/ns/other/sa/worker-1",))
    assert cli(pki, cert_proxy.address, "operator", "cluster", "list", cert=cert).returncode != 0


def test_chain_cert_and_jwt_requires_both(start_proxy: Any, pki: Pki) -> None:
    auth = jwt_authorization(pki)
    auth.update(
        {
            "claimMapper": "chain",
            "chain": {"mode": "cert-and-jwt", "members": ["cert", "jwt"]},
            "certificateRules": CERT_RULES,
        }
    )
    proxy = start_proxy({"authorization": auth})
    cert = issue(pki, "reader-default", dns_names=("default.readers.e2e.test",))
    args = ("workflow", "list", "--namespace", "other")
    assert cli(pki, proxy.address, *args, cert=cert).returncode != 0  # certificate alone
    token = pki.token("other:read")
    listed = cli(pki, proxy.address, *args, cert=cert, token=token)
    assert listed.returncode == 0, listed.stderr
    # The certificate's own grant (read on default) adds to the token's.
    assert (
        cli(
            pki, proxy.address, "workflow", "list", "--namespace", "default", cert=cert, token=token
        )
    ).returncode == 0
    metrics = proxy.metrics()
    assert (sample(metrics, DECISIONS, decision="deny", reason="token_required") or 0) >= 1


# ------------------------------------------------------------------------ IdP by discovery


@pytest.fixture
def oidc() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"keys": [rsa_jwk(rsa_key("e2e-idp"), "kc-1")], "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["hits"] += 1
            if self.path == "/realms/prod/.well-known/openid-configuration":
                doc = {"issuer": state["issuer"], "jwks_uri": state["issuer"] + "/certs"}
            elif self.path == "/realms/prod/certs":
                doc = {"keys": state["keys"]}
            else:
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["issuer"] = f"http://127.0.0.1:{httpd.server_address[1]}/realms/prod"
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def keycloak_token(issuer: str, key: str, kid: str, *roles: str) -> str:
    now = int(time.time())
    payload = {
        "iss": issuer,
        "aud": ["temporal-proxy", "account"],
        "sub": "0f7c2a6e-0000-4000-8000-000000000042",
        "azp": "temporal-cli",
        "exp": now + 300,
        "iat": now,
        "realm_access": {"roles": ["offline_access", *roles]},
        "resource_access": {"temporal-proxy": {"roles": ["other-writer"]}},
    }
    return pyjwt.encode(payload, rsa_key(key), "RS256", {"kid": kid})


def test_idp_tokens_found_by_discovery_and_rotated_keys(
    start_proxy: Any, pki: Pki, oidc: dict[str, Any]
) -> None:
    proxy = start_proxy(
        {
            "authorization": {
                "authorizer": "default",
                "claimMapper": "idp",
                "idp": {
                    "issuers": [
                        {
                            "issuer": oidc["issuer"],
                            "discovery": True,
                            "audience": ["temporal-proxy"],
                            "subjectClaim": "azp",
                            "refetchInterval": "1m",
                            "roleClaims": [
                                {
                                    "path": "realm_access.roles",
                                    "map": {"temporal-readers": ["default:read"]},
                                },
                                {
                                    "path": "resource_access.temporal-proxy.roles",
                                    "map": {"*-writer": ["{1}:write"]},
                                },
                            ],
                        }
                    ]
                },
            }
        }
    )
    token = keycloak_token(oidc["issuer"], "e2e-idp", "kc-1", "temporal-readers")
    listed = cli(pki, proxy.address, "workflow", "list", "--namespace", "default", token=token)
    assert listed.returncode == 0, listed.stderr
    wf_id = f"idp-{uuid.uuid4().hex[:8]}"
    started = cli(pki, proxy.address, *start_args(wf_id, "other"), token=token)
    assert started.returncode == 0, started.stderr
    assert cli(pki, proxy.address, *start_args(wf_id, "default"), token=token).returncode != 0
    # The IdP rotates to a new key; the first token naming it triggers one refetch.
    oidc["keys"] = [*oidc["keys"], rsa_jwk(rsa_key("e2e-idp-2"), "kc-2")]
    hits = oidc["hits"]
    rotated = keycloak_token(oidc["issuer"], "e2e-idp-2", "kc-2", "temporal-readers")
    listed = cli(pki, proxy.address, "workflow", "list", "--namespace", "default", token=rotated)
    assert listed.returncode == 0, listed.stderr
    assert oidc["hits"] == hits + 2  # discovery + JWKS, once
