"""YAML -> frozen config objects. Every error names its key path.

`tls` and `authorization` take exactly the keys of Temporal Server's `global.tls` and
`global.authorization` (spelling, types, base64-of-PEM `*Data` values, Go duration strings), so
an operator can paste them from a Temporal config. The other sections are the proxy's own.

The parser is driven by the dataclasses below: a field's YAML key is its camelCase name unless
`metadata["key"]` says otherwise, and `metadata["kind"]` marks durations, base64-PEM data and
secrets (redacted by `effective_config`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from proxy.errors import ConfigError

REDACTED = "<redacted>"
_MAX_INT = 2**53  # no count or size here needs more; keeps YAML ints sane
_GRPC_MAX_SIZE = 2**31 - 1  # grpc channel args are C ints


def _key(name: str, *, kind: str = "") -> dict[str, str]:
    return {"key": name, "kind": kind}


def _kind(kind: str) -> dict[str, str]:
    return {"kind": kind}


# ---------------------------------------------------------------- tls (Temporal's global.tls)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTLSConfig:
    """Temporal's ServerTLS. `*_data` hold the decoded PEM text (the YAML carries base64 of PEM)."""

    cert_file: str = ""
    key_file: str = ""
    cert_data: str = field(default="", metadata=_kind("pem"))
    key_data: str = field(default="", metadata=_kind("pem_secret"))
    client_ca_files: tuple[str, ...] = field(default=(), metadata=_kind("ca_list"))
    client_ca_data: tuple[str, ...] = field(default=(), metadata=_kind("pem_ca_list"))
    require_client_auth: bool = False

    @property
    def enabled(self) -> bool:
        # Temporal: server TLS is on iff a key is configured.
        return bool(self.key_file or self.key_data)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTLSConfig:
    server_name: str = ""
    disable_host_verification: bool = False
    root_ca_files: tuple[str, ...] = field(default=(), metadata=_kind("ca_list"))
    root_ca_data: tuple[str, ...] = field(default=(), metadata=_kind("pem_ca_list"))
    force_tls: bool = field(default=False, metadata=_key("forceTLS"))

    @property
    def enabled(self) -> bool:
        return bool(self.root_ca_files or self.root_ca_data or self.force_tls)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupTLSConfig:
    server: ServerTLSConfig = field(default_factory=ServerTLSConfig)
    client: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpirationChecksConfig:
    warning_window: float = field(default=0.0, metadata=_kind("duration"))
    error_window: float = field(default=0.0, metadata=_kind("duration"))
    check_interval: float = field(default=0.0, metadata=_kind("duration"))  # 0 = disabled


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    frontend: GroupTLSConfig = field(default_factory=GroupTLSConfig)
    internode: GroupTLSConfig | None = None  # None: the upstream leg is plaintext (dev stack)
    refresh_interval: float = field(default=0.0, metadata=_kind("duration"))  # 0 = never
    expiration_checks: ExpirationChecksConfig = field(default_factory=ExpirationChecksConfig)


# ------------------------------------------- authorization (Temporal's global.authorization)


@dataclass(frozen=True, slots=True, kw_only=True)
class JWTKeyProviderConfig:
    key_source_uris: tuple[str, ...] = field(default=(), metadata=_key("keySourceURIs"))
    refresh_interval: float = field(default=0.0, metadata=_kind("duration"))
    # Ours: Temporal has no timeout on JWKS fetches.
    fetch_timeout: float = field(default=10.0, metadata=_kind("duration"))
    # Ours: a private CA for https key sources; it replaces the system roots for them.
    root_ca_files: tuple[str, ...] = field(default=(), metadata=_kind("ca_list"))
    root_ca_data: tuple[str, ...] = field(default=(), metadata=_kind("pem_ca_list"))


