"""`temporal-auth-proxy explain`: the claims, the method's rule and the decision for one call,
computed by the same builders and the same Gate that `serve` uses, so the two cannot disagree."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from proxy import methods
from proxy.authz import required_role
from proxy.authz.build import build_authorizer
from proxy.authz.cedar import CedarAuthorizer, CedarExplanation
from proxy.claims.build import build_claim_mapper
from proxy.config.schema import Config
from proxy.encryption.service import PayloadEncryption
from proxy.errors import ConfigError
from proxy.gate import Verdict, build_gate
from proxy.interfaces import Logger
from proxy.keys.build import build_key_provider
from proxy.keys.fetch import redact_uri
from proxy.keys.idp import IdpKeys
from proxy.keys.jwks import JwksKeyProvider
from proxy.methods import (
    ADMIN_SERVICE_PREFIX,
    HEALTH_SERVICE_PREFIX,
    OPERATOR_SERVICE_PREFIX,
    WORKFLOW_SERVICE_PREFIX,
)
from proxy.metrics import EncryptionMetrics, build_proxy_metrics
from proxy.model import CallTarget, Claims, MethodInfo, PeerIdentity, Reason, Result, Role, Scope
from proxy.tls.peer import identity_from_pem
from proxy.wire.write import encode_len_field

_SERVICES = (
    WORKFLOW_SERVICE_PREFIX,
    OPERATOR_SERVICE_PREFIX,
    HEALTH_SERVICE_PREFIX,
    ADMIN_SERVICE_PREFIX,
)


class _Capture:
    """A logger that keeps events, so the real reason of a denial can be shown."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _log(self, event: str, **kw: Any) -> None:
        self.events.append({"event": event, **kw})

    debug = info = warning = error = _log


@dataclass
class Explanation:
    method: str
    scope: str
    access: str
    required_role: int | None
    namespace: str
    claims: Claims | None
    decision: str
    reason: str
    rule: str
    details: list[str] = field(default_factory=list)
    # Key sources that could not be loaded here: {"source": key path, "issuer", "error"}.
    key_failures: list[dict[str, str]] = field(default_factory=list)
    # authorizer: cedar: the Cedar request and decisions (None with other authorizers).
    cedar: dict[str, Any] | None = None
    # What payload encryption would do with this call (README "Encryption at the proxy");
    # empty (and left out of the output) when no namespace is encrypted.
    payload_encryption: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def as_dict(self) -> dict[str, Any]:
        out = self._as_dict()
        c = self.claims
        if self.cedar is not None:  # authorizer: cedar only, so other outputs keep their shape
            out["cedar"] = self.cedar
            if c is not None and out["claims"] is not None:
                # What the policies see besides the roles.
                out["claims"]["token_claims"] = {
                    k: list(v) for k, v in sorted(c.token_claims.items())
                }
                out["claims"]["certificate"] = c.peer.subject if c.peer is not None else None
        if self.payload_encryption:  # only when some namespace is encrypted
            out["payload_encryption"] = self.payload_encryption
        return out

    def _as_dict(self) -> dict[str, Any]:
        c = self.claims
        return {
            "method": self.method,
            "scope": self.scope,
            "access": self.access,
            "required_role": self.required_role,
            "namespace": self.namespace,
            "claims": None
            if c is None
            else {
                "subject": c.subject,
                "auth_type": c.auth_type,
                "system": int(c.system),
                "namespaces": {k: int(v) for k, v in sorted(c.namespaces.items())},
            },
            "decision": self.decision,
            "reason": self.reason,
            "rule": self.rule,
            "details": self.details,
            "key_failures": self.key_failures,
        }

    def as_text(self) -> str:
        lines = [f"method:    {self.method}", f"scope:     {self.scope} / {self.access}"]
        if self.required_role is not None:
            lines.append(
                f"requires:  role >= {self.required_role} ({_role_name(self.required_role)})"
            )
        lines.append(f"namespace: {self.namespace!r}")
        c = self.claims
        if c is None:
            lines.append("claims:    none (anonymous)")
        else:
            lines.append(f"subject:   {c.subject!r} ({c.auth_type or 'noop'})")
            lines.append(f"system:    {int(c.system)} ({_role_name(int(c.system))})")
            for ns, role in sorted(c.namespaces.items()):
                ignored = "" if ns else ", ignored: the empty namespace grants nothing"
                lines.append(f"ns role:   {ns!r} = {int(role)} ({_role_name(int(role))}{ignored})")
            for name, values in sorted(c.token_claims.items()):
                lines.append(f"claim:     {name} = {json.dumps(list(values))}")
            if c.peer is not None:
                lines.append(f"cert:      {c.peer.subject}")
        lines.append(f"decision:  {self.decision.upper()} ({self.reason})")
        lines.append(f"rule:      {self.rule}")
        lines.extend(_cedar_lines(self.cedar))
        lines.extend(f"detail:    {d}" for d in self.details)
        lines.extend(f"keys:      not loaded: {_describe_failure(f)}" for f in self.key_failures)
        if self.payload_encryption:
            lines.append(f"payloads:  {self.payload_encryption}")
        return "\n".join(lines)


