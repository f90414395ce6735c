"""Authorizers: Temporal's default (spec §4.1, exact order) and noop."""

from __future__ import annotations

from collections.abc import Callable

from proxy.model import (
    ALLOW,
    ALLOW_HEALTH,
    Access,
    CallTarget,
    Claims,
    Decision,
    MethodInfo,
    Reason,
    Result,
    Scope,
)

_REQUIRED: dict[Access, int] = {Access.READ: 2, Access.WRITE: 4, Access.ADMIN: 8}
# AdminService accepts any method name, so the memo must not grow with what callers invent.
_MAX_MEMO = 4096

_DENY_NO_CREDENTIALS = Result(decision=Decision.DENY, reason=Reason.NO_CREDENTIALS)
_DENY_UNKNOWN_METHOD = Result(decision=Decision.DENY, reason=Reason.UNKNOWN_METHOD)
_DENY_INSUFFICIENT_ROLE = Result(decision=Decision.DENY, reason=Reason.INSUFFICIENT_ROLE)
_ALLOW_NOOP = Result(decision=Decision.ALLOW, reason=Reason.NOOP)


def required_role(info: MethodInfo) -> int:
    """read 2, write 4, admin (or anything else) 8."""
    return _REQUIRED.get(info.access, 8)


class DefaultAuthorizer:
    """Temporal's default authorizer: roles compared numerically (`have >= required`)."""

    def __init__(
        self, lookup: Callable[[str], MethodInfo | None], health_apis: frozenset[str]
    ) -> None:
        self._lookup = lookup
        self._health = frozenset(health_apis)
        # full method name -> (cluster scope?, required role value), filled on first use
        self._rules: dict[str, tuple[bool, int]] = {}

    def _rule(self, api_name: str) -> tuple[bool, int] | None:
        info = self._lookup(api_name)
        if info is None:
            return None
        rule = (info.scope is Scope.CLUSTER, required_role(info))
        if len(self._rules) < _MAX_MEMO:
            self._rules[api_name] = rule
        return rule

    def deny_without_target(self, claims: Claims | None, api_name: str) -> Result | None:
        """No credentials, or claims without any role: denied whatever the namespace.

        Callers with some role keep getting their namespace read, so a denial names it.
        """
        if api_name in self._health:
            return None
        if claims is None:
            return _DENY_NO_CREDENTIALS
        if claims.system or any(claims.namespaces.values()):
            return None
        if (self._rules.get(api_name) or self._rule(api_name)) is None:
            return _DENY_UNKNOWN_METHOD
        return _DENY_INSUFFICIENT_ROLE

    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        name = target.api_name
        if name in self._health:
            return ALLOW_HEALTH  # even without credentials (SDKs call GetSystemInfo first)
        if claims is None:
            return _DENY_NO_CREDENTIALS
        rule = self._rules.get(name) or self._rule(name)
        if rule is None:
            return _DENY_UNKNOWN_METHOD  # even for a system admin
        cluster, required = rule
        have = int(claims.system)
        if not cluster and target.namespace:
            # A namespace role never helps a cluster-scope call; the system role helps everywhere.
            # Ours: an empty namespace (by-id and task-token calls) needs a system role, even if a
            # claim mapper plugin granted roles on "" (Temporal would use them).
            have |= int(claims.namespaces.get(target.namespace, 0))
        # Numeric, not a bit test: worker (1) alone grants nothing, reader+worker (3) reads.
        return ALLOW if have >= required else _DENY_INSUFFICIENT_ROLE


class NoopAuthorizer:
    """Allows everything, unknown methods included (Temporal's `authorizer: ""`)."""

    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result:
        return _ALLOW_NOOP
