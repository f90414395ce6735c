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
from proxy.claims.build import build_claim_mapper
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.gate import Verdict, build_gate
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
from proxy.metrics import build_proxy_metrics
from proxy.model import Claims, MethodInfo, PeerIdentity, Reason, Role, Scope
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

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def as_dict(self) -> dict[str, Any]:
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
        lines.append(f"decision:  {self.decision.upper()} ({self.reason})")
        lines.append(f"rule:      {self.rule}")
        lines.extend(f"detail:    {d}" for d in self.details)
        lines.extend(f"keys:      not loaded: {_describe_failure(f)}" for f in self.key_failures)
        return "\n".join(lines)


_ROLE_NAMES = (
    (Role.ADMIN, "admin"),
    (Role.WRITER, "writer"),
    (Role.READER, "reader"),
    (Role.WORKER, "worker"),
)


def _role_name(value: int) -> str:
    names = [name for role, name in _ROLE_NAMES if value & role]
    return "+".join(names) if names else "none"


def resolve_method(name: str) -> MethodInfo:
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


def _request_for(info: MethodInfo, namespace: str) -> bytes:
    if info.namespace_field is None or not namespace:
        return b""
    return encode_len_field(info.namespace_field, namespace.encode())


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
    cfg: Config, *, method: str, namespace: str, token: str = "", cert_pem: bytes | None = None
) -> Explanation:
    info = resolve_method(method)
    capture = _Capture()
    # The same builders as `serve`; the metrics go to a registry nobody reads.
    metrics = build_proxy_metrics(cfg, CollectorRegistry())
    keys = build_key_provider(cfg, metrics, capture)
    failures: list[dict[str, str]] = []
    if keys is not None:
        # As `serve`, one source that cannot be loaded does not stop the others from deciding.
        await keys.refresh()
        failures = _key_failures(keys)
    gate = build_gate(
        cfg,
        claim_mapper=build_claim_mapper(cfg, keys, capture),
        authorizer=build_authorizer(cfg),
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
    verdict = await gate.check(info, _request_for(info, namespace), token=header, peer=peer)
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
    )


def render(explanation: Explanation, as_json: bool) -> str:
    if as_json:
        return json.dumps(explanation.as_dict(), indent=2, sort_keys=True)
    return explanation.as_text()
