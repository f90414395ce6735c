"""The one JWS core: Bearer header, base64url, JSON rules, signature checks, verified-token cache.

Both token mappers (Temporal's `jwt` and the identity-provider `idp`) decode and verify through
here; they differ only in policy: which algorithms and keys, which claims, leeway, audience
rules, how permissions are read, and which JSON dialect (`GO` for Temporal's exact quirks).
Every failure is a `CredentialError` whose detail never contains the token or key material.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.errors import CredentialError
from proxy.model import Claims, Reason

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JSON_WS = " \t\n\r"
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
# Every asymmetric JWS algorithm (RFC 7518 plus EdDSA) this core can verify.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def fail(reason: Reason, detail: str) -> CredentialError:
    return CredentialError(reason, detail)


# ------------------------------------------------------------------------ header and segments


def parse_authorization_header(value: str) -> str:
    """The token part of `Bearer <token>`: split on the first space, scheme case-insensitive.

    No trimming, as in Temporal: `Bearer  x` yields ` x`, which then fails to parse.
    """
    scheme, sep, token = value.partition(" ")
    if not sep:
        raise fail(Reason.BAD_TOKEN_FORMAT, "unexpected authorization token format")
    if scheme.lower() != "bearer":
        raise fail(Reason.BAD_TOKEN_FORMAT, "unexpected name in authorization token")
    return token


def b64url_decode(segment: str, what: str) -> bytes:
    # RawURLEncoding: no padding, URL alphabet only (Python's decoder would skip junk).
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


# ------------------------------------------------------------------------ JSON


class JsonDialect(enum.Enum):
    """How header and payload JSON are read. Both refuse NaN/Infinity and non-objects."""

    # Go's encoding/json as golang-jwt uses it: invalid UTF-8 replaced, a number that overflows
    # float64 refused, the payload read by a stream decoder (its first value counts, trailing
    # bytes are ignored, `null` is an empty claim set).
    GO = "go"
    # RFC 8259: valid UTF-8, exactly one value.
    STRICT = "strict"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # Go refuses numbers that overflow float64
        raise ValueError("number out of range")
    return value


_GO_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def json_object(
    raw: bytes, what: str, dialect: JsonDialect, *, stream: bool = False
) -> dict[str, Any]:
    """`raw` as a JSON object; `stream` (GO only) reads the first value as the payload is read."""
    try:
        if dialect is JsonDialect.STRICT:
            value = _STRICT_DECODER.decode(raw.decode("utf-8"))
        else:
            text = raw.decode("utf-8", errors="replace")
            if stream:
                start = len(text) - len(text.lstrip(_JSON_WS))
                value = _GO_DECODER.raw_decode(text, start)[0]
                if value is None:  # Go decodes `null` into an empty claims map
                    value = {}
            else:
                value = _GO_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Jws:
    """A decoded, not yet verified compact JWS."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature_segment: str

    def signature(self) -> bytes:
        return b64url_decode(self.signature_segment, "signature")


def decode_jws(authorization: str, dialect: JsonDialect) -> Jws:
    """The header and payload of `Bearer <header>.<payload>.<signature>`; nothing verified."""
    parts = parse_authorization_header(authorization).split(".")
    if len(parts) != 3:
        raise fail(Reason.BAD_TOKEN_FORMAT, "token does not have 3 segments")
    header = json_object(b64url_decode(parts[0], "header"), "header", dialect)
    payload = json_object(b64url_decode(parts[1], "payload"), "payload", dialect, stream=True)
    return Jws(
        header=header,
        payload=payload,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature_segment=parts[2],
    )


# ------------------------------------------------------------------------ signatures


def key_type_fits(alg: str, key: PublicKeyTypes) -> bool:
    """Whether `key` is of the type `alg` signs with (RSA, EC or Edwards); size and curve aside."""
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_ALGS:
        return isinstance(key, ec.EllipticCurvePublicKey)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def key_fits(alg: str, key: PublicKeyTypes, *, min_rsa_bits: int) -> bool:
    """Whether `key` may verify an `alg` signature: type, EC curve and RSA size."""
    if not key_type_fits(alg, key):
        return False
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size >= min_rsa_bits
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.name == _EC_ALGS[alg][0]
    return True


def signature_valid(alg: str, key: PublicKeyTypes, signing_input: bytes, sig: bytes) -> bool:
    """True iff `sig` is a valid `alg` signature by `key`; any mismatch is simply False."""
    try:
        if alg[:2] in ("RS", "PS") and isinstance(key, rsa.RSAPublicKey):
            # Go requires exactly the modulus length; checked here, not left to the backend.
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
        if alg in _EC_ALGS and isinstance(key, ec.EllipticCurvePublicKey):
            size = _EC_ALGS[alg][1]
            if len(sig) != 2 * size:  # JWS uses raw R||S, never DER
                return False
            r = int.from_bytes(sig[:size], "big")
            s = int.from_bytes(sig[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
            return True
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(sig, signing_input)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


# ------------------------------------------------------------------------ verified-token cache


class KeyGeneration(Protocol):
    """A key set whose `generation` changes whenever its keys do."""

    @property
    def generation(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token's claims, served from the cache while `clock() < deadline` and while
    `keys.generation` is still the one it was verified with."""

    claims: Claims
    deadline: float
    keys: KeyGeneration
    generation: int


class TokenCache:
    """LRU of verified tokens by (Authorization header, request audience); 0 disables it."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("cache_size must not be negative")
        self._size = size
        self._entries: OrderedDict[tuple[str, str], Verified] = OrderedDict()

    def lookup(self, header: str, audience: str, now: float) -> Claims | None:
        key = (header, audience)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now < entry.deadline and entry.keys.generation == entry.generation:
            self._entries.move_to_end(key)
            return entry.claims
        del self._entries[key]
        return None

    def store(self, header: str, audience: str, verified: Verified) -> Claims:
        if self._size:
            self._entries[(header, audience)] = verified
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return verified.claims

    def __len__(self) -> int:
        return len(self._entries)
