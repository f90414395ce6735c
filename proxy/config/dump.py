"""The effective configuration as `check-config` prints it, secrets redacted."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from proxy.config.parse import format_duration, yaml_key
from proxy.config.schema import Config
from proxy.config.validate import codec_requires_authorization

REDACTED = "<redacted>"


def effective_config(cfg: Config) -> dict[str, Any]:
    """The config as YAML-shaped data with defaults filled in and secrets redacted.

    Values derived from other keys are shown as the proxy applies them (see `derived_values`
    for which ones the file did not set), so the output also loads back unchanged in effect."""
    out = typing.cast(dict[str, Any], _dump(cfg))
    out["codec"]["requireAuthorization"] = codec_requires_authorization(cfg)
    return out


def derived_values(cfg: Config) -> dict[str, str]:
    """Key path -> why, for each value `effective_config` shows that the file left unset."""
    out: dict[str, str] = {}
    if cfg.codec.require_authorization is None:
        out["codec.requireAuthorization"] = (
            "not set: true because JWT keys or a claim mapper are configured"
            if codec_requires_authorization(cfg)
            else "not set: false because no JWT keys or claim mapper are configured"
        )
    return out


def _dump(obj: Any, kind: str = "") -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            out[yaml_key(f)] = _dump(getattr(obj, f.name), f.metadata.get("kind", ""))
        return out
    if kind == "duration":
        return format_duration(obj)
    if kind == "pem_secret" and obj:
        return REDACTED
    if kind == "secret_map":
        return {k: REDACTED for k in obj}
    if kind in ("pem", "pem_ca_list") and obj:
        return "<pem data>" if isinstance(obj, str) else ["<pem data>" for _ in obj]
    if isinstance(obj, tuple):
        return [_dump(item) for item in obj]
    if isinstance(obj, Mapping):
        return {k: _dump(v) for k, v in obj.items()}
    return obj
