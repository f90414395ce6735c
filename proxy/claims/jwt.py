"""Temporal's default JWT claim mapper, to the letter of spec §2.

Verification is written out by hand rather than delegated to a JWT library because the exact
edge cases matter (no leeway, whole-second truncation, `iat` in the future rejected, bool is not
a number, raw R||S ES256 signatures, kid looked up per key type). Every failure raises
`CredentialError` whose detail never contains the token or key material.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.errors import CredentialError
from proxy.interfaces import KeyProvider
from proxy.keys import Logger
from proxy.model import SYSTEM_NAMESPACE, AuthInfo, Claims, Reason, Role

AUTH_TYPE = "jwt"
SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256"})
# Every alg golang-jwt knows: an alg outside this set is "unavailable", inside but not
# supported is "invalid". Both are refused; the distinction only shows in the detail text.
_KNOWN_ALGORITHMS = frozenset(
    {"none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
    | {"PS256", "PS384", "PS512", "EdDSA"}
)
# Tokens without `exp` would otherwise stay cached until evicted.
NO_EXP_CACHE_SECONDS = 60.0
_MIN_RSA_BITS = 1024  # Go >= 1.24 refuses smaller RSA keys
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JSON_WS = " \t\n\r"
# Go's strings.TrimSpace set (unicode.IsSpace), which differs from str.strip() in the margins.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)

_PERMISSION_ROLES: Mapping[str, Role] = {
    "read": Role.READER,
    "write": Role.WRITER,
    "worker": Role.WORKER,
    "admin": Role.ADMIN,
}


def _fail(reason: Reason, detail: str) -> CredentialError:
    return CredentialError(reason, detail)


# ------------------------------------------------------------------------ header and segments


def parse_authorization_header(value: str) -> str:
    """The token part of `Bearer <token>`: split on the first space, scheme case-insensitive.

    No trimming, as in Temporal: `Bearer  x` yields ` x`, which then fails to parse.
    """
    scheme, sep, token = value.partition(" ")
    if not sep:
        raise _fail(Reason.BAD_TOKEN_FORMAT, "unexpected authorization token format")
    if scheme.lower() != "bearer":
        raise _fail(Reason.BAD_TOKEN_FORMAT, "unexpected name in authorization token")
    return token


def _b64url_decode(segment: str, what: str) -> bytes:
    # RawURLEncoding: no padding, URL alphabet only (Python's decoder would skip junk).
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise _fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # Go refuses numbers that overflow float64
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def _json_value(raw: bytes, what: str, *, trailing_ok: bool) -> Any:
    # Go's encoding/json replaces invalid UTF-8 instead of failing.
    text = raw.decode("utf-8", errors="replace")
    try:
        if not trailing_ok:
            return _DECODER.decode(text)
        # The payload is read with a stream decoder: the first value counts, the rest is ignored.
        start = len(text) - len(text.lstrip(_JSON_WS))
        return _DECODER.raw_decode(text, start)[0]
    except (ValueError, RecursionError) as exc:
        raise _fail(Reason.BAD_TOKEN_FORMAT, f"token {what} is not valid JSON") from exc


# ------------------------------------------------------------------------ claim checks


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _time_claim(payload: Mapping[str, Any], name: str) -> int | None:
    """The claim as whole seconds; None when absent or 0; raise when present but not a number."""
    if name not in payload:
        return None
    value = payload[name]
    if not _is_number(value):
        raise _fail(Reason.INVALID_TOKEN, f"{name!r} claim is not a number")
    if value == 0:
        return None
    seconds: int = math.floor(value)
    return seconds


def _audience_ok(aud: object, expected: str) -> bool:
    if isinstance(aud, str):
        values = [aud]
    elif isinstance(aud, list):
        if not all(isinstance(a, str) for a in aud):
            return False
        values = aud
    else:
        values = []  # missing or another type: the audience is required here, so a failure
    # `expected` is non-blank, so a missing, empty or all-empty `aud` cannot match it.
    return expected in values


def _verify_signature(alg: str, key: object, signing_input: bytes, signature: bytes) -> None:
    if alg == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise _fail(Reason.UNKNOWN_KEY, "key for RS256 is not an RSA key")
        if key.key_size < _MIN_RSA_BITS:
            raise _fail(Reason.BAD_SIGNATURE, f"RSA key smaller than {_MIN_RSA_BITS} bits")
        # Go requires exactly the modulus length; checked here, not left to the backend.
        if len(signature) != (key.key_size + 7) // 8:
            raise _fail(Reason.BAD_SIGNATURE, "signature has the wrong length")
        try:
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise _fail(Reason.BAD_SIGNATURE, "signature does not verify") from exc
        return
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _fail(Reason.UNKNOWN_KEY, "key for ES256 is not an EC key")
    # JWS ES256 is raw R||S, 32 bytes each; DER-encoded signatures are refused.
    if len(signature) != 64:
        raise _fail(Reason.BAD_SIGNATURE, "ES256 signature is not 64 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise _fail(Reason.BAD_SIGNATURE, "signature does not verify") from exc


# ------------------------------------------------------------------------ permissions


def translate_go_regex(pattern: str) -> str:
    """Translate the Go/RE2 spellings Python's `re` reads differently.

    `(?<name>...)` becomes `(?P<name>...)`; `\\z` becomes `\\Z`; and, unless a multi-line
    flag is present, `$` becomes `\\Z` (in Go `$` is end of text, in Python it also matches
    before a final newline).
    """
    multiline = re.search(r"\(\?[a-zA-Z]*m[a-zA-Z]*[):]", pattern) is not None
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            # A `]` right after `[` or `[^` is a literal member of the class.
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                out.append(pattern[i : j + 1])
                i = j + 1
                continue
        elif pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
            out.append("(?P<")
            i += 3
            continue
        elif c == "$" and not multiline:
            out.append("\\Z")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def compile_permissions_regex(pattern: str) -> re.Pattern[str] | None:
    """Compile `permissionsRegex`; None when empty. Raise ValueError when unusable.

    Temporal silently falls back to the colon split on a bad regex; we refuse to start.
    """
    if not pattern:
        return None
    try:
        compiled = re.compile(translate_go_regex(pattern), re.ASCII)  # RE2's \w, \d are ASCII
    except re.error as exc:
        raise ValueError(f"permissions regex does not compile: {exc}") from exc
    missing = [g for g in ("namespace", "role") if g not in compiled.groupindex]
    if missing:
        raise ValueError(
            "permissions regex lacks the named group(s) "
            + ", ".join(repr(g) for g in missing)
            + " (write (?P<namespace>...) and (?P<role>...))"
        )
    return compiled


def permission_to_role(word: str) -> Role:
    """Case-insensitive, untrimmed; unknown words are Role.UNDEFINED (0)."""
    # Go's ToLower maps U+0130 to a plain "i"; Python's lower() gives "i" + combining dot.
    return _PERMISSION_ROLES.get(word.replace("\u0130", "i").lower(), Role.UNDEFINED)


def parse_permissions(
    permissions: Iterable[object],
    regex: re.Pattern[str] | None = None,
    logger: Logger | None = None,
) -> tuple[Role, dict[str, Role]]:
    """Temporal's permission list -> (system role, namespace roles). Spec §2.3.

    Entries are OR-ed; `temporal-system` exactly is the system role; an unknown word still
    creates a 0-valued namespace entry. Ours: an entry on the empty namespace (`:admin`) is
    ignored and logged (Temporal grants it on "", which by-id and task-token calls then use).
    """
    system = Role.UNDEFINED
    namespaces: dict[str, Role] = {}
    for entry in permissions:
        if not isinstance(entry, str):
            _warn(logger, "ignoring permission that is not a string", entry)
            continue
        if regex is not None:
            match = regex.search(entry)
            if match is None:
                _warn(logger, "ignoring permission not matching pattern", entry)
                continue
            namespace = match.group("namespace") or ""
            word = match.group("role") or ""
        else:
            namespace, sep, word = entry.partition(":")
            if not sep:
                _warn(logger, "ignoring permission in unexpected format", entry)
                continue
        if not namespace:
            _warn(logger, "ignoring permission on the empty namespace", entry)
            continue
        role = permission_to_role(word)
        if namespace == SYSTEM_NAMESPACE:
            system |= role
        else:
            namespaces[namespace] = namespaces.get(namespace, Role.UNDEFINED) | role
    return system, namespaces


def _warn(logger: Logger | None, why: str, entry: object) -> None:
    if logger is not None:
        logger.warning("permission_ignored", why=why, permission=repr(entry)[:100])


# ------------------------------------------------------------------------ the mapper


class DefaultJWTClaimMapper:
    """Temporal's default JWT claim mapper (`claimMapper: default`), with a verified-token cache."""

    def __init__(
        self,
        key_provider: KeyProvider,
        permissions_claim_name: str = "permissions",
        permissions_regex: str = "",
        clock: Callable[[], float] = time.time,
        cache_size: int = 10000,
        logger: Logger | None = None,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self._keys = key_provider
        self._claim_name = permissions_claim_name
        self._regex = compile_permissions_regex(permissions_regex)
        self._clock = clock
        self._cache_size = cache_size
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        # (token, key generation, audience) -> (claims, serve while clock() < deadline)
        self._cache: OrderedDict[tuple[str, int, str], tuple[Claims, float]] = OrderedDict()

    def auth_info_required(self) -> bool:
        return True

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        header = auth_info.token
        if not header:
            # Only reachable with a client certificate and no token: empty claims, no error.
            return Claims(auth_type=AUTH_TYPE)
        key = (header, self._keys.generation, auth_info.audience)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None:
            if now < entry[1]:
                self._cache.move_to_end(key)
                return entry[0]
            del self._cache[key]
        claims, deadline = self._verify(header, auth_info.audience, now)
        if self._cache_size:
            self._cache[key] = (claims, deadline)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def _verify(self, header: str, audience: str, now_f: float) -> tuple[Claims, float]:
        token = parse_authorization_header(header)
        parts = token.split(".")
        if len(parts) != 3:
            raise _fail(Reason.BAD_TOKEN_FORMAT, "token does not have 3 segments")
        head = _json_value(_b64url_decode(parts[0], "header"), "header", trailing_ok=False)
        if not isinstance(head, dict):
            raise _fail(Reason.BAD_TOKEN_FORMAT, "token header is not a JSON object")
        payload = _json_value(_b64url_decode(parts[1], "payload"), "payload", trailing_ok=True)
        if payload is None:  # Go decodes `null` into an empty claims map
            payload = {}
        if not isinstance(payload, dict):
            raise _fail(Reason.BAD_TOKEN_FORMAT, "token payload is not a JSON object")

        alg = head.get("alg")
        if not isinstance(alg, str) or alg not in _KNOWN_ALGORITHMS:
            raise _fail(Reason.UNSUPPORTED_ALGORITHM, "signing method (alg) is unavailable")
        if alg not in SUPPORTED_ALGORITHMS:
            raise _fail(Reason.UNSUPPORTED_ALGORITHM, f"signing method {alg} is invalid")
        kid = head.get("kid")
        if not isinstance(kid, str):
            raise _fail(Reason.INVALID_TOKEN, 'malformed token - no "kid" header')
        key = self._keys.get_key(alg, kid)

        # The signature first: an unverified token's claims mean nothing. (golang-jwt checks
        # both and reports both; the outcome, a refusal, is the same.)
        signature = _b64url_decode(parts[2], "signature")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        _verify_signature(alg, key, signing_input, signature)

        now = math.floor(now_f)  # whole seconds, as Go's time.Now().Unix()
        exp = _time_claim(payload, "exp")
        iat = _time_claim(payload, "iat")
        nbf = _time_claim(payload, "nbf")
        if exp is not None and not now < exp:
            raise _fail(Reason.TOKEN_EXPIRED, "token is expired")
        if iat is not None and now < iat:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "token used before issued")
        if nbf is not None and now < nbf:
            raise _fail(Reason.TOKEN_NOT_YET_VALID, "token is not valid yet")

        if audience.strip(_GO_SPACE) and not _audience_ok(payload.get("aud"), audience):
            raise _fail(Reason.AUDIENCE_MISMATCH, "audience mismatch")

        subject = payload.get("sub")
        if not isinstance(subject, str):
            raise _fail(Reason.BAD_SUBJECT, 'unexpected value type of "sub" claim')

        system = Role.UNDEFINED
        namespaces: dict[str, Role] = {}
        permissions = payload.get(self._claim_name)
        if isinstance(permissions, list):  # any other type is silently ignored
            system, namespaces = parse_permissions(permissions, self._regex, self._log)
        claims = Claims.build(
            subject=subject, system=system, namespaces=namespaces, auth_type=AUTH_TYPE
        )
        # exp is whole seconds: floor(now) < exp  <=>  now < exp.
        deadline = float(exp) if exp is not None else now_f + NO_EXP_CACHE_SECONDS
        return claims, deadline