# Ours, opt-in ("Identity without code" in the README): certificate rules, a mapper chain and
# identity-provider tokens. `claimMapper: default` never reads these sections.


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRuleConfig:
    """Match the verified client certificate (exact or glob) and grant `namespace:permission`."""

    spiffe_id: str = field(default="", metadata=_key("spiffeId"))
    uri: str = ""
    dns_name: str = ""
    common_name: str = ""
    organizational_unit: str = ""
    subject: str = ""
    grants: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainConfig:
    mode: Literal["union", "jwt-only", "cert-only", "cert-and-jwt"] = "union"
    members: tuple[str, ...] = ("cert", "jwt")  # cert, and one token mapper: jwt (default) or idp


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleClaimConfig:
    path: str = ""  # dotted path into the payload, e.g. realm_access.roles; "\\." is a literal dot
    claim: str = ""  # or one literal top-level claim name, e.g. https://example.com/roles
    map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKeyFileConfig:
    file: str = ""
    kid: str = ""  # empty: the key verifies tokens without a kid header


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerConfig:
    issuer: str = ""
    jwks_uri: str = ""
    discovery: bool = False  # fetch {issuer}/.well-known/openid-configuration for jwks_uri
    discovery_uri: str = ""  # a different discovery document URL (implies discovery)
    jwks_file: str = ""  # static JWKS file (air-gapped)
    public_key_files: tuple[PublicKeyFileConfig, ...] = ()  # static PEM keys (air-gapped)
    audience: tuple[str, ...] = ()
    subject_claim: str = "sub"
    leeway: float = field(default=0.0, metadata=_kind("duration"))
    algorithms: tuple[str, ...] = ("RS256",)
    refresh_interval: float = field(default=300.0, metadata=_kind("duration"))
    refetch_interval: float = field(default=30.0, metadata=_kind("duration"))  # 0 = never
    fetch_timeout: float = field(default=10.0, metadata=_kind("duration"))
    # A private CA for this issuer's https discovery and JWKS; replaces the system roots.
    root_ca_files: tuple[str, ...] = field(default=(), metadata=_kind("ca_list"))
    root_ca_data: tuple[str, ...] = field(default=(), metadata=_kind("pem_ca_list"))
    role_claims: tuple[RoleClaimConfig, ...] = ()
    permissions_claim: str = ""  # also read a Temporal-style namespace:permission list


@dataclass(frozen=True, slots=True, kw_only=True)
class IdpConfig:
    issuers: tuple[IssuerConfig, ...] = ()


# The built-in names (`module.path:Factory` names a plugin). A new built-in claim mapper starts
# here: its name, its section below, its checks in `_validate_identity`; then claims/build.py.
CLAIM_MAPPERS = ("default", "noop", "cert", "chain", "idp")
AUTHORIZERS = ("default", "noop", "cedar")


def builtin_name(value: str, names: tuple[str, ...]) -> str:
    """A built-in name as the builders compare it: matched case-insensitively as Temporal does,
    "" meaning noop; anything else (a plugin spec, or a typo validation reports) as written."""
    lowered = value.lower()
    if lowered == "":
        return "noop"
    return lowered if lowered in names else value


