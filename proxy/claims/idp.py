"""Identity-provider JWT mapper (`claimMapper: idp`): the tokens real IdPs issue -> claims.

Separate from Temporal's default mapper, whose behaviour never changes. Per issuer: its own keys
(JWKS, discovery, static), audience (required), algorithm allow-list (asymmetric only: HMAC and
`none` can never be configured), leeway, subject claim, and tables that map values found at
claim paths (`realm_access.roles`, `groups`, `scp`, ...) to `namespace:permission` grants.

Checks, in order, each failing closed with a `CredentialError`: `Bearer` header; three base64url
segments with JSON object header and payload; no `crit` header; `alg` a known asymmetric JWS
algorithm; `iss` one of the configured issuers; `alg` in that issuer's allow-list; `kid` a string
when present; a key of that issuer compatible with `alg` (refetch once, rate-limited, when the
kid is unknown); the signature; `exp` present and not past (with leeway), `nbf`/`iat` not in the
future (with leeway); `aud` naming one of the issuer's audiences; a non-empty string subject.
Token text never reaches a log line or an error message.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.claims import token
from proxy.claims.exposed import PeerAttacher, expose_claims
from proxy.claims.jwt import parse_permissions
from proxy.claims.patterns import Glob, Grant, PatternError, RoleAccumulator, parse_grants
from proxy.claims.token import JsonDialect, TokenCache, Verified, decode_jws, fail
from proxy.interfaces import Logger
from proxy.keys.idp import IdpKeys, VerificationKey
from proxy.model import AuthInfo, AuthType, Claims, Reason

AUTH_TYPE = AuthType.JWT.value
# A certificate without a token: Temporal's empty claims, labelled `none` (no credential counted).
_EMPTY = Claims(auth_type=AuthType.NONE.value)
MIN_RSA_BITS = 2048
ALGORITHMS = token.ALGORITHMS  # asymmetric only: HMAC and `none` can never be configured
DEFAULT_ALGORITHMS = ("RS256",)
_PATH_SPLIT = re.compile(r"(?<!\\)\.")


# ------------------------------------------------------------------------ role tables


@dataclass(frozen=True, slots=True)
class RoleClaim:
    """Where to look in the payload and what each value found there grants."""

    path: tuple[str, ...]
    exact: Mapping[str, tuple[Grant, ...]]
    globs: tuple[tuple[Glob, tuple[Grant, ...]], ...] = ()

    @staticmethod
    def build(*, path: str = "", claim: str = "", table: Mapping[str, Sequence[str]]) -> RoleClaim:
        """`path` is dotted (`\\.` for a literal dot); `claim` is one literal top-level name."""
        if bool(path) == bool(claim):
            raise PatternError("give exactly one of path or claim")
        segments = (
            (claim,) if claim else tuple(s.replace("\\.", ".") for s in _PATH_SPLIT.split(path))
        )
        if not all(segments):
            raise PatternError(f"path {path!r} has an empty segment")
        if not table:
            raise PatternError("the map must not be empty")
        exact: dict[str, tuple[Grant, ...]] = {}
        globs: list[tuple[Glob, tuple[Grant, ...]]] = []
        for value, grants in table.items():
            if not grants:
                raise PatternError(f"value {value!r} grants nothing")
            if "*" in value:
                glob = Glob.compile(value, separator="/")
                globs.append((glob, parse_grants(grants, glob.captures)))
            else:
                exact[value] = parse_grants(grants, 0)
        return RoleClaim(path=segments, exact=exact, globs=tuple(globs))

    def values(self, payload: Mapping[str, Any]) -> list[str]:
        node: Any = payload
        for segment in self.path:
            if not isinstance(node, dict):
                return []
            node = node.get(segment)
        if isinstance(node, str):
            return node.split()  # space-separated, as OAuth's `scope` (and Azure AD's `scp`)
        if isinstance(node, list):
            return [v for v in node if isinstance(v, str)]
        return []

    def grant(self, payload: Mapping[str, Any], roles: RoleAccumulator) -> None:
        for value in self.values(payload):
            for grant in self.exact.get(value, ()):
                roles.add(grant)
            for glob, grants in self.globs:
                captures = glob.match(value)
                if captures is not None:
                    for grant in grants:
                        roles.add(grant, captures)


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerPolicy:
    """Everything checked and mapped for tokens of one issuer."""

    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str] = frozenset(DEFAULT_ALGORITHMS)
    subject_claim: str = "sub"
    leeway: float = 0.0
    role_claims: tuple[RoleClaim, ...] = ()
    permissions_claim: str = ""  # also read a Temporal-style `namespace:permission` list

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("issuer must not be empty")
        if not self.audiences or not all(self.audiences):
            raise ValueError("at least one non-empty audience is required")
        if not self.algorithms:
            raise ValueError("at least one algorithm is required")
        bad = sorted(self.algorithms - ALGORITHMS)
        if bad:
            raise ValueError(
                f"unsupported algorithm(s) {bad}; allowed: {', '.join(sorted(ALGORITHMS))}"
            )
        if self.leeway < 0 or self.leeway > 600:
            raise ValueError("leeway must be between 0s and 10m")
        if not self.subject_claim:
            raise ValueError("subject claim must not be empty")


# ------------------------------------------------------------------------ claim checks


def _number(payload: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise fail(Reason.INVALID_TOKEN, f"{name!r} claim is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(Reason.INVALID_TOKEN, f"{name!r} claim is not a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise fail(Reason.INVALID_TOKEN, f"{name!r} claim is out of range") from exc
    if not math.isfinite(number):
        raise fail(Reason.INVALID_TOKEN, f"{name!r} claim is out of range")
    return number


def _audiences(aud: object) -> list[str]:
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return aud
    return []


# ------------------------------------------------------------------------ signatures


def key_fits(alg: str, vk: VerificationKey) -> bool:
    """Whether `vk` may verify an `alg` signature: type, curve, size and the JWK's own `alg`."""
    if vk.alg and vk.alg != alg:
        return False
    return token.key_fits(alg, vk.key, min_rsa_bits=MIN_RSA_BITS)