_ROLE_NAMES = (
    (Role.ADMIN, "admin"),
    (Role.WRITER, "writer"),
    (Role.READER, "reader"),
    (Role.WORKER, "worker"),
)


def _result_dict(result: Result | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "decision": result.decision.value,
        "reason": result.reason.value,
        "policies": list(result.policies),
    }


def _cedar_dict(x: CedarExplanation, combine: str) -> dict[str, Any]:
    return {
        "combine": combine,
        "action": x.action,
        "resource": x.resource,
        "context": dict(x.context),
        "default": _result_dict(x.default),
        "policy": _result_dict(x.cedar),
        "generation": x.generation,
    }


def _cedar_lines(cedar: dict[str, Any] | None) -> list[str]:
    if cedar is None:
        return []
    lines = [
        f"cedar:     {cedar['combine']}, policy set generation {cedar['generation']}",
        f"action:    Temporal::Action::{json.dumps(cedar['action'])}",
        f"resource:  {cedar['resource'] or '-'}",
        f"context:   {json.dumps(cedar['context'], sort_keys=True)}",
    ]
    for label, part in (("default:", cedar["default"]), ("policies:", cedar["policy"])):
        if part is None:
            continue
        ids = ", ".join(part["policies"])
        if part["reason"] == "policy_denied" and not ids:
            why = "no permit matched"
        elif part["decision"] == "deny" and ids:
            why = f"forbidden by {ids}"
        elif ids:
            why = f"permitted by {ids}"
        else:
            why = part["reason"]
        lines.append(f"{label:<10} {part['decision'].upper()} ({why})")
    return lines


def _role_name(value: int) -> str:
    names = [name for role, name in _ROLE_NAMES if value & role]
    return "+".join(names) if names else "none"


def resolve_method(name: str) -> MethodInfo:
    if name.startswith("Codec/") or name.startswith(methods.CODEC_PREFIX):
        # The Codec Server's operations, as a policy authorizer decides them.
        info = methods.lookup_with_codec(methods.CODEC_PREFIX + name.rpartition("/")[2])
        if info is not None:
            return info
    if name.startswith("/"):
        info = methods.lookup(name)
        if info is not None:
            return info
    else:
        for prefix in _SERVICES:
            info = methods.lookup(prefix + name)
            # AdminService answers every name (short name "unknown"): only real rows count.
            if info is not None and info.short_name == name:
                return info
    raise ConfigError("--method", f"unknown method {name!r}")


def _request_for(
    info: MethodInfo, namespace: str, attributes: dict[str, str] | None = None
) -> bytes:
    """A request carrying the namespace and the given request attributes (for policies)."""
    out = b""
    if info.namespace_field is not None and namespace:
        out = encode_len_field(info.namespace_field, namespace.encode())
    paths = dict(info.attributes)
    for name, value in (attributes or {}).items():
        path = paths.get(name)
        if path is None:
            known = ", ".join(paths) or "none"
            raise ConfigError(
                "--attribute", f"{info.short_name} carries no {name!r} (it has: {known})"
            )
        field_bytes = value.encode()
        for number in reversed(path):
            field_bytes = encode_len_field(number, field_bytes)
        out += field_bytes
    return out


def _rule(info: MethodInfo, verdict: Verdict, required: int | None) -> str:
    reason = verdict.result.reason.value
    claims = verdict.claims
    if reason == "health_check":
        return "health-check APIs (Health/Check, GetSystemInfo) are always allowed"
    if reason == "noop":
        return "the noop authorizer allows every call"
    if reason == "no_credentials":
        return "no token and no verified certificate: anonymous calls are denied"
    if reason == "unknown_method":
        return "methods outside Temporal's table are denied, even for a system admin"
    if reason == "policy_denied":
        ids = ", ".join(verdict.result.policies)
        return f"Cedar policies: forbidden by {ids}" if ids else "Cedar policies: no permit matched"
    if reason == "allowed" and verdict.result.policies:
        return "Cedar policies: permitted by " + ", ".join(verdict.result.policies)
    if claims is not None and required is not None and reason in ("allowed", "insufficient_role"):
        ns = verdict.namespace
        if info.scope is Scope.CLUSTER:
            have, how = int(claims.system), f"system role {int(claims.system)}"
        elif not ns:
            have = int(claims.role_in(ns))
            how = f"no namespace (by id or task token), the system role only: {have}"
        else:
            have = int(claims.role_in(ns))
            how = (
                f"system {int(claims.system)} | namespace[{ns!r}] "
                f"{int(claims.namespaces.get(ns, Role.UNDEFINED))} = {have}"
            )
        op = ">=" if have >= required else "<"
        return f"{info.scope.value}-scope {info.access.value}: {how} {op} {required}"
    return f"credentials refused ({reason})"