@dataclass(frozen=True, slots=True, kw_only=True)
class CedarConfig:
    """Ours, opt-in (`authorizer: cedar`): Cedar policies narrowing (or replacing) the roles."""

    policy_files: tuple[str, ...] = ()  # globs; every match is loaded, each must match a file
    schema_file: str = ""  # "": the schema the proxy ships (proxy/authz/temporal.cedarschema)
    combine: Literal["default-and-policy", "policy-only"] = "default-and-policy"
    # Verified token claims copied into the principal (`principal.claims` tags), e.g. groups.
    token_claims: tuple[str, ...] = ()
    # How often the policy files are checked for changes (mtime/size); 0s: only on SIGHUP.
    reload_interval: float = field(default=5.0, metadata=_kind("duration"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationConfig:
    jwt_key_provider: JWTKeyProviderConfig = field(default_factory=JWTKeyProviderConfig)
    permissions_claim_name: str = "permissions"
    permissions_regex: str = ""
    authorizer: str = "default"  # default | noop | "" (= noop, as Temporal) | module.path:Factory
    claim_mapper: str = "default"
    auth_header_name: str = "authorization"
    auth_extra_header_name: str = "authorization-extras"
    audience: str = ""
    token_cache_size: int = 10000
    # Ours: `shadow` forwards every call and only logs/counts what `enforce` would deny.
    mode: Literal["enforce", "shadow"] = "enforce"
    # Ours: ListNamespaces for namespace-scoped callers, answered with their namespaces only.
    filter_list_namespaces: bool = False
    # Ours, opt-in: claimMapper cert | chain | idp read these.
    certificate_rules: tuple[CertificateRuleConfig, ...] = ()
    chain: ChainConfig = field(default_factory=ChainConfig)
    idp: IdpConfig = field(default_factory=IdpConfig)
    cedar: CedarConfig = field(default_factory=CedarConfig)

    def __post_init__(self) -> None:
        # Normalized once, here, however the config was made: every dispatch compares exactly.
        object.__setattr__(self, "claim_mapper", builtin_name(self.claim_mapper, CLAIM_MAPPERS))
        object.__setattr__(self, "authorizer", builtin_name(self.authorizer, AUTHORIZERS))


# ------------------------------------------------------------------------- the proxy's own


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    address: str = "0.0.0.0:7233"
    workers: int = 1  # processes sharing the port; 0 = one per CPU
    max_message_size: int = 128 * 1024 * 1024
    max_header_list_size: int = 64 * 1024
    shutdown_grace_period: float = field(default=30.0, metadata=_kind("duration"))
    # Streams one connection may hold open, announced in SETTINGS (README "Limits"): room for
    # several SDK workers' long polls on one connection, each stream ~21 KiB when held.
    max_concurrent_streams: int = 1000
    # Calls this process holds at once, all connections together; above it RESOURCE_EXHAUSTED
    # at once. ~49 KiB per held long poll: 8,000 fit the gateway's 512Mi memory limit.
    max_concurrent_calls: int = 8000


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    address: str = ""  # required: host:port of the Temporal frontend
    authorization: Literal["forward", "strip"] = "forward"
    channels: int = 1  # upstream HTTP/2 connections to spread calls over
    # grpc-core retries a call that never reached the frontend (connection lost or stream
    # refused). Off saves ~6 KiB per held call and some CPU; such a call then fails
    # UNAVAILABLE and the SDK retries it instead.
    transparent_retries: bool = True
    health_check_timeout: float = field(default=2.0, metadata=_kind("duration"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminTLSConfig:
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    address: str = "0.0.0.0:9090"
    tls: AdminTLSConfig = field(default_factory=AdminTLSConfig)
    # Connections held at once (TLS handshakes included); more are accepted and closed at once,
    # so idle sockets on this port cannot take the file descriptors gRPC needs.
    max_connections: int = 256
    # TLS handshake, and a request head from its first byte, must finish within this.
    header_timeout: float = field(default=10.0, metadata=_kind("duration"))
    # A request body must arrive completely within this once its head is in.
    body_timeout: float = field(default=30.0, metadata=_kind("duration"))
    # No request started (after connect or a response), or a reply the client stops reading.
    idle_timeout: float = field(default=30.0, metadata=_kind("duration"))


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    namespace_labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"  # warn: zap's spelling
    # Every string value in a line is cut to this many characters (with a marker).
    max_value_length: int = 1024
    # More than `repeatBurst` lines with the same (level, event, reason) per `repeatInterval`
    # are dropped and summarized in one `log_suppressed` line with a count. 0s: no limit.
    repeat_interval: float = field(default=10.0, metadata=_kind("duration"))
    repeat_burst: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    enabled: bool = False
    sink: Literal["stdout", "file"] = "stdout"
    path: str = ""
    max_bytes: int = 100 * 1024 * 1024  # rotate the file at this size
    backups: int = 5
    allowed: Literal["all", "writes", "none"] = "all"  # which allowed calls get a record
    max_value_length: int = 1024  # every caller string in a record is cut to this (with a marker)
    # Denials with the same identity, method and reason beyond `repeatBurst` per
    # `repeatInterval` become one summary record with a count, so a flood cannot rotate
    # earlier records out of the file. 0s: no limit.
    repeat_interval: float = field(default=10.0, metadata=_kind("duration"))
    repeat_burst: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitRule:
    rate: float = 0.0  # tokens per second; 0 = no limit
    burst: int = 0  # bucket size; 0 = max(1, rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitsConfig:
    enabled: bool = False
    per_subject: RateLimitRule = field(default_factory=RateLimitRule)
    per_namespace: RateLimitRule = field(default_factory=RateLimitRule)
    # Per API class, keyed by subject: reads, writes, admin.
    reads: RateLimitRule = field(default_factory=RateLimitRule)
    writes: RateLimitRule = field(default_factory=RateLimitRule)
    admin: RateLimitRule = field(default_factory=RateLimitRule)
    exempt_long_polls: bool = True
    max_buckets: int = 100_000  # memory bound: least recently used buckets are dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsConfig:
    origins: tuple[str, ...] = ()
    allow_credentials: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecConfig:
    enabled: bool = False
    # key id -> base64 of a 32-byte key, or `file:/path` holding the base64 text.
    keys: Mapping[str, str] = field(default_factory=dict, metadata=_kind("secret_map"))
    encrypt_key_id: str = ""
    # namespace (or `*`: every other namespace) -> [current key id, previous...]; the YAML also
    # takes a single key id. When set, a namespace decrypts only with its own keys.
    namespace_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata=_kind("one_or_list")
    )
    compress: bool = False
    # Bounds on one codec request (hostile clients): body size (413 over it), payloads per
    # request and JSON nesting depth (400); at most 64 JSON values per allowed payload.
    max_body_bytes: int = 8 * 1024 * 1024
    max_payloads: int = 1000
    max_json_depth: int = 16
    # Requests that may hold a body (read, parse, answer) at once; parsing runs on as many
    # worker threads, never on the event loop shared with the gRPC proxy.
    max_concurrent_requests: int = 2
    # Serve the endpoints under this path (`/codec` -> `/codec/decode`); empty: at the root.
    path_prefix: str = ""
    cors: CorsConfig = field(default_factory=CorsConfig)
    # None: required exactly when JWT is configured.
    require_authorization: bool | None = None
    # Without authorization the codec decrypts and encrypts for anyone who reaches the admin
    # port; on an address that is not loopback that must be said here (startup refuses else).
    allow_unauthenticated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceEncryptionConfig:
    key_id: str = ""  # required: the codec.keys id new payloads of the namespace are sealed with


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptionConfig:
    """Payload encryption at the proxy (README "Encryption at the proxy"); keys from codec.keys."""

    # Namespaces not listed are untouched.
    namespaces: Mapping[str, NamespaceEncryptionConfig] = field(default_factory=dict)
    # A request field this proxy's API does not know could hide a payload: refuse or count it.
    unknown_fields: Literal["reject", "forward"] = "reject"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    authorization: AuthorizationConfig = field(default_factory=AuthorizationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)


# ------------------------------------------------------------------------------ parsing

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


def _yaml_key(f: dataclasses.Field[Any]) -> str:
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
            if raw > _MAX_INT:
                raise ConfigError(path, f"must be at most {_MAX_INT}")
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
        fields = {_yaml_key(f): f for f in dataclasses.fields(cls)}
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


def _validate(cfg: Config) -> None:
    """Temporal's own rules plus ours; everything that needs no file access."""
    groups: list[tuple[str, GroupTLSConfig]] = [("tls.frontend", cfg.tls.frontend)]
    if cfg.tls.internode is not None:
        groups.append(("tls.internode", cfg.tls.internode))
    for gpath, g in groups:
        s, c = g.server, g.client
        pairs = (
            ("certFile", s.cert_file, "certData", s.cert_data),
            ("keyFile", s.key_file, "keyData", s.key_data),
            ("clientCaFiles", s.client_ca_files, "clientCaData", s.client_ca_data),
        )
        for a, av, b, bv in pairs:
            if av and bv:
                raise ConfigError(f"{gpath}.server.{a}", f"cannot specify both {a} and {b}")
        if c.root_ca_files and c.root_ca_data:
            raise ConfigError(
                f"{gpath}.client.rootCaFiles", "cannot specify both rootCaFiles and rootCaData"
            )
        has_cert = bool(s.cert_file or s.cert_data)
        has_key = bool(s.key_file or s.key_data)
        if has_key and not has_cert:
            raise ConfigError(
                f"{gpath}.server.certFile", "a key is configured without a certificate"
            )
        if has_cert and not has_key:
            raise ConfigError(
                f"{gpath}.server.keyFile", "a certificate is configured without a key"
            )
    fe = cfg.tls.frontend.server
    if fe.require_client_auth and not fe.enabled:
        raise ConfigError(
            "tls.frontend.server.requireClientAuth", "requires a server certificate and key"
        )
    if fe.require_client_auth and not (fe.client_ca_files or fe.client_ca_data):
        # Go would fall back to the system roots: anyone with a public certificate could connect.
        raise ConfigError(
            "tls.frontend.server.clientCaFiles",
            "requireClientAuth needs clientCaFiles or clientCaData",
        )
    if cfg.tls.internode is not None:
        c = cfg.tls.internode.client
        if c.disable_host_verification:
            raise ConfigError(
                "tls.internode.client.disableHostVerification",
                "is not supported: grpcio cannot skip certificate verification; "
                "set serverName instead",
            )
        if not c.enabled:
            raise ConfigError(
                "tls.internode.client", "needs rootCaFiles, rootCaData or forceTLS: true"
            )
    if not cfg.upstream.address:
        raise ConfigError("upstream.address", "is required (host:port of the Temporal frontend)")
    addresses = (
        ("listen.address", cfg.listen.address),
        ("upstream.address", cfg.upstream.address),
        ("admin.address", cfg.admin.address),
    )
    for key, value in addresses:
        _check_address(value, key)
    if cfg.upstream.channels < 1:
        raise ConfigError("upstream.channels", "must be at least 1")
    if cfg.listen.max_message_size < 1024:
        raise ConfigError("listen.maxMessageSize", "must be at least 1024 bytes")
    for key, size in (
        ("listen.maxMessageSize", cfg.listen.max_message_size),
        ("listen.maxHeaderListSize", cfg.listen.max_header_list_size),
    ):
        if size > _GRPC_MAX_SIZE:
            raise ConfigError(key, f"must be at most {_GRPC_MAX_SIZE} (grpc's limit)")
    for key, count in (
        ("listen.maxConcurrentStreams", cfg.listen.max_concurrent_streams),
        ("listen.maxConcurrentCalls", cfg.listen.max_concurrent_calls),
    ):
        # 0 would refuse every call; unlimited is what the attacks in SECURITY.md exploit.
        if not 1 <= count <= _GRPC_MAX_SIZE:
            raise ConfigError(key, f"must be between 1 and {_GRPC_MAX_SIZE}")
    az = cfg.authorization
    for key, value, names in (
        ("authorization.authorizer", az.authorizer, AUTHORIZERS),
        ("authorization.claimMapper", az.claim_mapper, CLAIM_MAPPERS),
    ):
        if value not in names and ":" not in value:
            raise ConfigError(
                key, f"unknown value {value!r} ({', '.join(names)} or module.path:Factory)"
            )
    if az.claim_mapper == "default" and not [
        u for u in az.jwt_key_provider.key_source_uris if u.strip()
    ]:
        raise ConfigError(
            "authorization.jwtKeyProvider.keySourceURIs",
            "claimMapper default needs at least one key source (or set claimMapper: noop)",
        )
    if not az.auth_header_name.strip():
        raise ConfigError("authorization.authHeaderName", "must not be empty")
    kp = az.jwt_key_provider
    _validate_ca(
        "authorization.jwtKeyProvider", kp.root_ca_files, kp.root_ca_data, kp.key_source_uris
    )
    _validate_identity(cfg)
    _validate_cedar(az)
    if cfg.admin.tls.enabled and not (cfg.admin.tls.cert_file and cfg.admin.tls.key_file):
        raise ConfigError("admin.tls", "needs both certFile and keyFile")
    if cfg.admin.max_connections < 1:
        raise ConfigError("admin.maxConnections", "must be at least 1")
    for key, seconds in (
        ("admin.headerTimeout", cfg.admin.header_timeout),
        ("admin.bodyTimeout", cfg.admin.body_timeout),
        ("admin.idleTimeout", cfg.admin.idle_timeout),
    ):
        if seconds <= 0:
            raise ConfigError(key, "must be positive (an unbounded admin timeout is a DoS hole)")
    for key, length in (
        ("log.maxValueLength", cfg.log.max_value_length),
        ("audit.maxValueLength", cfg.audit.max_value_length),
    ):
        if length < 64:
            raise ConfigError(key, "must be at least 64")
    for key, burst in (
        ("log.repeatBurst", cfg.log.repeat_burst),
        ("audit.repeatBurst", cfg.audit.repeat_burst),
    ):
        if burst < 1:
            raise ConfigError(key, "must be at least 1")
    if cfg.audit.enabled and cfg.audit.sink == "file" and not cfg.audit.path:
        raise ConfigError("audit.path", "is required when audit.sink is file")
    if cfg.rate_limits.max_buckets < 3:
        # One call may touch three buckets; fewer would evict its own buckets.
        raise ConfigError("rateLimits.maxBuckets", "must be at least 3")
    if cfg.audit.enabled and cfg.audit.sink == "file" and cfg.listen.workers != 1:
        # Several processes rotating one file lose records; one sink per process is stdout.
        raise ConfigError("audit.sink", "file needs listen.workers: 1 (use stdout with workers)")
    if cfg.codec.enabled:
        if not cfg.codec.keys:
            raise ConfigError(
                "codec.keys", "at least one key is required when the codec is enabled"
            )
        # With namespaceKeys every namespace's current key is listed there; the shared
        # current key is then optional.
        codec = cfg.codec
        if (codec.encrypt_key_id or not codec.namespace_keys) and (
            codec.encrypt_key_id not in codec.keys
        ):
            raise ConfigError("codec.encryptKeyId", "must name one of codec.keys")
        for ns, kids in codec.namespace_keys.items():
            if not kids:
                raise ConfigError(f"codec.namespaceKeys.{ns}", "needs at least one key id")
            for i, kid in enumerate(kids):
                if kid not in codec.keys:
                    where = f"codec.namespaceKeys.{ns}" + (f"[{i}]" if len(kids) > 1 else "")
                    raise ConfigError(where, f"key id {kid!r} is not in codec.keys")
        for name, bound, low in (
            ("maxBodyBytes", codec.max_body_bytes, 1024),
            ("maxPayloads", codec.max_payloads, 1),
            ("maxJsonDepth", codec.max_json_depth, 4),  # {"payloads": [{"metadata": {}}]}
            ("maxConcurrentRequests", codec.max_concurrent_requests, 1),
        ):
            if bound < low:
                raise ConfigError(f"codec.{name}", f"must be at least {low}")
        validate_codec_exposure(cfg)
        prefix = codec.path_prefix
        if prefix and (
            not prefix.startswith("/")
            or prefix.endswith("/")
            or "//" in prefix
            or any(c in prefix for c in "{}?#%\\ ")
        ):
            raise ConfigError(
                "codec.pathPrefix",
                "must be empty or a path such as /codec (leading /, no trailing /, "
                "no braces, ?, #, % or spaces)",
            )
    _validate_encryption(cfg)


def codec_requires_authorization(cfg: Config) -> bool:
    """`codec.requireAuthorization`, defaulting to "yes when JWT (or any claim mapper) is on"."""
    if cfg.codec.require_authorization is not None:
        return cfg.codec.require_authorization
    az = cfg.authorization
    has_jwt_keys = any(uri.strip() for uri in az.jwt_key_provider.key_source_uris)
    # A plugin claim mapper is fail-closed too: it exists to check credentials.
    return has_jwt_keys or az.claim_mapper != "noop"


def is_loopback_address(address: str) -> bool:
    """`host:port` binds loopback only: 127.0.0.0/8, ::1 or the name `localhost`.

    Any other name counts as exposed: it may resolve to anything."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def validate_codec_exposure(cfg: Config) -> None:
    """An unauthenticated codec off loopback is an open decrypt/encrypt oracle: opt in by name."""
    if (
        not cfg.codec.enabled
        or cfg.codec.allow_unauthenticated
        or codec_requires_authorization(cfg)
        or is_loopback_address(cfg.admin.address)
    ):
        return
    why = (
        "is false"
        if cfg.codec.require_authorization is False
        else "is not set and no JWT keys or claim mapper are configured"
    )
    raise ConfigError(
        "codec.allowUnauthenticated",
        f"codec.requireAuthorization {why}, so anyone who reaches admin.address "
        f"{cfg.admin.address} (not loopback) could decrypt and encrypt payloads; "
        "set codec.requireAuthorization: true with a claim mapper, bind admin.address to "
        "127.0.0.1, or set codec.allowUnauthenticated: true to serve it unauthenticated "
        "on purpose",
    )


def _validate_encryption(cfg: Config) -> None:
    """Every encrypted namespace names a key of `codec.keys` its Codec Server keys allow."""
    codec = cfg.codec
    for ns, nsc in cfg.encryption.namespaces.items():
        path = f"encryption.namespaces.{ns}"
        if not ns.strip() or ns == WILDCARD:
            raise ConfigError(path, "must name one namespace (not empty, not *)")
        if not nsc.key_id:
            raise ConfigError(f"{path}.keyId", "is required (a key id of codec.keys)")
        if nsc.key_id not in codec.keys:
            raise ConfigError(f"{path}.keyId", f"key id {nsc.key_id!r} is not in codec.keys")
        if codec.namespace_keys:
            allowed = codec.namespace_keys.get(ns, codec.namespace_keys.get(WILDCARD))
            if allowed is None:
                # The Codec Server could not decode this namespace's payloads for the UI/CLI.
                raise ConfigError(path, "codec.namespaceKeys gives this namespace no keys")
            if nsc.key_id not in allowed:
                raise ConfigError(
                    f"{path}.keyId",
                    f"key id {nsc.key_id!r} is not one of codec.namespaceKeys for {ns!r}",
                )


WILDCARD = "*"  # codec.namespaceKeys' "every other namespace"
_CHAIN_MEMBERS = ("cert", "jwt", "idp")


def _validate_cedar(az: AuthorizationConfig) -> None:
    """The keys; the files themselves are loaded and validated by the authorizer's builder."""
    cedar = az.cedar
    if az.authorizer != "cedar":
        if cedar != CedarConfig():
            # Policies that are written but never consulted would be a silent hole.
            raise ConfigError(
                "authorization.cedar", "is set but authorization.authorizer is not cedar"
            )
        return
    if not [p for p in cedar.policy_files if p.strip()]:
        raise ConfigError(
            "authorization.cedar.policyFiles", "authorizer cedar needs at least one file"
        )
    for i, pattern in enumerate(cedar.policy_files):
        if not pattern.strip():
            raise ConfigError(f"authorization.cedar.policyFiles[{i}]", "must not be empty")
    for i, name in enumerate(cedar.token_claims):
        if not name.strip() or name != name.strip():
            raise ConfigError(
                f"authorization.cedar.tokenClaims[{i}]", "must be a claim name without spaces"
            )
    if len(set(cedar.token_claims)) != len(cedar.token_claims):
        raise ConfigError("authorization.cedar.tokenClaims", "lists a claim twice")
    if cedar.reload_interval < 0:
        raise ConfigError("authorization.cedar.reloadInterval", "must not be negative")


def identity_members(az: AuthorizationConfig) -> frozenset[str]:
    """The mappers `claimMapper` puts to use: cert, jwt (Temporal's default) and/or idp."""
    name = az.claim_mapper
    if name == "default":
        return frozenset({"jwt"})
    if name in ("cert", "idp"):
        return frozenset({name})
    if name != "chain":
        return frozenset()
    members = set(az.chain.members)
    if az.chain.mode == "cert-only":
        members &= {"cert"}
    elif az.chain.mode == "jwt-only":
        members -= {"cert"}
    return frozenset(members)


def _validate_identity(cfg: Config) -> None:
    """claimMapper cert | chain | idp: the sections they read, checked before anything starts.

    Patterns, grants and key files are checked when the mappers are built (also at startup)."""
    az = cfg.authorization
    name = az.claim_mapper
    if name == "chain":
        members = az.chain.members
        for i, member in enumerate(members):
            if member not in _CHAIN_MEMBERS:
                raise ConfigError(
                    f"authorization.chain.members[{i}]",
                    f"unknown member {member!r} ({', '.join(_CHAIN_MEMBERS)})",
                )
        if len(set(members)) != len(members):
            raise ConfigError("authorization.chain.members", "lists a member twice")
        if "jwt" in members and "idp" in members:
            raise ConfigError(
                "authorization.chain.members", "use one token mapper: jwt or idp, not both"
            )
        mode = az.chain.mode
        has_token = "jwt" in members or "idp" in members
        if not members:
            raise ConfigError("authorization.chain.members", "must not be empty")
        if mode in ("cert-and-jwt", "cert-only") and "cert" not in members:
            raise ConfigError("authorization.chain.members", f"mode {mode} needs cert")
        if mode in ("cert-and-jwt", "jwt-only") and not has_token:
            raise ConfigError("authorization.chain.members", f"mode {mode} needs jwt or idp")
    used = identity_members(az)
    if (
        name == "chain"
        and "jwt" in used
        and not [u for u in az.jwt_key_provider.key_source_uris if u.strip()]
    ):
        raise ConfigError(
            "authorization.jwtKeyProvider.keySourceURIs",
            "chain member jwt (Temporal's default mapper) needs at least one key source",
        )
    if "cert" in used:
        if not az.certificate_rules:
            raise ConfigError(
                "authorization.certificateRules", f"claimMapper {name} needs at least one rule"
            )
        if not cfg.tls.frontend.server.require_client_auth:
            # grpcio cannot ask for an optional client certificate: without this there is none.
            raise ConfigError(
                "tls.frontend.server.requireClientAuth",
                f"claimMapper {name} maps client certificates: set requireClientAuth: true",
            )
    if "idp" in used:
        _validate_idp(az.idp)


def _validate_idp(idp: IdpConfig) -> None:
    if not idp.issuers:
        raise ConfigError("authorization.idp.issuers", "at least one issuer is required")
    seen: set[str] = set()
    for i, iss in enumerate(idp.issuers):
        path = f"authorization.idp.issuers[{i}]"
        if not iss.issuer:
            raise ConfigError(f"{path}.issuer", "is required")
        if iss.issuer in seen:
            raise ConfigError(f"{path}.issuer", f"{iss.issuer!r} is configured twice")
        seen.add(iss.issuer)
        remote = [
            k
            for k, v in (
                ("jwksUri", iss.jwks_uri),
                ("discovery", iss.discovery or iss.discovery_uri),
            )
            if v
        ]
        if len(remote) > 1:
            raise ConfigError(f"{path}.jwksUri", "give jwksUri or discovery, not both")
        if not remote and not iss.jwks_file and not iss.public_key_files:
            raise ConfigError(path, "needs keys: jwksUri, discovery, jwksFile or publicKeyFiles")
        for j, pk in enumerate(iss.public_key_files):
            if not pk.file:
                raise ConfigError(f"{path}.publicKeyFiles[{j}].file", "is required")
        if not [a for a in iss.audience if a.strip()]:
            raise ConfigError(
                f"{path}.audience",
                "at least one audience is required (tokens for other applications of the "
                "same identity provider must not pass)",
            )
        if not iss.algorithms:
            raise ConfigError(f"{path}.algorithms", "at least one algorithm is required")
        for j, alg in enumerate(iss.algorithms):
            if alg not in IDP_ALGORITHMS:
                raise ConfigError(
                    f"{path}.algorithms[{j}]",
                    f"{alg!r} is not allowed (one of {', '.join(IDP_ALGORITHMS)}; "
                    "HMAC and none never are)",
                )
        if iss.leeway > 600:
            raise ConfigError(f"{path}.leeway", "must be at most 10m")
        if not iss.subject_claim:
            raise ConfigError(f"{path}.subjectClaim", "must not be empty")
        if iss.fetch_timeout <= 0:
            raise ConfigError(f"{path}.fetchTimeout", "must be positive")
        remote_uri = iss.jwks_uri or iss.discovery_uri or (iss.issuer if iss.discovery else "")
        _validate_ca(path, iss.root_ca_files, iss.root_ca_data, (remote_uri,))
        if not iss.role_claims and not iss.permissions_claim:
            raise ConfigError(
                f"{path}.roleClaims", "map at least one claim (roleClaims or permissionsClaim)"
            )


def _validate_ca(
    path: str, files: tuple[str, ...], data: tuple[str, ...], uris: tuple[str, ...]
) -> None:
    """A key source's private CA: one form, and an https URI it can apply to."""
    if files and data:
        raise ConfigError(f"{path}.rootCaFiles", "cannot specify both rootCaFiles and rootCaData")
    key = "rootCaFiles" if files else "rootCaData"
    if (files or data) and not any(u.strip().lower().startswith("https://") for u in uris):
        # A CA that verifies nothing is a mistake: an http source would stay unauthenticated.
        raise ConfigError(f"{path}.{key}", "applies to https key sources, and none is configured")


IDP_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _check_address(value: str, path: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ConfigError(path, f"expected host:port, got {value!r}")


def parse_config(raw: object, env: Mapping[str, str] | None = None) -> Config:
    cfg: Config = _Parser(os.environ if env is None else env).section(Config, raw, "")
    _validate(cfg)
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
            out[_yaml_key(f)] = _dump(getattr(obj, f.name), f.metadata.get("kind", ""))
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
