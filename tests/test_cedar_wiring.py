"""Issue 18 wiring: config keys, the builder, claims for policies, reload, metrics, the Gate's
log lines, the Codec Server and `explain` with `authorization.authorizer: cedar`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from temporalio.api.workflowservice.v1 import DeleteScheduleRequest

from proxy import methods
from proxy.app import build
from proxy.authz.cedar import CedarAuthorizer
from proxy.authz.policies import PolicyStore, ReloadOutcome, load_schema
from proxy.authz.policy_build import PolicyReloader, build_cedar_authorizer
from proxy.claims.cert import CertificateClaimMapper, CertificateRule
from proxy.claims.chain import ChainClaimMapper
from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.codec.http import codec_routes
from proxy.codec.payload import KeyRing, PayloadCodec
from proxy.config.parse import parse_config
from proxy.config.schema import Config, CorsConfig
from proxy.dev.pki import generate_key, jwk_from_public_key, mint_token, private_key_pem
from proxy.errors import ConfigError
from proxy.explain import explain, render
from proxy.gate import Gate
from proxy.keys.jwks import StaticKeyProvider
from proxy.metrics import MAX_POLICY_LABELS, NO_POLICY, PolicyMetrics
from proxy.model import AuthInfo, Decision, PeerIdentity
from tests.test_gate import EventLog, method

KID = "k1"
_KEY = generate_key("rsa")
_PEM = private_key_pem(_KEY)
PEER = PeerIdentity(
    subject="CN=w,OU=sre", common_name="w", organizational_units=("sre",), dns_names=("w.test",)
)

POLICIES = """\
@id("roles-decide")
permit(principal, action, resource);

@id("only-sre-deletes-schedules")
forbid(principal, action == Temporal::Action::"DeleteSchedule", resource)
unless { principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("sre") };

@id("payments-decode-support-only")
forbid(principal, action in [Temporal::Action::"Codec/Decode", Temporal::Action::"Codec/Download"],
       resource == Temporal::Namespace::"payments")
unless {
  principal.claims.hasTag("groups") && principal.claims.getTag("groups").contains("support")
};

@id("payments-terminate-payment-ids")
forbid(principal, action == Temporal::Action::"TerminateWorkflowExecution",
       resource == Temporal::Namespace::"payments")
