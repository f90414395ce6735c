"""Issue 8: `temporal-auth-proxy explain` (proxy/explain.py and cli.cmd_explain), offline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import methods
from proxy.config.parse import load_config
from proxy.config.schema import Config
from proxy.dev.pki import (
    CertificateAuthority,
    generate_key,
    jwk_from_public_key,
    mint_token,
    private_key_pem,
)
from proxy.errors import ConfigError
from proxy.explain import Explanation, explain, render, resolve_method
from proxy.model import Claims, Role
from tests.https_idp import HttpsIdp

WS = methods.WORKFLOW_SERVICE_PREFIX
OS = methods.OPERATOR_SERVICE_PREFIX
AS = methods.ADMIN_SERVICE_PREFIX
KID = "explain-1"


@dataclass
class Setup:
    dir: Path
    key_pem: bytes
    client_pem: bytes
    config_path: Path

    def token(self, *perms: str, subject: str = "alice", ttl: int = 3600) -> str:
        return mint_token(
            self.key_pem, kid=KID, subject=subject, permissions=perms, ttl_seconds=ttl
        )

    def config(self, *, tls: Any = ..., **authorization: Any) -> Config:
        raw = yaml.safe_load(self.config_path.read_text())
        raw["authorization"].update(authorization)
        if tls is None:
            del raw["tls"]
        path = self.dir / f"config-{len(list(self.dir.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    d = tmp_path_factory.mktemp("explain")
    key = generate_key("rsa")
    jwks = d / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk_from_public_key(key.public_key(), KID, "RS256")]}))
    ca = CertificateAuthority.create("explain CA")
    (d / "ca.pem").write_bytes(ca.cert_pem)
    server = ca.issue("proxy.test", dns_names=("proxy.test",), server=True)
    server.write(d, "server")
    client = ca.issue(
        "worker-a", dns_names=("worker-a.test",), uris=("spiffe://t/ns/default/sa/a",), client=True
    )
    client.write(d, "client")
    cfg = {
        "upstream": {"address": "127.0.0.1:1"},
        "tls": {
            "frontend": {
                "server": {
                    "certFile": str(d / "server.pem"),
                    "keyFile": str(d / "server.key"),
                    "clientCaFiles": [str(d / "ca.pem")],
                    "requireClientAuth": True,
                }
            }
        },
        "authorization": {
            "authorizer": "default",
            "claimMapper": "default",
            "jwtKeyProvider": {"keySourceURIs": [jwks.as_uri()]},
        },
    }
    path = d / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Setup(dir=d, key_pem=private_key_pem(key), client_pem=client.cert_pem, config_path=path)


@pytest.fixture(scope="module")
def cfg(setup: Setup) -> Config:
    return load_config(setup.config_path)


# ------------------------------------------------------------------------------ resolve_method


@pytest.mark.parametrize(
    ("name", "full"),
    [
        ("StartWorkflowExecution", WS + "StartWorkflowExecution"),
        ("GetSystemInfo", WS + "GetSystemInfo"),
        ("ListClusters", OS + "ListClusters"),  # WorkflowService, then OperatorService
        ("AddSearchAttributes", OS + "AddSearchAttributes"),
        ("DescribeMutableState", AS + "DescribeMutableState"),
        ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check"),
        (WS + "DescribeNamespace", WS + "DescribeNamespace"),
        (AS + "ListClusters", AS + "ListClusters"),
    ],
)
def test_resolve_method(name: str, full: str) -> None:
    info = resolve_method(name)
    assert info.full_name == full
    assert info == methods.lookup(full)


@pytest.mark.parametrize(
    "name",
    [
        WS + "NoSuchMethod",
        OS + "NoSuchMethod",
        "/temporal.api.nexusservice.v1.NexusService/StartNexusOperation",
        "/some.Other/Method",
    ],
)
def test_resolve_method_refuses_unknown_full_names(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_method(name)
    assert "--method" in str(exc.value)


@pytest.mark.parametrize("name", ["NoSuchMethod", "StartWorkflowExecutoin", ""])
def test_resolve_method_refuses_unknown_short_names(name: str) -> None:
    with pytest.raises(ConfigError):
        resolve_method(name)


def test_resolve_method_short_health_check() -> None:
    assert resolve_method("Check").full_name == "/grpc.health.v1.Health/Check"


# ------------------------------------------------------------------------------- explain()


async def run(cfg: Config, method: str, namespace: str = "default", **kw: Any) -> Explanation:
    return await explain(cfg, method=method, namespace=namespace, **kw)


async def test_reader_allowed_to_describe(cfg: Config, setup: Setup) -> None:
    e = await run(cfg, "DescribeNamespace", token=setup.token("default:read"))
    assert (e.decision, e.reason, e.allowed) == ("allow", "allowed", True)
    assert (e.scope, e.access, e.required_role, e.namespace) == ("namespace", "read", 2, "default")
    assert e.claims is not None and e.claims.subject == "alice"
    assert e.rule == "namespace-scope read: system 0 | namespace['default'] 2 = 2 >= 2"


async def test_reader_denied_a_write_and_another_namespace(cfg: Config, setup: Setup) -> None:
    token = setup.token("default:read")
    e = await run(cfg, "StartWorkflowExecution", token=token)
    assert (e.decision, e.reason, e.required_role) == ("deny", "insufficient_role", 4)
    assert e.rule.endswith("= 2 < 4")
    e = await run(cfg, "DescribeNamespace", "other", token=token)
    assert (e.decision, e.reason) == ("deny", "insufficient_role")
    assert "namespace['other'] 0 = 0 < 2" in e.rule


async def test_namespace_admin_is_not_a_cluster_admin(cfg: Config, setup: Setup) -> None:
    token = setup.token("default:admin")
    assert (await run(cfg, "UpdateNamespace", token=token)).allowed
    e = await run(cfg, "ListNamespaces", token=token)
    assert (e.scope, e.decision) == ("cluster", "deny")
    assert e.rule == "cluster-scope read: system role 0 < 2"


async def test_system_admin(cfg: Config, setup: Setup) -> None:
    token = setup.token("temporal-system:admin")
    for method in ("ListNamespaces", "UpdateNamespace", "StartWorkflowExecution", "ListClusters"):
        e = await run(cfg, method, "anything", token=token)
        assert e.allowed, method
    e = await run(cfg, "ListNamespaces", token=token)
    assert e.rule == "cluster-scope read: system role 8 >= 2"
    assert e.namespace == ""  # cluster scope: no namespace field


async def test_token_with_or_without_bearer(cfg: Config, setup: Setup) -> None:
    token = setup.token("default:write")
    a = await run(cfg, "StartWorkflowExecution", token=token)
    b = await run(cfg, "StartWorkflowExecution", token="Bearer " + token)
    assert a.as_dict() == b.as_dict()
    assert a.allowed


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("garbage", "bad_token_format"),
        ("a.b.c", "bad_token_format"),
        (
            mint_token(
                private_key_pem(generate_key("rsa")), kid="nope", subject="x", permissions=()
            ),
            "unknown_key",
        ),
    ],
)
async def test_bad_tokens_are_denied_with_the_real_reason(
    cfg: Config, token: str, reason: str
) -> None:
    e = await run(cfg, "DescribeNamespace", token=token)
    assert (e.decision, e.reason) == ("deny", reason)
    assert e.claims is None
    assert e.rule == f"credentials refused ({reason})"
    assert e.details and e.details[0].startswith("claims_failed")


async def test_expired_token(cfg: Config, setup: Setup) -> None:
    e = await run(cfg, "DescribeNamespace", token=setup.token("default:read", ttl=-120))
    assert (e.decision, e.reason) == ("deny", "token_expired")


async def test_no_credentials_without_client_certificates(setup: Setup) -> None:
    cfg = setup.config(tls=None)  # no mTLS: a caller may come with no credentials at all
    e = await run(cfg, "DescribeNamespace")
    assert (e.decision, e.reason) == ("deny", "no_credentials")
    assert "anonymous" in e.rule
    health = await run(cfg, "GetSystemInfo")
    assert (health.decision, health.reason) == ("allow", "health_check")
    assert "always allowed" in health.rule


async def test_certificate_without_token_maps_to_empty_claims(cfg: Config, setup: Setup) -> None:
    e = await run(cfg, "DescribeNamespace", cert_pem=setup.client_pem)
    assert (e.decision, e.reason) == ("deny", "insufficient_role")
    assert e.claims is not None and e.claims.subject == ""
    e = await run(
        cfg, "DescribeNamespace", cert_pem=setup.client_pem, token=setup.token("default:read")
    )
    assert e.allowed


async def test_no_token_under_require_client_auth_is_explained_as_the_proxy_decides(
    cfg: Config,
) -> None:
    assert cfg.tls.frontend.server.require_client_auth
    e = await run(cfg, "DescribeNamespace")
    assert (e.decision, e.reason) == ("deny", "insufficient_role")
    assert e.claims is not None


async def test_cert_that_is_not_a_certificate_is_an_error(cfg: Config) -> None:
    with pytest.raises(ConfigError):
        await run(cfg, "DescribeNamespace", cert_pem=b"-----BEGIN CERTIFICATE-----\nxx\n")


async def test_shadow_mode_is_explained_as_enforce(setup: Setup) -> None:
    cfg = setup.config(mode="shadow")
    e = await run(cfg, "StartWorkflowExecution", token=setup.token("default:read"))
    assert e.decision == "deny"


async def test_filter_list_namespaces_is_explained(setup: Setup) -> None:
    cfg = setup.config(filterListNamespaces=True)
    reader = setup.token("default:read")
    e = await run(cfg, "ListNamespaces", token=reader)
    assert e.decision == "allow"
    worker = setup.token("default:worker")
    assert (await run(cfg, "ListNamespaces", token=worker)).decision == "deny"


@pytest.mark.parametrize(
    "method", ["DeleteNamespace", "DescribeNamespace", "RespondActivityTaskCompleted"]
)
async def test_a_permission_on_the_empty_namespace_is_shown_as_ignored(
    cfg: Config, setup: Setup, method: str
) -> None:
    # Issue 14: `:admin` would be admin on "" in Temporal; by-id and task-token calls use "".
    e = await run(cfg, method, "", token=setup.token(":admin", "default:read"))
    assert (e.decision, e.reason) == ("deny", "insufficient_role")
    assert e.claims is not None and dict(e.claims.namespaces) == {"default": 2}
    assert e.rule.startswith(f"namespace-scope {e.access}: no namespace (by id or task token)")
    assert e.rule.endswith(f"the system role only: 0 < {e.required_role}")
    assert e.details == ["permission_ignored: ignoring permission on the empty namespace: ':admin'"]
    assert "ignoring permission on the empty namespace" in e.as_text()
    e = await run(cfg, method, "", token=setup.token("temporal-system:admin"))
    assert e.allowed and e.rule.endswith(f"the system role only: 8 >= {e.required_role}")


def test_a_plugins_role_on_the_empty_namespace_is_shown_as_ignored() -> None:
    claims = Claims.build(subject="p", namespaces={"": Role.ADMIN, "default": Role.READER})
    e = Explanation(
        method=WS + "DescribeNamespace",
        scope="namespace",
        access="read",
        required_role=2,
        namespace="",
        claims=claims,
        decision="deny",
        reason="insufficient_role",
        rule="",
    )
    text = e.as_text()
    assert "ns role:   '' = 8 (admin, ignored: the empty namespace grants nothing)" in text
    assert "ns role:   'default' = 2 (reader)" in text


async def test_noop_authorizer(setup: Setup) -> None:
    cfg = setup.config(authorizer="noop", claimMapper="noop")
    e = await run(cfg, "UpdateNamespace")
    assert (e.decision, e.reason) == ("allow", "noop")
    assert e.rule == "the noop authorizer allows every call"


async def test_unreachable_key_source_is_an_error(setup: Setup) -> None:
    missing = (setup.dir / "missing-jwks.json").as_uri()
    cfg = setup.config(jwtKeyProvider={"keySourceURIs": [missing]})
    with pytest.raises(ConfigError) as exc:
        await run(cfg, "DescribeNamespace", token=setup.token("default:read"))
    assert "keySourceURIs" in str(exc.value)


async def test_long_namespace_names(cfg: Config, setup: Setup) -> None:
    ns = "n" * 200
    e = await run(cfg, "DescribeNamespace", ns, token=setup.token(f"{ns}:read"))
    assert e.allowed and e.namespace == ns


async def test_render_json_and_text(cfg: Config, setup: Setup) -> None:
    e = await run(cfg, "DescribeNamespace", token=setup.token("default:read", "other:worker"))
    body = json.loads(render(e, as_json=True))
    assert body == {
        "method": WS + "DescribeNamespace",
        "scope": "namespace",
        "access": "read",
        "required_role": 2,
        "namespace": "default",
        "claims": {
            "subject": "alice",
            "auth_type": "jwt",
            "system": 0,
            "namespaces": {"default": 2, "other": 1},
        },
        "decision": "allow",
        "reason": "allowed",
        "rule": "namespace-scope read: system 0 | namespace['default'] 2 = 2 >= 2",
        "details": [],
        "key_failures": [],
    }
    text = render(e, as_json=False)
    assert "decision:  ALLOW (allowed)" in text
    assert "requires:  role >= 2 (reader)" in text
    assert "ns role:   'other' = 1 (worker)" in text
    plain = setup.config(tls=None)
    anonymous = render(await run(plain, "DescribeNamespace"), as_json=False)
    assert "claims:    none (anonymous)" in anonymous
    assert "DENY (no_credentials)" in anonymous


# --------------------------------------------------------------------- the CLI, exit codes


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "explain", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exit_codes(setup: Setup, tmp_path: Path) -> None:
    config = str(setup.config_path)
    token_file = tmp_path / "token"
    token_file.write_text(setup.token("default:read") + "\n")
    ok = cli(
        "--config",
        config,
        "--token-file",
        str(token_file),
        "--method",
        "DescribeNamespace",
        "--namespace",
        "default",
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["decision"] == "allow"
    deny = cli(
        "--config",
        config,
        "--token-file",
        str(token_file),
        "--method",
        "StartWorkflowExecution",
        "--namespace",
        "default",
    )
    assert deny.returncode == 1, deny.stderr
    assert "DENY (insufficient_role)" in deny.stdout
    assert setup.token("default:read").split(".")[2] not in deny.stdout + deny.stderr
    cert_file = tmp_path / "client.pem"
    cert_file.write_bytes(setup.client_pem)
    cert = cli(
        "--config",
        config,
        "--cert",
        str(cert_file),
        "--method",
        "DescribeNamespace",
        "--namespace",
        "default",
        "--json",
    )
    assert cert.returncode == 1
    assert json.loads(cert.stdout)["reason"] == "insufficient_role"


@pytest.mark.parametrize(
    "args",
    [
        ("--method", WS + "NoSuchMethod", "--namespace", "default"),
        ("--method", "DescribeNamespace", "--token-file", "/nonexistent/token"),
        ("--method", "DescribeNamespace", "--cert", "/nonexistent/cert.pem"),
    ],
)
def test_cli_errors_exit_2(setup: Setup, args: tuple[str, ...]) -> None:
    r = cli("--config", str(setup.config_path), *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "explain:" in r.stderr


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: {address: 127.0.0.1:1}\nbogusSection: {}\n")
    r = cli("--config", str(bad), "--method", "DescribeNamespace")
    assert r.returncode == 2
    assert "bogusSection" in r.stderr
    r = cli("--config", str(tmp_path / "missing.yaml"), "--method", "DescribeNamespace")
    assert r.returncode == 2


# --------------------------------------- one issuer's keys cannot be loaded (issue 16 item 10)

HEALTHY = "https://healthy.example.test"


@pytest.fixture
def two_issuers(setup: Setup, tmp_path: Path) -> Iterator[tuple[Path, HttpsIdp]]:
    """A config with a healthy issuer (JWKS from a file URI) and an https one whose private
    CA is not configured, so its keys cannot be loaded."""
    idp = HttpsIdp(CertificateAuthority.create("unconfigured CA"), tmp_path, keys=[])
    raw = yaml.safe_load(setup.config_path.read_text())
    common = {"audience": ["temporal"], "permissionsClaim": "permissions"}
    raw["authorization"] = {
        "authorizer": "default",
        "claimMapper": "idp",
        "idp": {
            "issuers": [
                {"issuer": HEALTHY, "jwksUri": (setup.dir / "jwks.json").as_uri(), **common},
                {"issuer": idp.issuer, "discovery": True, "fetchTimeout": "5s", **common},
            ]
        },
    }
    path = tmp_path / "two-issuers.yaml"
    path.write_text(yaml.safe_dump(raw))
    yield path, idp
    idp.close()


def idp_token(setup: Setup, issuer: str, *perms: str) -> str:
    return mint_token(
        setup.key_pem,
        kid=KID,
        subject="alice",
        permissions=perms,
        audience="temporal",
        extra_claims={"iss": issuer},
    )


def test_a_healthy_issuers_token_is_decided_when_another_issuers_keys_fail(
    setup: Setup, two_issuers: tuple[Path, HttpsIdp]
) -> None:
    path, idp = two_issuers
    args = ("--config", str(path), "--method", "DescribeNamespace", "--namespace", "default")
    allowed = cli(*args, "--token", idp_token(setup, HEALTHY, "default:read"))
    assert allowed.returncode == 0, allowed.stderr
    assert "decision:  ALLOW (allowed)" in allowed.stdout
    failed = [line for line in allowed.stdout.splitlines() if line.startswith("keys:")]
    assert len(failed) == 1, allowed.stdout
    assert "authorization.idp.issuers[1]" in failed[0]
    assert idp.issuer in failed[0] and "CERTIFICATE_VERIFY_FAILED" in failed[0]
    denied = cli(*args, "--token", idp_token(setup, HEALTHY, "other:read"), "--json")
    assert denied.returncode == 1, denied.stderr
    body = json.loads(denied.stdout)
    assert body["reason"] == "insufficient_role"
    assert [f["source"] for f in body["key_failures"]] == ["authorization.idp.issuers[1]"]


def test_a_token_of_the_issuer_whose_keys_failed_cannot_be_decided(
    setup: Setup, two_issuers: tuple[Path, HttpsIdp]
) -> None:
    path, idp = two_issuers
    r = cli(
        "--config",
        str(path),
        "--method",
        "DescribeNamespace",
        "--namespace",
        "default",
        "--token",
        idp_token(setup, idp.issuer, "default:read"),
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "authorization.idp.issuers[1]" in r.stderr
    assert "keys this token needs could not be loaded" in r.stderr


async def test_a_call_that_needs_no_keys_is_decided_when_the_jwks_fails(setup: Setup) -> None:
    missing = (setup.dir / "missing-jwks.json").as_uri()
    cfg = setup.config(jwtKeyProvider={"keySourceURIs": [missing]})
    e = await run(cfg, "DescribeNamespace", cert_pem=setup.client_pem)
    assert (e.decision, e.reason) == ("deny", "insufficient_role")
    (failure,) = e.key_failures
    assert failure["source"] == "authorization.jwtKeyProvider.keySourceURIs"
    assert "No such file" in failure["error"] or "FileNotFoundError" in failure["error"]
