"""Temporal's default JWT claim mapper, to the letter of spec §2.

Verification is written out by hand rather than delegated to a JWT library because the exact
edge cases matter (no leeway, whole-second truncation, `iat` in the future rejected, bool is not
a number, raw R||S ES256 signatures, kid looked up per key type). Every failure raises
`CredentialError` whose detail never contains the token or key material.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.claims.exposed import PeerAttacher, expose_claims
from proxy.claims.token import (
    JsonDialect,
    TokenCache,
    Verified,
    decode_jws,
    fail,
    key_type_fits,
    signature_valid,
)
from proxy.interfaces import KeyProvider, Logger
from proxy.model import SYSTEM_NAMESPACE, AuthInfo, AuthType, Claims, Reason, Role

AUTH_TYPE = "jwt"
# A certificate without a token: Temporal's empty claims, labelled `none` (no credential counted).
_EMPTY = Claims(auth_type=AuthType.NONE.value)
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


# ------------------------------------------------------------------------ claim checks


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _time_claim(payload: Mapping[str, Any], name: str) -> int | None:
    """The claim as whole seconds; None when absent or 0; raise when present but not a number."""
    if name not in payload:
        return None
    value = payload[name]
    if not _is_number(value):
        raise fail(Reason.INVALID_TOKEN, f"{name!r} claim is not a number")
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
        token_claims: Sequence[str] = (),
        attach_peer: bool = False,
    ) -> None:
        """`token_claims` and `attach_peer` fill `Claims.token_claims` / `.peer` for a policy
        authorizer (authorization.cedar); off, they cost nothing."""
        self._keys = key_provider
        self._expose = tuple(token_claims)
        self._peers = PeerAttacher() if attach_peer else None
        self._claim_name = permissions_claim_name
        self._regex = compile_permissions_regex(permissions_regex)
        self._clock = clock
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._cache = TokenCache(cache_size)

    def auth_info_required(self) -> bool:
        return True

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        header = auth_info.token
        if not header:
            # Only reachable with a client certificate and no token: empty claims, no error.
            claims = _EMPTY
        else:
            now = self._clock()
            cached = self._cache.lookup(header, auth_info.audience, now)
            if cached is None:
                verified = self._verify(header, auth_info.audience, now)
                cached = self._cache.store(header, auth_info.audience, verified)
            claims = cached
        if self._peers is not None:
            claims = self._peers.attach(claims, auth_info.peer)
        return claims

    def _verify(self, header: str, audience: str, now_f: float) -> Verified:
        generation = self._keys.generation
        jws = decode_jws(header, JsonDialect.GO)
        payload = jws.payload
        alg = jws.header.get("alg")
        if not isinstance(alg, str) or alg not in _KNOWN_ALGORITHMS:
            raise fail(Reason.UNSUPPORTED_ALGORITHM, "signing method (alg) is unavailable")
        if alg not in SUPPORTED_ALGORITHMS:
            raise fail(Reason.UNSUPPORTED_ALGORITHM, f"signing method {alg} is invalid")
        kid = jws.header.get("kid")
        if not isinstance(kid, str):
            raise fail(Reason.INVALID_TOKEN, 'malformed token - no "kid" header')
        key = self._keys.get_key(alg, kid)

        # The signature first: an unverified token's claims mean nothing. (golang-jwt checks
        # both and reports both; the outcome, a refusal, is the same.)
        signature = jws.signature()
        if not key_type_fits(alg, key):
            raise fail(Reason.UNKNOWN_KEY, f"key for {alg} is not of its key type")
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            raise fail(Reason.BAD_SIGNATURE, f"RSA key smaller than {_MIN_RSA_BITS} bits")
        if not signature_valid(alg, key, jws.signing_input, signature):
            raise fail(Reason.BAD_SIGNATURE, "signature does not verify")

        now = math.floor(now_f)  # whole seconds, as Go's time.Now().Unix()
        exp = _time_claim(payload, "exp")
        iat = _time_claim(payload, "iat")
        nbf = _time_claim(payload, "nbf")
        if exp is not None and not now < exp:
            raise fail(Reason.TOKEN_EXPIRED, "token is expired")
        if iat is not None and now < iat:
            raise fail(Reason.TOKEN_NOT_YET_VALID, "token used before issued")
        if nbf is not None and now < nbf:
            raise fail(Reason.TOKEN_NOT_YET_VALID, "token is not valid yet")

        if audience.strip(_GO_SPACE) and not _audience_ok(payload.get("aud"), audience):
            raise fail(Reason.AUDIENCE_MISMATCH, "audience mismatch")

        subject = payload.get("sub")
        if not isinstance(subject, str):
            raise fail(Reason.BAD_SUBJECT, 'unexpected value type of "sub" claim')

        system = Role.UNDEFINED
        namespaces: dict[str, Role] = {}
        permissions = payload.get(self._claim_name)
        if isinstance(permissions, list):  # any other type is silently ignored
            system, namespaces = parse_permissions(permissions, self._regex, self._log)
        claims = Claims.build(
            subject=subject,
            system=system,
            namespaces=namespaces,
            auth_type=AUTH_TYPE,
            token_claims=expose_claims(payload, self._expose) if self._expose else None,
        )
        # exp is whole seconds: floor(now) < exp  <=>  now < exp.
        deadline = float(exp) if exp is not None else now_f + NO_EXP_CACHE_SECONDS
        return Verified(claims=claims, deadline=deadline, keys=self._keys, generation=generation)
