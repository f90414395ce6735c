"""Values that cross module boundaries. Frozen, slotted, keyword-only; no I/O, no grpc."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Role(enum.IntFlag):
    """Temporal's role bitmask. The default authorizer compares the values numerically."""

    UNDEFINED = 0
    WORKER = 1
    READER = 2
    WRITER = 4
    ADMIN = 8


SYSTEM_NAMESPACE = "temporal-system"


class Scope(enum.Enum):
    CLUSTER = "cluster"
    NAMESPACE = "namespace"


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class Reason(enum.StrEnum):
    """The closed set of decision reasons: metric label values and log fields (see README)."""

    ALLOWED = "allowed"
    HEALTH_CHECK = "health_check"
    NOOP = "noop"
    NO_CREDENTIALS = "no_credentials"
    INSUFFICIENT_ROLE = "insufficient_role"
    UNKNOWN_METHOD = "unknown_method"
    MALFORMED_REQUEST = "malformed_request"
    BAD_TOKEN_FORMAT = "bad_token_format"
    INVALID_TOKEN = "invalid_token"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    AUDIENCE_MISMATCH = "audience_mismatch"
    ISSUER_MISMATCH = "issuer_mismatch"
    BAD_SUBJECT = "bad_subject"
    NO_KEYS = "no_keys"
    CERTIFICATE_REQUIRED = "certificate_required"
    BAD_CERTIFICATE = "bad_certificate"
    TOKEN_REQUIRED = "token_required"
    AUTHORIZER_ERROR = "authorizer_error"
    POLICY_DENIED = "policy_denied"
    CLAIM_MAPPER_ERROR = "claim_mapper_error"


class AuthType(enum.StrEnum):
    """Closed set for the `auth_type` metric label."""

    JWT = "jwt"
    CERT = "cert"
    NONE = "none"
    NOOP = "noop"
    OTHER = "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerIdentity:
    """The verified client certificate, parsed once per connection."""

    subject: str
    common_name: str = ""
    organizational_units: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    spiffe_id: str = ""
    # The subject parsed, for subject rules: RDNs in RFC 4514 order (`CN=w,O=Acme`: CN first),
    # each a tuple of (attribute type as a dotted OID, value; None when not a string). None
    # when only grpc's rendered string is known: then no subject rule matches.
    subject_rdns: tuple[tuple[tuple[str, str | None], ...], ...] | None = None
    # Go's crypto/tls (so Temporal) only accepts client certificates whose extended key usage
    # allows clientAuth (or has no EKU extension); BoringSSL in grpcio does not check it.
    client_auth: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthInfo:
    """What the caller presented. `token` is the raw header value, `Bearer ` prefix included."""

    token: str = ""
    extra: str = ""
    peer: PeerIdentity | None = None
    audience: str = ""

    def __repr__(self) -> str:
        # Never let a token reach a log line through repr().
        has = "yes" if self.token else "no"
        return f"AuthInfo(token=<{has}>, peer={self.peer!r}, audience={self.audience!r})"


def _frozen_roles(roles: Mapping[str, Role] | None) -> Mapping[str, Role]:
    return MappingProxyType(dict(roles or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    subject: str = ""
    system: Role = Role.UNDEFINED
    namespaces: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))
    auth_type: str = "jwt"
    # For policy engines (Cedar): the verified certificate of the call, and the token claims
    # the config exposes, each normalised to a tuple of strings (a string claim is one value;
    # claims of other types are left out). Empty unless a claim mapper fills them.
    peer: PeerIdentity | None = None
    token_claims: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @staticmethod
    def build(
        *,
        subject: str = "",
        system: Role = Role.UNDEFINED,
        namespaces: Mapping[str, Role] | None = None,
        auth_type: str = "jwt",
        peer: PeerIdentity | None = None,
        token_claims: Mapping[str, tuple[str, ...]] | None = None,
    ) -> Claims:
        return Claims(
            subject=subject,
            system=system,
            namespaces=_frozen_roles(namespaces),
            auth_type=auth_type,
            peer=peer,
            token_claims=MappingProxyType(dict(token_claims or {})),
        )

    def role_in(self, namespace: str) -> Role:
        """Role for a namespace-scoped call: system role OR the namespace's own.

        No namespace is named "": a call without one (by id, by task token) needs a system role,
        whatever a claim mapper put under the empty key.
        """
        if not namespace:
            return self.system
        return self.system | self.namespaces.get(namespace, Role.UNDEFINED)


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodInfo:
    """One row of the method table."""

    full_name: str
    short_name: str
    scope: Scope
    access: Access
    namespace_field: int | None
    polling: bool = False
    # Request attributes a policy engine may read: (name, field-number path to a string).
    attributes: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTarget:
    api_name: str
    namespace: str = ""
    request: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    decision: Decision
    reason: Reason
    # Ids of the policies that decided (policy engines only; ids come from config).
    policies: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


ALLOW_HEALTH = Result(decision=Decision.ALLOW, reason=Reason.HEALTH_CHECK)
ALLOW = Result(decision=Decision.ALLOW, reason=Reason.ALLOWED)