# ------------------------------------------------------------------------ the mapper


class IdpClaimMapper:
    """Claims from identity-provider tokens, with a verified-token cache (until `exp`)."""

    def __init__(
        self,
        policies: Iterable[IssuerPolicy],
        keys: IdpKeys,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10000,
        logger: Logger | None = None,
        token_claims: Sequence[str] = (),
        attach_peer: bool = False,
    ) -> None:
        """`token_claims` and `attach_peer` fill `Claims.token_claims` / `.peer` for a policy
        authorizer (authorization.cedar); off, they cost nothing."""
        self._policies = {p.issuer: p for p in policies}
        self._expose = tuple(token_claims)
        self._peers = PeerAttacher() if attach_peer else None
        if not self._policies:
            raise ValueError("at least one issuer is required")
        for issuer in self._policies:
            if keys.issuer(issuer) is None:
                raise ValueError(f"no keys configured for issuer {issuer!r}")
        self._keys = keys
        self._clock = clock
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._cache = TokenCache(cache_size)

    def auth_info_required(self) -> bool:
        return True

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        header = auth_info.token
        if not header:
            # As Temporal's mapper: a certificate without a token gets empty claims.
            claims = _EMPTY
        else:
            now = self._clock()
            cached = self._cache.lookup(header, auth_info.audience, now)
            if cached is None:
                verified = await self._verify(header, auth_info.audience, now)
                cached = self._cache.store(header, auth_info.audience, verified)
            claims = cached
        if self._peers is not None:
            claims = self._peers.attach(claims, auth_info.peer)
        return claims

    async def _verify(self, header: str, request_audience: str, now: float) -> Verified:
        jws = decode_jws(header, JsonDialect.STRICT)
        head, payload = jws.header, jws.payload
        signature = jws.signature()  # the whole token is well formed before anything else

        if "crit" in head:
            raise fail(Reason.INVALID_TOKEN, "token has critical header extensions")
        alg = head.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise fail(Reason.UNSUPPORTED_ALGORITHM, "signing method is not allowed")
        issuer = payload.get("iss")
        policy = self._policies.get(issuer) if isinstance(issuer, str) else None
        if policy is None:
            raise fail(Reason.ISSUER_MISMATCH, "token issuer is not configured")
        if alg not in policy.algorithms:
            raise fail(Reason.UNSUPPORTED_ALGORITHM, f"signing method {alg} is not allowed")
        kid = head.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise fail(Reason.INVALID_TOKEN, "'kid' header is not a string")

        keys = self._keys.issuer(policy.issuer)
        assert keys is not None  # checked in __init__
        generation = keys.generation
        candidates = [vk for vk in await keys.keys_for(kid) if key_fits(alg, vk)]
        if not candidates:
            if not keys.loaded:
                raise fail(Reason.NO_KEYS, "no verification keys loaded yet")
            raise fail(Reason.UNKNOWN_KEY, "no key of this issuer fits the token")
        generation = keys.generation  # a refetch may have changed it
        if not any(
            token.signature_valid(alg, vk.key, jws.signing_input, signature) for vk in candidates
        ):
            raise fail(Reason.BAD_SIGNATURE, "signature does not verify")

        leeway = policy.leeway
        exp = _number(payload, "exp", required=True)
        assert exp is not None
        nbf = _number(payload, "nbf", required=False)
        iat = _number(payload, "iat", required=False)
        if now >= exp + leeway:
            raise fail(Reason.TOKEN_EXPIRED, "token is expired")
        if nbf is not None and now + leeway < nbf:
            raise fail(Reason.TOKEN_NOT_YET_VALID, "token is not valid yet")
        if iat is not None and now + leeway < iat:
            raise fail(Reason.TOKEN_NOT_YET_VALID, "token used before issued")

        token_audiences = _audiences(payload.get("aud"))
        if not policy.audiences.intersection(token_audiences):
            raise fail(Reason.AUDIENCE_MISMATCH, "audience mismatch")
        if request_audience.strip() and request_audience not in token_audiences:
            raise fail(Reason.AUDIENCE_MISMATCH, "audience mismatch")

        subject = payload.get(policy.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise fail(Reason.BAD_SUBJECT, "subject claim is missing or not a string")

        roles = RoleAccumulator()
        for role_claim in policy.role_claims:
            role_claim.grant(payload, roles)
        if policy.permissions_claim:
            permissions = payload.get(policy.permissions_claim)
            if isinstance(permissions, list):
                system, namespaces = parse_permissions(permissions, None, self._log)
                roles.add_roles(system, namespaces)
        claims = Claims.build(
            subject=subject,
            system=roles.system,
            namespaces=roles.namespaces,
            auth_type=AUTH_TYPE,
            token_claims=expose_claims(payload, self._expose) if self._expose else None,
        )
        return Verified(claims=claims, deadline=exp + leeway, keys=keys, generation=generation)
