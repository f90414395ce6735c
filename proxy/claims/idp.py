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

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.claims.jwt import parse_authorization_header, parse_permissions
from proxy.claims.patterns import Glob, Grant, PatternError, RoleAccumulator, parse_grants
from proxy.errors import CredentialError
from proxy.keys import IdpKeys, Logger, VerificationKey
from proxy.model import AuthInfo, AuthType, Claims, Reason

AUTH_TYPE = AuthType.JWT.value
MIN_RSA_BITS = 2048

_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
# alg -> (EC curve name, coordinate size in bytes)
_EC_ALGS: Mapping[str, tuple[str, int]] = {
    "ES256": ("secp256r1", 32),
    "ES384": ("secp384r1", 48),
    "ES512": ("secp521r1", 66),
}
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256",)
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PATH_SPLIT = re.compile(r"(?<!\\)\.")


def _fail(reason: Reason, detail: str) -> CredentialError:
    return CredentialError(reason, detail)


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


# ------------------------------------------------------------------------ token parsing


def _b64url(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise _fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards it
        raise _fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not base64url") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise _fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not a JSON object")
    return value


def _number(payload: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise _fail(Reason.INVALID_TOKEN, f"{name!r} claim is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(Reason.INVALID_TOKEN, f"{name!r} claim is not a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise _fail(Reason.INVALID_TOKEN, f"{name!r} claim is out of range") from exc
    if not math.isfinite(number):
        raise _fail(Reason.INVALID_TOKEN, f"{name!r} claim is out of range")
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
    key = vk.key
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if alg in _EC_ALGS:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_ALGS[alg][0]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def verify_signature(alg: str, vk: VerificationKey, signing_input: bytes, sig: bytes) -> bool:
    """True iff `sig` is a valid `alg` signature by `vk` (which must fit `alg`)."""
    key = vk.key
    try:
        if alg[:2] in ("RS", "PS"):
            assert isinstance(key, rsa.RSAPublicKey)
            if len(sig) != (key.key_size + 7) // 8:
                return False
            digest = _HASHES[alg[2:]]()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg[0] == "R"
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            )
            key.verify(sig, signing_input, pad, digest)
            return True
        if alg in _EC_ALGS:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            size = _EC_ALGS[alg][1]
            if len(sig) != 2 * size:  # JWS uses raw R||S, never DER
                return False
            r = int.from_bytes(sig[:size], "big")
            s = int.from_bytes(sig[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
            return True
        if alg == "EdDSA":
            assert isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
            key.verify(sig, signing_input)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


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
    ) -> None:
        self._policies = {p.issuer: p for p in policies}
        if not self._policies:
            raise ValueError("at least one issuer is required")
        for issuer in self._policies:
            if keys.issuer(issuer) is None:
                raise ValueError(f"no keys configured for issuer {issuer!r}")
        self._keys = keys
        self._clock = clock
        self._cache_size = cache_size
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        # (header, audience) -> (claims, serve while clock() < deadline, issuer, key generation)
        self._cache: OrderedDict[tuple[str, str], tuple[Claims, float, str, int]] = OrderedDict()

    def auth_info_required(self) -> bool:
        return True

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        header = auth_info.token
        if not header:
            # As Temporal's mapper: a certificate without a token gets empty claims.
            return Claims(auth_type=AUTH_TYPE)
        now = self._clock()
        key = (header, auth_info.audience)
        entry = self._cache.get(key)
        if entry is not None:
            claims, deadline, issuer, generation = entry
            keys = self._keys.issuer(issuer)
            if now < deadline and keys is not None and keys.generation == generation:
                self._cache.move_to_end(key)
                return claims
            del self._cache[key]
        claims, deadline, issuer, generation = await self._verify(header, auth_info.audience, now)
        if self._cache_size:
            self._cache[key] = (claims, deadline, issuer, generation)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    async def _verify(
        self, header: str, request_audience: str, now: float
    ) -> tuple[Claims, float, str, int]:
        token = parse_authorization_header(header)
        parts = token.split(".")
        if len(parts) != 3:
            raise _fail(Reason.BAD_TOKEN_FORMAT, "token does not have 3 segments")
        head = _json_object(_b64url(parts[0], "header"), "header")
        payload = _json_object(_b64url(parts[1], "payload"), "payload")
        signature = _b64url(parts[2], "signature")

        if "crit" in head:
            raise _fail(Reason.INVALID_TOKEN, "token has critical header extensions")
        alg = head.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _fail(Reason.UNSUPPORTED_ALGORITHM, "signing method is not allowed")
        issuer = payload.get("iss")
        policy = self._policies.get(issuer) if isinstance(issuer, str) else None
        if policy is None:
            raise _fail(Reason.ISSUER_MISMATCH, "token issuer is not configured")
        if alg not in policy.algorithms:
            raise _fail(Reason.UNSUPPORTED_ALGORITHM, f"signing method {alg} is not allowed")
        kid = head.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _fail(Reason.INVALID_TOKEN, "'kid' header is not a string")

        keys = self._keys.issuer(policy.issuer)
        assert keys is not None  # checked in __init__
        generation = keys.generation
        candidates = [vk for vk in await keys.keys_for(kid) if key_fits(alg, vk)]
        if not candidates:
            if not keys.loaded:
                raise _fail(Reason.NO_KEYS, "no verification keys loaded yet")
            raise _fail(Reason.UNKNOWN_KEY, "no key of this issuer fits the token")
        generation = keys.generation  # a refetch may have changed it
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not any(verify_signature(alg, vk, signing_input, signature) for vk in candidates):
            raise _fail(Reason.BAD_SIGNATURE, "signature does not verify")

        leeway = policy.leeway
        exp = _number(payload, "exp", required=True)
        assert exp is not None
        nbf = _number(payload, "nbf", required=False)
        iat = _number(payload, "iat", required=False)
        if now >= exp + leeway:
            raise _fail(Reason.TOKEN_EXPIRED, "token is expired")
        if nbf is not None and now + leeway < nbf:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "token is not valid yet")
        if iat is not None and now + leeway < iat:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "token used before issued")

        token_audiences = _audiences(payload.get("aud"))
        if not policy.audiences.intersection(token_audiences):
            raise _fail(Reason.AUDIENCE_MISMATCH, "audience mismatch")
        if request_audience.strip() and request_audience not in token_audiences:
            raise _fail(Reason.AUDIENCE_MISMATCH, "audience mismatch")

        subject = payload.get(policy.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise _fail(Reason.BAD_SUBJECT, "subject claim is missing or not a string")

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
        )
        return claims, exp + leeway, policy.issuer, generation
