"""Token claims exposed to policy engines: chosen by config, normalised to tuples of strings.

A claim mapper that verified a token copies the claims the config names into
`Claims.token_claims` with `expose_claims`. Normalising here keeps the Cedar schema static
(`TokenClaims` tags are sets of strings): a string claim is one value, an array of strings is
its values, and anything else (numbers, booleans, objects, mixed arrays) is left out, so a
policy sees the claim as absent rather than as a guess. A dotted name reads a nested object
(`realm_access.roles`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.model import Claims, PeerIdentity

__all__ = ["PeerAttacher", "expose_claims"]


def _lookup(payload: Mapping[str, Any], name: str) -> Any:
    if name in payload:
        return payload[name]
    node: Any = payload
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def expose_claims(payload: Mapping[str, Any], names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The named claims of a verified token payload that are strings or arrays of strings."""
    exposed: dict[str, tuple[str, ...]] = {}
    for name in names:
        value = _lookup(payload, name)
        if isinstance(value, str):
            exposed[name] = (value,)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            exposed[name] = tuple(value)
    return exposed


class PeerAttacher:
    """Adds the call's verified certificate to claims a token mapper made (`Claims.peer`).

    Token mappers cache claims per token, not per connection, so the certificate is attached
    per call. The result is remembered per (claims object, certificate), so a caller gets the
    same Claims object on every call and policy engines can key their caches on it. Bounded.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[int, PeerIdentity], tuple[Claims, Claims]] = OrderedDict()

    def attach(self, claims: Claims, peer: PeerIdentity | None) -> Claims:
        if peer is None or claims.peer == peer:
            return claims
        key = (id(claims), peer)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is claims:  # the entry holds `claims`: its id is not reused
            return hit[1]
        derived = dataclasses.replace(claims, peer=peer)
        self._cache[key] = (claims, derived)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return derived
