"""Token claims exposed to policy engines: chosen by config, normalised to tuples of strings.

A claim mapper that verified a token copies the claims the config names into
`Claims.token_claims` with `expose_claims`. Normalising here keeps the Cedar schema static
(`TokenClaims` tags are sets of strings): a string claim is one value, an array of strings is
its values, and anything else (numbers, booleans, objects, mixed arrays) is left out, so a
policy sees the claim as absent rather than as a guess. A dotted name reads a nested object
(`realm_access.roles`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["expose_claims"]


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
