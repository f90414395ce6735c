"""The Cedar authorizer: Temporal's default AND the policies, or the policies alone.

Per call: the method's action (schema.action_id), the resource (the namespace, or the cluster),
the principal built from the claims (schema.py describes its shape) and the context read from
the request bytes (attributes.py). Cedar's answer carries the ids of the deciding policies; they
go into `Result.policies` for logs, metrics and `explain` (ids come from the policy files, so
the label set is bounded by config).

Fail closed: an exception from cedarpy, or any policy that errors while evaluating (Cedar would
skip it, and a skipped `forbid` must not turn into an allow), denies with `authorizer_error`.

Caches, all bounded:
- principal: the claims' values -> the JSON of the Caller and TokenClaims entities and a
  small int id; looked up by the identity of the Claims object first (mappers reuse them).
- entities: (principal id, resource) -> the parsed cedarpy Entities handle.
- decisions: (policy generation, principal id, action, namespace, request attributes) ->
  Result. Sound because a Cedar decision is a pure function of the policies, the entities and
  the request: there is no clock or other input in Cedar, the entities are a function of the
  principal's values and the resource, and a reload changes the generation. Requests whose
  attributes are long are not cached, so callers cannot fill memory with ids.
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cedarpy

from proxy.authz.attributes import AttributeReader, Attributes
from proxy.authz.policies import SCHEMA_FILE_KEY, PolicyStore
from proxy.authz.schema import (
    CALLER,
    CLUSTER,
    CLUSTER_ID,
    NAMESPACE,
    ROLE_NAMES,
    TOKEN_CLAIMS,
    action_id,
)
from proxy.errors import ConfigError, MalformedRequestError
from proxy.interfaces import Authorizer
from proxy.methods import (
    ADMIN_SERVICE_PREFIX,
    HEALTH_CHECK_APIS,
    UNKNOWN_LABEL,
    all_methods,
    is_forwarded,
)
from proxy.methods import lookup as table_lookup
from proxy.model import (
    ALLOW_HEALTH,
    CallTarget,
    Claims,
    Decision,
    MethodInfo,
    PeerIdentity,
    Reason,
    Result,
    Role,
    Scope,
)

__all__ = ["CedarAuthorizer", "CedarExplanation", "CedarStats", "Combine"]


class Combine(enum.Enum):
    """authorization.cedar.combine"""

    DEFAULT_AND_POLICY = "default-and-policy"
    POLICY_ONLY = "policy-only"


_DENY_NO_CREDENTIALS = Result(decision=Decision.DENY, reason=Reason.NO_CREDENTIALS)
_DENY_UNKNOWN_METHOD = Result(decision=Decision.DENY, reason=Reason.UNKNOWN_METHOD)
_DENY_MALFORMED = Result(decision=Decision.DENY, reason=Reason.MALFORMED_REQUEST)
_DENY_ERROR = Result(decision=Decision.DENY, reason=Reason.AUTHORIZER_ERROR)

# Sizes: principals and entity sets are per caller (and namespace); decisions per distinct call.
_PRINCIPALS = 1024
_ENTITIES = 2048
_DECISIONS = 8192
_MAX_ACTIONS_MEMO = 4096  # AdminService accepts any name; the memo must not grow with them
# A call whose namespace + attribute values are longer than this is decided but not cached.
_MAX_CACHED_KEY_CHARS = 512

_CLUSTER_UID = {"type": CLUSTER, "id": CLUSTER_ID}
_CLUSTER_ENTITY = json.dumps({"uid": _CLUSTER_UID, "attrs": {}, "parents": []})


def _role_names(role: Role) -> list[str]:
    return [name for bit, name in ROLE_NAMES if role & bit]


def _certificate(peer: PeerIdentity) -> dict[str, Any]:
    cert: dict[str, Any] = {
        "subject": peer.subject,
        "commonName": peer.common_name,
        "organizationalUnits": list(peer.organizational_units),
        "dnsNames": list(peer.dns_names),
        "uris": list(peer.uris),
    }
    if peer.spiffe_id:
        cert["spiffeId"] = peer.spiffe_id
    return cert


_PrincipalKey = tuple[
    str,
    str,
    int,
    tuple[tuple[str, int], ...],
    PeerIdentity | None,
    tuple[tuple[str, tuple[str, ...]], ...],
]


def _principal_key(claims: Claims) -> _PrincipalKey:
    return (
        claims.subject,
        claims.auth_type,
        int(claims.system),
        tuple(sorted((ns, int(role)) for ns, role in claims.namespaces.items())),
        claims.peer,
        tuple(sorted(claims.token_claims.items())),
    )


class _Principal:
    """A caller as Cedar sees it: its request uid and its two entities as JSON text."""

    __slots__ = ("entities_json", "pid", "uid")

    def __init__(self, pid: int, claims: Claims) -> None:
        self.pid = pid
        self.uid = {"type": CALLER, "id": claims.subject}
        claims_uid = {"type": TOKEN_CLAIMS, "id": claims.subject}
        attrs: dict[str, Any] = {
            "subject": claims.subject,
            "authType": claims.auth_type,
            "systemRoles": _role_names(claims.system),
            "claims": {"__entity": claims_uid},
        }
        if claims.peer is not None:
            attrs["certificate"] = _certificate(claims.peer)
        # No namespace is named "" (model.Claims.role_in): roles under "" are not exposed.
        tags = {ns: _role_names(role) for ns, role in claims.namespaces.items() if ns}
        caller = {"uid": self.uid, "attrs": attrs, "parents": [], "tags": tags}
        token = {
            "uid": claims_uid,
            "attrs": {},
            "parents": [],
            "tags": {name: list(values) for name, values in claims.token_claims.items()},
        }
        self.entities_json = json.dumps(caller) + "," + json.dumps(token)


@dataclass(frozen=True, slots=True, kw_only=True)
class CedarExplanation:
    """What `explain` shows for one call: the Cedar request and both decisions."""

    action: str  # Cedar action id, "" for a method the table does not know
    resource: str  # e.g. Temporal::Namespace::"payments"
    context: Attributes  # the request attributes Cedar saw
    default: Result | None  # Temporal's default authorizer (default-and-policy only)
    cedar: Result | None  # the policies' own decision (None when not reached)
    result: Result  # what authorize() returns
    generation: int  # policy set generation


class CedarStats:
    """Counters for tests, the bench and (later) metrics."""

    __slots__ = ("decision_hits", "entity_hits", "evaluations")

    def __init__(self) -> None:
        self.decision_hits = 0
        self.entity_hits = 0
        self.evaluations = 0


class CedarAuthorizer:
    """`Authorizer` deciding with Cedar policies from a `PolicyStore`."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        combine: Combine,
        default: Authorizer | None,
        reader: AttributeReader | None = None,
        lookup: Callable[[str], MethodInfo | None] = table_lookup,
        health_apis: frozenset[str] = HEALTH_CHECK_APIS,
        cache: bool = True,
        observe: Callable[[Result], None] | None = None,
    ) -> None:
        """`observe` sees every decision the policies made (not the default's, nor errors):
        the composition root counts them by policy id."""
        if combine is Combine.DEFAULT_AND_POLICY and default is None:
            raise ValueError("default-and-policy needs the default authorizer")
        self._store = store
        self._combine = combine
        self._default = default if combine is Combine.DEFAULT_AND_POLICY else None
        self._reader = reader if reader is not None else AttributeReader(all_methods())
        self._lookup = lookup
        self._health = frozenset(health_apis)
        self._cache = cache
        self._observe = observe
        self.stats = CedarStats()
        self._actions: dict[str, tuple[MethodInfo, dict[str, str]] | None] = {}
        self._by_identity: dict[int, tuple[Claims, _Principal]] = {}
        self._principals: OrderedDict[_PrincipalKey, _Principal] = OrderedDict()
        self._next_pid = 0
        self._entities: OrderedDict[tuple[int, str | None], cedarpy.Entities] = OrderedDict()
        self._decisions: OrderedDict[tuple[Any, ...], Result] = OrderedDict()

        self._probe()

    def _probe(self) -> None:
        """Fail at startup when the schema (a custom schemaFile) cannot hold what we send."""
        peer = PeerIdentity(subject="CN=probe", common_name="probe", spiffe_id="spiffe://probe")
        probe = Claims.build(
            subject="probe",
            system=Role.ADMIN,
            namespaces={"probe": Role.READER},
            peer=peer,
            token_claims={"groups": ("probe",)},
        )
        principal = _Principal(0, probe)
        for namespace in ("probe", None):
            try:
                self._build_entities(principal, namespace)
            except ValueError as exc:
                raise ConfigError(
                    SCHEMA_FILE_KEY, f"the schema does not accept the proxy's entities: {exc}"
                ) from None
        # Every action a forwarded call can be must exist, or those calls would all be denied.
        actions = sorted({action_id(m) for m in all_methods() if is_forwarded(m.full_name)})
        unknown_admin = table_lookup(ADMIN_SERVICE_PREFIX + UNKNOWN_LABEL)
        if unknown_admin is not None:
            actions.append(action_id(unknown_admin))
        listed = ", ".join(f'Temporal::Action::"{a}"' for a in actions if a)
        check = cedarpy.validate_policies(
            f"permit(principal, action in [{listed}], resource);", self._store.schema
        )
        missing = [e.error for e in check.errors if "unrecognized action" in e.error]
        if missing:
            raise ConfigError(
                SCHEMA_FILE_KEY,
                f"the schema lacks {len(missing)} of the proxy's actions, e.g. "
                + missing[0].split(", ", 1)[-1],
            )

    @property
    def store(self) -> PolicyStore:
        return self._store

    def _action(self, api_name: str) -> tuple[MethodInfo, dict[str, str]] | None:
        if api_name in self._actions:
            return self._actions[api_name]
        info = self._lookup(api_name)
        action = action_id(info) if info is not None else ""
        entry = (info, {"type": "Temporal::Action", "id": action}) if info and action else None
        if len(self._actions) < _MAX_ACTIONS_MEMO:
            self._actions[api_name] = entry
        return entry

    def _principal(self, claims: Claims) -> _Principal:
        known = self._by_identity.get(id(claims))
        if known is not None and known[0] is claims:
            return known[1]
        key = _principal_key(claims)
        principal = self._principals.get(key)
        if principal is None:
            self._next_pid += 1
            principal = _Principal(self._next_pid, claims)
            self._principals[key] = principal
            if len(self._principals) > _PRINCIPALS:
                self._principals.popitem(last=False)
        if len(self._by_identity) >= _PRINCIPALS:
            self._by_identity.clear()  # holds the Claims alive, so ids are not reused
        self._by_identity[id(claims)] = (claims, principal)
        return principal

    def _entities_for(self, principal: _Principal, namespace: str | None) -> cedarpy.Entities:
        key = (principal.pid, namespace)
        entities = self._entities.get(key)
        if entities is not None:
            self.stats.entity_hits += 1
            self._entities.move_to_end(key)
            return entities
        entities = self._build_entities(principal, namespace)
        self._entities[key] = entities
        if len(self._entities) > _ENTITIES:
            self._entities.popitem(last=False)
        return entities

    def _build_entities(self, principal: _Principal, namespace: str | None) -> cedarpy.Entities:
        if namespace is None:
            resource = _CLUSTER_ENTITY
        else:
            resource = json.dumps(
                {
                    "uid": {"type": NAMESPACE, "id": namespace},
                    "attrs": {"name": namespace},
                    "parents": [_CLUSTER_UID],
                }
            )
        # Parsed with the schema: it checks our JSON and adds the action entities (the groups);
        # ~50 us, cheaper than cloning a base set that holds them (~120 us).
        return cedarpy.Entities.from_json_str(
            f"[{principal.entities_json},{resource}]", self._store.schema
        )

    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        name = target.api_name
        if name in self._health:
            return ALLOW_HEALTH  # as Temporal's default: SDKs call GetSystemInfo first
        action = self._action(name)
        if action is None:
            return _DENY_UNKNOWN_METHOD
        if claims is None:
            return _DENY_NO_CREDENTIALS
        if self._default is not None:
            default = await self._default.authorize(claims, target)
            if not default.allowed:
                return default  # Cedar can only narrow Temporal's roles
        info, action_uid = action
        try:
            attributes = self._reader.read(info, target.request)
        except MalformedRequestError:
            return _DENY_MALFORMED
        try:
            result = self._decide(claims, info, action_uid, target.namespace, attributes)
        except Exception:  # fail closed on anything from the engine
            return _DENY_ERROR
        if self._observe is not None and result.reason is not Reason.AUTHORIZER_ERROR:
            self._observe(result)
        return result

    async def explain(self, claims: Claims | None, target: CallTarget) -> CedarExplanation:
        """The decision for `target` with its parts, never from the cache (for `explain`).

        Cedar is asked even when the default authorizer denies, so an operator sees both.
        """
        result = await self.authorize(claims, target)
        generation = self._store.current.generation
        action = self._action(target.api_name)
        if action is None or claims is None or target.api_name in self._health:
            return CedarExplanation(
                action=action[1]["id"] if action else "",
                resource="",
                context=(),
                default=None,
                cedar=None,
                result=result,
                generation=generation,
            )
        info, action_uid = action
        default = (
            await self._default.authorize(claims, target) if self._default is not None else None
        )
        resource = (
            f"{NAMESPACE}::{json.dumps(target.namespace)}"
            if info.scope is Scope.NAMESPACE
            else f"{CLUSTER}::{json.dumps(CLUSTER_ID)}"
        )
        try:
            context = self._reader.read(info, target.request)
        except MalformedRequestError:
            context, cedar = (), _DENY_MALFORMED
        else:
            try:
                cedar = self._decide(
                    claims, info, action_uid, target.namespace, context, use_cache=False
                )
            except Exception:  # fail closed, as authorize does
                cedar = _DENY_ERROR
        return CedarExplanation(
            action=action_uid["id"],
            resource=resource,
            context=context,
            default=default,
            cedar=cedar,
            result=result,
            generation=generation,
        )

    def _decide(
        self,
        claims: Claims,
        info: MethodInfo,
        action_uid: dict[str, str],
        namespace: str,
        attributes: Attributes,
        *,
        use_cache: bool = True,
    ) -> Result:
        snapshot = self._store.current
        principal = self._principal(claims)
        resource_ns = namespace if info.scope is Scope.NAMESPACE else None
        key: tuple[Any, ...] | None = None
        if self._cache and use_cache:
            size = len(namespace) + sum(len(v) for _, v in attributes)
            if size <= _MAX_CACHED_KEY_CHARS:
                key = (
                    snapshot.generation,
                    principal.pid,
                    action_uid["id"],
                    resource_ns,
                    attributes,
                )
                cached = self._decisions.get(key)
                if cached is not None:
                    self.stats.decision_hits += 1
                    self._decisions.move_to_end(key)
                    return cached
        entities = self._entities_for(principal, resource_ns)
        resource = _CLUSTER_UID if resource_ns is None else {"type": NAMESPACE, "id": resource_ns}
        request = {
            "principal": principal.uid,
            "action": action_uid,
            "resource": resource,
            "context": dict(attributes),
        }
        self.stats.evaluations += 1
        answer = cedarpy.is_authorized(request, snapshot.policy_set, entities)
        diagnostics = answer.diagnostics
        if diagnostics.errors:
            result = _DENY_ERROR
        elif answer.allowed:
            result = Result(
                decision=Decision.ALLOW,
                reason=Reason.ALLOWED,
                policies=snapshot.policy_ids(diagnostics.reasons),
            )
        else:
            result = Result(
                decision=Decision.DENY,
                reason=Reason.POLICY_DENIED,
                policies=snapshot.policy_ids(diagnostics.reasons),
            )
        if key is not None:
            self._decisions[key] = result
            if len(self._decisions) > _DECISIONS:
                self._decisions.popitem(last=False)
        return result