def _source_root(keys: JwksKeyProvider | IdpKeys) -> str:
    if isinstance(keys, JwksKeyProvider):
        return "authorization.jwtKeyProvider.keySourceURIs"
    return "authorization.idp.issuers"


def _key_failures(keys: JwksKeyProvider | IdpKeys) -> list[dict[str, str]]:
    """The sources whose last refresh failed, with the config key that names them."""
    if isinstance(keys, JwksKeyProvider):
        if keys.last_error is None:
            return []
        return [{"source": _source_root(keys), "issuer": "", "error": keys.last_error}]
    return [
        {
            "source": f"authorization.idp.issuers[{i}]",
            "issuer": redact_uri(issuer.issuer),
            "error": issuer.last_error,
        }
        for i, issuer in enumerate(keys.issuers)
        if issuer.last_error is not None
    ]


def _describe_failure(failure: dict[str, str]) -> str:
    who = f" (issuer {failure['issuer']!r})" if failure["issuer"] else ""
    return f"{failure['source']}{who}: {failure['error']}"


async def explain(
    cfg: Config,
    *,
    method: str,
    namespace: str,
    token: str = "",
    cert_pem: bytes | None = None,
    attributes: dict[str, str] | None = None,
) -> Explanation:
    info = resolve_method(method)
    request = _request_for(info, namespace, attributes)
    capture = _Capture()
    # The same builders as `serve`; the metrics go to a registry nobody reads.
    metrics = build_proxy_metrics(cfg, CollectorRegistry())
    keys = build_key_provider(cfg, metrics, capture)
    failures: list[dict[str, str]] = []
    if keys is not None:
        # As `serve`, one source that cannot be loaded does not stop the others from deciding.
        await keys.refresh()
        failures = _key_failures(keys)
    authorizer = build_authorizer(cfg)
    gate = build_gate(
        cfg,
        claim_mapper=build_claim_mapper(cfg, keys, capture),
        authorizer=authorizer,
        metrics=metrics,
        logger=capture,
        # Under requireClientAuth every real caller has a verified certificate.
        peer_always_verified=cert_pem is not None or cfg.tls.frontend.server.require_client_auth,
        mode="enforce",  # what `enforce` decides, also for a config in shadow mode
    )
    peer: PeerIdentity | None = None
    if cert_pem is not None:
        peer = identity_from_pem(cert_pem)
        if peer is None:
            raise ConfigError("--cert", "is not a PEM certificate")
    header = token if not token or " " in token else f"Bearer {token}"
    verdict = await gate.check(info, request, token=header, peer=peer)
    if verdict.result.reason is Reason.NO_KEYS and keys is not None:
        # The token needs keys this machine could not load: `serve`, which may reach the key
        # source, could decide otherwise, so there is no decision to show.
        missing = _key_failures(keys) or failures
        raise ConfigError(
            missing[0]["source"] if len(missing) == 1 else _source_root(keys),
            "the keys this token needs could not be loaded: "
            + ("; ".join(_describe_failure(f) for f in missing) or "no key set loaded"),
        )
    required = required_role(info) if verdict.result.reason.value != "unknown_method" else None
    details = [
        f"{e['event']}: {e.get('error') or e.get('reason', '')}"
        for e in capture.events
        if e["event"] in ("claims_failed", "authorization_error", "request_malformed")
    ] + [
        f"permission_ignored: {e.get('why', '')}: {e.get('permission', '')}"
        for e in capture.events
        if e["event"] == "permission_ignored"
    ]
    cedar: dict[str, Any] | None = None
    if isinstance(authorizer, CedarAuthorizer) and verdict.body_read:
        target = CallTarget(api_name=info.full_name, namespace=verdict.namespace, request=request)
        cedar = _cedar_dict(
            await authorizer.explain(verdict.claims, target), cfg.authorization.cedar.combine
        )
    return Explanation(
        method=info.full_name,
        scope=info.scope.value,
        access=info.access.value,
        required_role=required,
        namespace=verdict.namespace,
        claims=verdict.claims,
        decision="allow" if verdict.allowed else "deny",
        reason=verdict.result.reason.value,
        rule=_rule(info, verdict, required),
        details=details,
        key_failures=failures,
        cedar=cedar,
        payload_encryption=_payload_encryption(cfg, info, verdict, capture),
    )


def render(explanation: Explanation, as_json: bool) -> str:
    if as_json:
        return json.dumps(explanation.as_dict(), indent=2, sort_keys=True)
    return explanation.as_text()


def _payload_encryption(cfg: Config, info: MethodInfo, verdict: Verdict, logger: Logger) -> str:
    """Empty without `encryption.namespaces` (nothing to say, output as before)."""
    if not cfg.encryption.namespaces:
        return ""
    if not verdict.allowed:
        return "not inspected (denied calls are never parsed for payloads)"
    enc = PayloadEncryption.build(
        cfg, metrics=EncryptionMetrics(CollectorRegistry()), logger=logger
    )
    return enc.describe(info, verdict.namespace)
