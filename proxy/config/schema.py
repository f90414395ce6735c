"""The configuration's shape: frozen dataclasses, their YAML names and defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

MAX_INT = 2**53  # no count or size here needs more; keeps YAML ints sane


GRPC_MAX_SIZE = 2**31 - 1  # grpc channel args are C ints


def _key(name: str, *, kind: str = "") -> dict[str, str]:
    return {"key": name, "kind": kind}


def _kind(kind: str) -> dict[str, str]:
    return {"kind": kind}


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


@dataclass(frozen=True, slots=True, kw_only=True)
class JWTKeyProviderConfig:
    key_source_uris: tuple[str, ...] = field(default=(), metadata=_key("keySourceURIs"))
    refresh_interval: float = field(default=0.0, metadata=_kind("duration"))
    # Ours: Temporal has no timeout on JWKS fetches.
    fetch_timeout: float = field(default=10.0, metadata=_kind("duration"))
    # Ours: a private CA for https key sources; it replaces the system roots for them.
    root_ca_files: tuple[str, ...] = field(default=(), metadata=_kind("ca_list"))
    root_ca_data: tuple[str, ...] = field(default=(), metadata=_kind("pem_ca_list"))


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
# here: its name, its section below, its checks in `validate_identity`; then claims/build.py.
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


WILDCARD = "*"  # codec.namespaceKeys' "every other namespace"


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