unless { context has workflowId && context.workflowId like "Payment*" };
"""
IDS = (
    "only-sre-deletes-schedules",
    "payments-decode-support-only",
    "payments-terminate-payment-ids",
    "roles-decide",
)


def bearer(*perms: str, subject: str = "alice", groups: tuple[str, ...] = ()) -> str:
    extra = {"groups": list(groups), "email": f"{subject}@example.test", "level": 3}
    token = mint_token(_PEM, kid=KID, subject=subject, permissions=perms, extra_claims=extra)
    return "Bearer " + token


def write(tmp_path: Path, text: str = POLICIES, name: str = "main.cedar") -> Path:
    path = tmp_path / "policies" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def raw_config(tmp_path: Path, **cedar: Any) -> dict[str, Any]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk_from_public_key(_KEY.public_key(), KID, "RS256")]}))
    section: dict[str, Any] = {
        "policyFiles": [str(tmp_path / "policies" / "*.cedar")],
        "tokenClaims": ["groups", "email", "level"],
    }
    section.update(cedar)
    return {
        "upstream": {"address": "127.0.0.1:1"},
        "authorization": {
            "authorizer": "cedar",
            "claimMapper": "default",
            "jwtKeyProvider": {"keySourceURIs": [jwks.as_uri()]},
            "cedar": section,
        },
    }


def config(tmp_path: Path, **cedar: Any) -> Config:
    return parse_config(raw_config(tmp_path, **cedar))


# ----------------------------------------------------------------------------- config


def test_cedar_keys_parse_with_their_defaults(tmp_path: Path) -> None:
    c = config(tmp_path).authorization.cedar
    assert c.policy_files == (str(tmp_path / "policies" / "*.cedar"),)
    assert (c.schema_file, c.combine, c.reload_interval) == ("", "default-and-policy", 5.0)
    assert c.token_claims == ("groups", "email", "level")
    c = config(tmp_path, combine="policy-only", reloadInterval="0s").authorization.cedar
    assert (c.combine, c.reload_interval) == ("policy-only", 0.0)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"cedar": {"policyFiles": []}}, "authorization.cedar.policyFiles"),
        ({"cedar": {"policyFiles": ["a", " "]}}, "authorization.cedar.policyFiles[1]"),
        ({"cedar": {"policyFiles": ["a"], "combine": "or"}}, "authorization.cedar.combine"),
        ({"cedar": {"policyFiles": ["a"], "tokenClaims": ["g", "g"]}}, "tokenClaims"),
        ({"cedar": {"policyFiles": ["a"], "tokenClaims": [" g"]}}, "tokenClaims[0]"),
        ({"cedar": {"policyFiles": ["a"], "reloadInterval": "-1s"}}, "reloadInterval"),
        ({"cedar": {"policyFiles": ["a"]}, "authorizer": "default"}, "authorization.cedar"),
        ({"cedar": {"policyFiles": ["a"], "bogus": 1}}, "authorization.cedar.bogus"),
        # The filtered listing follows roles: it would bypass a policy forbidding ListNamespaces.
        ({"filterListNamespaces": True}, "authorization.filterListNamespaces"),
    ],
)
def test_bad_cedar_config_names_the_key(tmp_path: Path, change: dict[str, Any], path: str) -> None:
    raw = raw_config(tmp_path)
    raw["authorization"].update(change)
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert path in str(exc.value)


@pytest.mark.parametrize(
    ("text", "line", "pid"),
    [
        (
            '@id("ok")\npermit(principal, action, resource);\n\n@id("bad")\npermit(principal,',
            4,
            "bad",
        ),
        (
            "permit(principal, action, resource);\n"
            'forbid(principal, action == Temporal::Action::"NoSuchMethod", resource);\n',
            2,
            "main.cedar#2",
        ),
        (
            'permit(principal, action, resource) when { context.workflowId == "x" };',
            1,
            "main.cedar#1",
        ),
    ],
)
async def test_a_bad_policy_file_fails_the_build_naming_file_line_and_id(
    tmp_path: Path, text: str, line: int, pid: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        build(config(tmp_path), logger=EventLog())
    message = str(exc.value)
    assert "authorization.cedar.policyFiles" in message
    assert f"{path}:{line}" in message
    assert repr(pid) in message


def test_check_config_refuses_a_policy_that_does_not_validate(tmp_path: Path) -> None:
    path = write(tmp_path, 'permit(principal, action == Temporal::Action::"Nope", resource);\n')
    cfg_path = tmp_path / "proxy.yaml"
    cfg_path.write_text(yaml.safe_dump(raw_config(tmp_path)))
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert r.returncode != 0
    assert f"{path}:1" in r.stderr
    assert "main.cedar#1" in r.stderr
    write(tmp_path)  # now valid
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "policyFiles" in r.stdout


# ---------------------------------------------------------------------------- building


async def test_build_wires_policies_metrics_and_reloader(tmp_path: Path) -> None:
    write(tmp_path)
    registry = CollectorRegistry()
    app = build(config(tmp_path), logger=EventLog(), registry=registry)
    assert app.policies is not None
    assert app.policies.store.current.generation == 1
    assert registry.get_sample_value("temporal_auth_proxy_policies") == 4
    for pid in IDS:  # every loaded id has its series, at 0
        for decision in ("allow", "deny"):
            labels = {"decision": decision, "policy": pid}
            value = registry.get_sample_value("temporal_auth_proxy_policy_decisions_total", labels)
            assert value == 0


async def test_without_cedar_there_are_no_policy_parts(tmp_path: Path) -> None:
    raw = raw_config(tmp_path)
    raw["authorization"]["authorizer"] = "default"
    del raw["authorization"]["cedar"]
    registry = CollectorRegistry()
    app = build(parse_config(raw), logger=EventLog(), registry=registry)
    assert app.policies is None
    assert registry.get_sample_value("temporal_auth_proxy_policies") is None


# ---------------------------------------------------------------------- claims for policies


async def test_jwt_mapper_fills_token_claims_and_the_peer_only_when_asked() -> None:
    keys = StaticKeyProvider({KID: _KEY.public_key()})
    token = bearer("ns:read", groups=("sre", "oncall"))
    plain = await DefaultJWTClaimMapper(keys).get_claims(AuthInfo(token=token, peer=PEER))
    assert dict(plain.token_claims) == {} and plain.peer is None
    mapper = DefaultJWTClaimMapper(
        keys, token_claims=("groups", "email", "level"), attach_peer=True
    )
    claims = await mapper.get_claims(AuthInfo(token=token, peer=PEER))
    # A number claim is left out (absent for policies, never a guess).
    assert dict(claims.token_claims) == {
        "groups": ("sre", "oncall"),
        "email": ("alice@example.test",),
    }
    assert claims.peer == PEER
    # The same object on the next call: policy caches key on it.
    assert await mapper.get_claims(AuthInfo(token=token, peer=PEER)) is claims
    no_peer = await mapper.get_claims(AuthInfo(token=token))
    assert no_peer.peer is None and no_peer.token_claims == claims.token_claims


async def test_cert_and_chain_mappers_carry_the_certificate_for_policies() -> None:
    rule = CertificateRule.build({"organizational_unit": "sre"}, ["ns:write"])
    assert (await CertificateClaimMapper([rule]).get_claims(AuthInfo(peer=PEER))).peer is None
    cert = CertificateClaimMapper([rule], attach_peer=True)
    assert (await cert.get_claims(AuthInfo(peer=PEER))).peer == PEER
    keys = StaticKeyProvider({KID: _KEY.public_key()})
    jwt = DefaultJWTClaimMapper(keys, token_claims=("groups",), attach_peer=True)
    chain = ChainClaimMapper("union", cert=cert, token=jwt)
    claims = await chain.get_claims(AuthInfo(token=bearer("other:read", groups=("g",)), peer=PEER))
    assert claims.peer == PEER
    assert dict(claims.token_claims) == {"groups": ("g",)}
    assert set(claims.namespaces) == {"ns", "other"}


async def test_the_built_mapper_fills_claims_only_under_cedar(tmp_path: Path) -> None:
    write(tmp_path)
    token = bearer("ns:read", groups=("sre",))
    for authorizer, expected in (("cedar", {"groups": ("sre",)}), ("default", {})):
        raw = raw_config(tmp_path)
        raw["authorization"]["authorizer"] = authorizer
        if authorizer != "cedar":
            del raw["authorization"]["cedar"]
        app = build(parse_config(raw), logger=EventLog())
        await app.keys.refresh()  # type: ignore[union-attr]
        claims = await app.gate._mapper.get_claims(AuthInfo(token=token, peer=PEER))
        assert {k: v for k, v in claims.token_claims.items() if k == "groups"} == expected
        assert (claims.peer is not None) is (authorizer == "cedar")


# --------------------------------------------------------------------- gate: logs, shadow


def _gate(tmp_path: Path, mode: str, registry: CollectorRegistry) -> tuple[Gate, EventLog]:
    from proxy.metrics import ProxyMetrics

    write(tmp_path)
    metrics = PolicyMetrics(registry)
    cedar = build_cedar_authorizer(
        config(tmp_path),
        default=methods_default(),
        observe=metrics.observe,
    )
    log = EventLog()
    keys = StaticKeyProvider({KID: _KEY.public_key()})
    gate = Gate(
        claim_mapper=DefaultJWTClaimMapper(keys, token_claims=("groups",)),
        authorizer=cedar,
        metrics=ProxyMetrics(registry, method_names=()),
        logger=log,
        mode=mode,  # type: ignore[arg-type]
    )
    return gate, log


def methods_default() -> Any:
    from proxy.authz import DefaultAuthorizer

    return DefaultAuthorizer(methods.lookup_with_codec, methods.HEALTH_CHECK_APIS)


def delete_schedule(ns: str = "payments") -> bytes:
    return DeleteScheduleRequest(namespace=ns, schedule_id="s").SerializeToString()


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
async def test_denials_name_the_deciding_policy_in_log_and_metric(
    tmp_path: Path, mode: str
) -> None:
    registry = CollectorRegistry()
    gate, log = _gate(tmp_path, mode, registry)
    verdict = await gate.check(
        method("DeleteSchedule"), delete_schedule(), token=bearer("payments:write")
    )
    assert verdict.allowed is (mode == "shadow")
    event = "authz_denied" if mode == "enforce" else "authz_would_deny"
    [line] = log.named(event)
    assert line["policies"] == ["only-sre-deletes-schedules"]
    assert line["reason"] == "policy_denied"
    labels = {"decision": "deny", "policy": "only-sre-deletes-schedules"}
    assert registry.get_sample_value("temporal_auth_proxy_policy_decisions_total", labels) == 1
    # SRE: allowed by the baseline, counted under its id; nothing logged.
    sre = bearer("payments:write", groups=("sre",))
    assert (await gate.check(method("DeleteSchedule"), delete_schedule(), token=sre)).allowed
    labels = {"decision": "allow", "policy": "roles-decide"}
    assert registry.get_sample_value("temporal_auth_proxy_policy_decisions_total", labels) == 1
    assert len(log.named(event)) == 1


async def test_a_default_denial_carries_no_policies(tmp_path: Path) -> None:
    gate, log = _gate(tmp_path, "enforce", CollectorRegistry())
    verdict = await gate.check(
        method("DeleteSchedule"), delete_schedule(), token=bearer("payments:read")
    )
    assert not verdict.allowed
    [line] = log.named("authz_denied")
    assert line["reason"] == "insufficient_role" and "policies" not in line


def test_policy_metrics_count_no_policy_and_bound_the_labels() -> None:
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    metrics.decided(Decision.DENY, ())
    labels = {"decision": "deny", "policy": NO_POLICY}
    assert registry.get_sample_value("temporal_auth_proxy_policy_decisions_total", labels) == 1
    metrics.known(f"p{i}" for i in range(MAX_POLICY_LABELS + 10))
    metrics.decided(Decision.ALLOW, ("p-new",))
    labels = {"decision": "allow", "policy": "_other_"}
    assert registry.get_sample_value("temporal_auth_proxy_policy_decisions_total", labels) == 1
    samples = registry.get_sample_value(
        "temporal_auth_proxy_policy_decisions_total", {"decision": "allow", "policy": "p-new"}
    )
    assert samples is None


# ------------------------------------------------------------------------------ reload


async def test_reloader_swaps_good_edits_and_keeps_the_old_set_on_a_bad_one(
    tmp_path: Path,
) -> None:
    path = write(tmp_path)
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    cedar = build_cedar_authorizer(config(tmp_path), default=methods_default())
    log = EventLog()
    reloader = PolicyReloader(
        cedar.store,
        interval=0,
        logger=log,
        on_loaded=metrics.loaded,
        on_reload=metrics.on_reload,
    )
    assert registry.get_sample_value("temporal_auth_proxy_policies") == 4
    assert await reloader.reload(force=False) is None  # nothing changed
    path.write_text(POLICIES + '@id("extra")\nforbid(principal, action, resource);\n')
    os.utime(path, ns=(1, 1))  # a different mtime even within the clock's resolution
    outcome = await reloader.reload(force=False)
    assert outcome is not None and outcome.ok and cedar.store.current.generation == 2
    assert registry.get_sample_value("temporal_auth_proxy_policies") == 5
    assert log.named("policies_reloaded")[0]["policies"] == 5

    path.write_text(POLICIES + '@id("broken")\nforbid(principal, action resource);\n')
    outcome = await reloader.reload(force=False)
    assert outcome is not None and not outcome.ok
    assert cedar.store.current.generation == 2  # the old set keeps serving
    [failed] = log.named("policies_reload_failed")
    line = POLICIES.count("\n") + 1
    assert (failed["file"], failed["line"], failed["policy_id"]) == (str(path), line, "broken")
    assert (
        registry.get_sample_value("temporal_auth_proxy_policy_reload_total", {"result": "failure"})
        == 1
    )
    assert registry.get_sample_value("temporal_auth_proxy_policies") == 5
    assert await reloader.reload(force=False) is None  # the same bad edit is not retried
    assert (await reloader.reload(force=True)) is not None  # SIGHUP always rebuilds
    assert (
        registry.get_sample_value("temporal_auth_proxy_policy_reload_total", {"result": "failure"})
        == 2
    )


# ------------------------------------------------------------------------------- codec


@pytest.fixture
async def codec_url(tmp_path: Path) -> AsyncIterator[str]:
    write(tmp_path)
    cedar = build_cedar_authorizer(config(tmp_path), default=methods_default())
    app = web.Application()
    keys = StaticKeyProvider({KID: _KEY.public_key()})
    app.add_routes(
        codec_routes(
            PayloadCodec(KeyRing({"k": bytes(range(32))}), encrypt_key_id="k"),
            claim_mapper=DefaultJWTClaimMapper(keys, token_claims=("groups",)),
            require_authorization=True,
            cors=CorsConfig(),
            authorizer=cedar,
        )
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def _post(url: str, token: str) -> int:
    payload = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}, "data": ""}
    async with (
        ClientSession() as http,
        http.post(url, json={"payloads": [payload]}, headers={"Authorization": token}) as resp,
    ):
        return resp.status


async def test_codec_operations_are_decided_by_the_policies(codec_url: str) -> None:
    reader = bearer("payments:read", "orders:read")
    support = bearer("payments:read", groups=("support",))
    assert await _post(f"{codec_url}/payments/decode", reader) == 403  # the forbid
    assert await _post(f"{codec_url}/payments/download", reader) == 403
    assert await _post(f"{codec_url}/orders/decode", reader) == 200
    assert await _post(f"{codec_url}/payments/decode", support) == 200
    # Temporal's roles still come first: encode needs writer.
    assert await _post(f"{codec_url}/payments/encode", support) == 403
    assert await _post(f"{codec_url}/payments/encode", bearer("payments:write")) == 200


# ----------------------------------------------------------------------------- explain


async def test_explain_shows_the_cedar_decision_and_policy_ids(tmp_path: Path) -> None:
    write(tmp_path)
    cfg = config(tmp_path)
    token = bearer("payments:write", groups=("oncall",))
    denied = await explain(
        cfg,
        method="TerminateWorkflowExecution",
        namespace="payments",
        token=token,
        attributes={"workflowId": "Order-7"},
    )
    assert (denied.decision, denied.reason) == ("deny", "policy_denied")
    text = render(denied, as_json=False)
    assert 'action:    Temporal::Action::"TerminateWorkflowExecution"' in text
    assert 'context:   {"workflowId": "Order-7"}' in text
    assert "policies:  DENY (forbidden by payments-terminate-payment-ids)" in text
    assert "default:   ALLOW (allowed)" in text
    assert 'claim:     groups = ["oncall"]' in text
    as_json = json.loads(render(denied, as_json=True))
    assert as_json["cedar"]["policy"]["policies"] == ["payments-terminate-payment-ids"]
    assert as_json["cedar"]["context"] == {"workflowId": "Order-7"}
    allowed = await explain(
        cfg,
        method="TerminateWorkflowExecution",
        namespace="payments",
        token=token,
        attributes={"workflowId": "Payment-7"},
    )
    assert allowed.allowed
    assert "policies:  ALLOW (permitted by roles-decide)" in render(allowed, as_json=False)


async def test_explain_refuses_an_attribute_the_method_does_not_carry(tmp_path: Path) -> None:
    write(tmp_path)
    with pytest.raises(ConfigError) as exc:
        await explain(
            config(tmp_path),
            method="DescribeNamespace",
            namespace="payments",
            attributes={"workflowId": "x"},
        )
    assert "--attribute" in str(exc.value)


async def test_the_gate_and_the_reloader_share_one_store(tmp_path: Path) -> None:
    write(tmp_path)
    app = build(config(tmp_path), logger=EventLog())
    assert isinstance(app.gate._authorizer, CedarAuthorizer)
    assert app.policies is not None and app.policies.store is app.gate._authorizer.store


class _BrokenStore(PolicyStore):
    """A store whose reload has a bug (not a bad file): raises something unexpected."""

    def reload(self) -> ReloadOutcome:
        raise RuntimeError("bug in reload")


async def test_a_reload_that_raises_is_a_counted_failure_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path)
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    store = _BrokenStore([str(tmp_path / "policies" / "*.cedar")], load_schema(""))
    log = EventLog()
    reloader = PolicyReloader(
        store, interval=0, logger=log, on_loaded=metrics.loaded, on_reload=metrics.on_reload
    )
    outcome = await reloader.reload()  # as the SIGHUP task runs it: must not raise
    assert outcome is not None and not outcome.ok
    assert "bug in reload" in outcome.error
    assert store.current.generation == 1
    [failed] = log.named("policies_reload_failed")
    assert "RuntimeError" in failed["error"]
    labels = {"result": "failure"}
    assert registry.get_sample_value("temporal_auth_proxy_policy_reload_total", labels) == 1
