"""YAML and environment -> a `Config`: types, durations, `${ENV}`, errors with key paths."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from proxy.config.schema import MAX_INT, Config
from proxy.config.validate import validate
from proxy.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str, path: str) -> float:
    """Go's time.ParseDuration, in seconds. Signed durations are refused (none makes sense)."""
    s = text.strip()
    if s == "0":
        return 0.0
    if s.startswith(("-", "+")):
        raise ConfigError(path, f"duration {text!r} must not be signed")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ConfigError(
                path, f"invalid duration {text!r} (use a Go duration such as 30s, 1m, 1h30m)"
            )
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not s:
        raise ConfigError(path, "empty duration")
    return total


def format_duration(seconds: float) -> str:
    """Seconds back to a Go-style duration string for display."""
    if seconds == 0:
        return "0s"
    out, rest = [], seconds
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if rest >= size:
            n = int(rest // size)
            out.append(f"{n}{unit}")
            rest -= n * size
    if rest:
        out.append(f"{rest:g}s" if rest >= 1 else f"{rest * 1000:g}ms")
    return "".join(out)


def _substitute_env(value: str, path: str, env: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise ConfigError(path, f"environment variable {name} is not set")
        return env[name]

    return _ENV.sub(repl, value)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def yaml_key(f: dataclasses.Field[Any]) -> str:
    key = f.metadata.get("key")
    return key if isinstance(key, str) else _camel(f.name)


def _decode_pem_data(value: str, path: str) -> str:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(
            path, "is not valid base64 (Temporal's *Data keys take base64 of PEM)"
        ) from exc
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "does not decode to PEM text") from exc
    if "-----BEGIN " not in text:
        raise ConfigError(path, "does not decode to PEM text (expected base64 of a PEM file)")
    return text


class _Parser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def string(self, raw: object, path: str) -> str:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ConfigError(path, f"expected a string, got {type(raw).__name__}")
        return _substitute_env(str(raw), path, self.env)

    def value(self, tp: Any, raw: object, path: str, kind: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if raw is None:
                return None
            return self.value(args[0], raw, path, kind)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.section(tp, raw, path)
        if kind == "duration":
            if isinstance(raw, bool) or not isinstance(raw, str):
                raise ConfigError(path, "expected a Go duration string such as 30s or 1m")
            return parse_duration(_substitute_env(raw, path, self.env), path)
        if origin is Literal:
            choices = typing.get_args(tp)
            s = self.string(raw, path)
            if s not in choices:
                raise ConfigError(
                    path, f"must be one of {', '.join(map(repr, choices))}, got {s!r}"
                )
            return s
        if tp is bool:
            if isinstance(raw, str):
                raw = _substitute_env(raw, path, self.env).strip().lower()
                if raw in ("true", "false"):
                    return raw == "true"
            if not isinstance(raw, bool):
                raise ConfigError(path, "expected true or false")
            return raw
        if tp is int:
            if isinstance(raw, str):
                raw = _substitute_env(raw, path, self.env).strip()
                if re.fullmatch(r"-?[0-9]{1,18}", raw):
                    raw = int(raw)
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ConfigError(path, "expected an integer")
            if raw < 0:
                raise ConfigError(path, "must not be negative")
            if raw > MAX_INT:
                raise ConfigError(path, f"must be at most {MAX_INT}")
            return raw
        if tp is float:
            if isinstance(raw, str):
                raw = _substitute_env(raw, path, self.env).strip()
                with contextlib.suppress(ValueError):
                    raw = float(raw)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
                raise ConfigError(path, "expected a number")
            if raw < 0:
                raise ConfigError(path, "must not be negative")
            return float(raw)
        if tp is str:
            s = self.string(raw, path)
            return _decode_pem_data(s, path) if kind in ("pem", "pem_secret") and s else s
        if origin is tuple:
            if raw is None:
                return ()
            if not isinstance(raw, list):
                raise ConfigError(path, "expected a list")
            item_tp = typing.get_args(tp)[0]
            if dataclasses.is_dataclass(item_tp) and isinstance(item_tp, type):
                return tuple(self.section(item_tp, v, f"{path}[{i}]") for i, v in enumerate(raw))
            items = tuple(self.string(v, f"{path}[{i}]") for i, v in enumerate(raw))
            if kind in ("ca_list", "pem_ca_list"):
                for i, item in enumerate(items):
                    if not item.strip():
                        raise ConfigError(f"{path}[{i}]", "CA cannot be empty string")
            if kind == "pem_ca_list":
                items = tuple(_decode_pem_data(v, f"{path}[{i}]") for i, v in enumerate(items))
            return items
        if origin is Mapping or origin is dict:
            if raw is None:
                return {}
            if not isinstance(raw, dict):
                raise ConfigError(path, "expected a mapping")
            value_tp = typing.get_args(tp)[1]
            if dataclasses.is_dataclass(value_tp) and isinstance(value_tp, type):
                return {
                    self.string(k, path): self.section(value_tp, v, f"{path}.{k}")
                    for k, v in raw.items()
                }
            if typing.get_origin(value_tp) is tuple:
                return {
                    self.string(k, path): self.value(
                        value_tp,
                        [v] if kind == "one_or_list" and not isinstance(v, list) else v,
                        f"{path}.{k}",
                        "",
                    )
                    for k, v in raw.items()
                }
            return {self.string(k, path): self.string(v, f"{path}.{k}") for k, v in raw.items()}
        raise ConfigError(path, f"unsupported type {tp!r}")  # pragma: no cover - schema bug

    def section(self, cls: type[Any], raw: object, path: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(path, "expected a mapping")
        hints = typing.get_type_hints(cls)
        fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
        for k in raw:
            if k not in fields:
                where = f"{path}.{k}" if path else str(k)
                raise ConfigError(where, f"unknown key (known: {', '.join(sorted(fields))})")
        kwargs: dict[str, Any] = {}
        for key, f in fields.items():
            if key in raw:
                sub = f"{path}.{key}" if path else key
                kwargs[f.name] = self.value(
                    hints[f.name], raw[key], sub, f.metadata.get("kind", "")
                )
        return cls(**kwargs)


def parse_config(raw: object, env: Mapping[str, str] | None = None) -> Config:
    cfg: Config = _Parser(os.environ if env is None else env).section(Config, raw, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"config file {p} is not UTF-8: {exc.reason}") from exc
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: PyYAML's int() of a huge literal; RecursionError: absurd nesting.
        raise ConfigError("", f"{p} is not valid YAML: {type(exc).__name__}: {exc}"[:500]) from exc
    return parse_config(raw if raw is not None else {}, env)
