"""JWT verification keys: a JWKS provider with a refresh loop, and a static provider.

Temporal's default token key provider semantics (spec §3): RSA and EC keys live in separate kid
maps, a refresh is all-or-nothing across the URIs, the previous set is kept on failure, and a
kid miss never triggers a refresh. Where we differ on purpose: fetches have a timeout, a non-2xx
HTTP answer is a failed fetch, and until a set was ever loaded every lookup fails with NO_KEYS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.errors import CredentialError, KeySourceError
from proxy.model import Reason

# A JWKS document is small; anything this large is a misconfigured URI, not a key set.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

_EC_CURVES: Mapping[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_B64URL_CHARS = re.compile(r"[A-Za-z0-9_-]*")


class Logger(Protocol):
    """The part of a structlog BoundLogger this module uses."""

    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class KeySet:
    """One immutable key set; swapped as a single reference on refresh."""

    rsa: Mapping[str, rsa.RSAPublicKey] = field(default_factory=lambda: MappingProxyType({}))
    ec: Mapping[str, ec.EllipticCurvePublicKey] = field(
        default_factory=lambda: MappingProxyType({})
    )
    skipped: int = 0

    @property
    def key_count(self) -> int:
        return len(self.rsa) + len(self.ec)

    def get(self, alg: str, kid: str) -> PublicKeyTypes:
        # Temporal looks RS256 kids up only among RSA keys and ES256 kids only among EC keys.
        key: PublicKeyTypes | None
        if alg == "RS256":
            key = self.rsa.get(kid)
            kind = "RSA"
        elif alg == "ES256":
            key = self.ec.get(kid)
            kind = "EC"
        else:
            raise CredentialError(Reason.UNSUPPORTED_ALGORITHM, "unsupported signing algorithm")
        if key is None:
            raise CredentialError(Reason.UNKNOWN_KEY, f"no {kind} key for kid {_short(kid)}")
        return key


def _short(text: str) -> str:
    # A kid is neither a secret nor key material, but it is caller-controlled: bound it.
    return repr(text[:64])


# ------------------------------------------------------------------------------- JWKS parsing


def _b64url_field(jwk: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = jwk.get(name)
    if value is None:
        if required:
            raise KeySourceError(f"missing {name!r}")
        return None
    if not isinstance(value, str):
        raise KeySourceError(f"{name!r} is not a string")
    # go-jose tolerates trailing padding on JWK members, but no other stray characters.
    value = value.rstrip("=")
    if not _B64URL_CHARS.fullmatch(value) or len(value) % 4 == 1:
        raise KeySourceError(f"{name!r} is not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _parse_rsa(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n = _b64url_field(jwk, "n")
    e = _b64url_field(jwk, "e")
    assert n is not None and e is not None
    if not n or not e:
        raise KeySourceError("empty RSA modulus or exponent")
    try:
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    except ValueError as exc:
        raise KeySourceError("invalid RSA public key") from exc


def _parse_ec(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _EC_CURVES:
        raise KeySourceError("unsupported elliptic curve")
    curve, size = _EC_CURVES[crv]
    x = _b64url_field(jwk, "x")
    y = _b64url_field(jwk, "y")
    assert x is not None and y is not None
    if len(x) != size or len(y) != size:
        raise KeySourceError("wrong length for EC coordinates")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
        ).public_key()
    except ValueError as exc:  # not on the curve
        raise KeySourceError("invalid EC public key") from exc


def _check_x5(jwk: Mapping[str, Any], key: PublicKeyTypes | None) -> None:
    """x5c / x5t / x5t#S256 must be well formed and agree with the key (go-jose does this)."""
    chain = jwk.get("x5c")
    leaf: x509.Certificate | None = None
    if chain is not None:
        if not isinstance(chain, list) or not all(isinstance(c, str) for c in chain):
            raise KeySourceError("'x5c' is not a list of strings")
        try:
            certs = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain
            ]
        except (binascii.Error, ValueError) as exc:
            raise KeySourceError("'x5c' holds an unparseable certificate") from exc
        if certs:
            leaf = certs[0]
            if key is not None and leaf.public_key() != key:
                raise KeySourceError("'x5c' certificate does not match the key")
    for name, digest, size in (("x5t", hashlib.sha1, 20), ("x5t#S256", hashlib.sha256, 32)):
        thumb = _b64url_field(jwk, name, required=False)
        if thumb is None:
            continue
        if len(thumb) != size:
            raise KeySourceError(f"{name!r} has the wrong length")
        if leaf is not None:
            der = leaf.public_bytes(Encoding.DER)
            if digest(der).digest() != thumb:
                raise KeySourceError(f"{name!r} does not match the 'x5c' certificate")


def parse_jwks(document: bytes | str, logger: Logger | None = None) -> KeySet:
    """Parse a JWKS document into a KeySet; raise KeySourceError if any JWK is unparseable.

    Usable keys: public RSA and public EC (P-256/384/521). `oct`, OKP Ed25519 and private keys
    are valid JWKs Temporal does not use: skipped with a warning. Anything else fails the whole
    document, as in Temporal.
    """
    log = logger if logger is not None else structlog.get_logger()
    try:
        doc = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeySourceError("document is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise KeySourceError("document is not a JSON object")
    keys = doc.get("keys")
    # `{}` is an empty (but valid) key set in Temporal: it replaces the keys.
    if keys is None:
        keys = []
    if not isinstance(keys, list):
        raise KeySourceError("'keys' is not a list")
    rsa_keys: dict[str, rsa.RSAPublicKey] = {}
    ec_keys: dict[str, ec.EllipticCurvePublicKey] = {}
    skipped = 0
    for index, jwk in enumerate(keys):
        try:
            if not isinstance(jwk, dict):
                raise KeySourceError("not a JSON object")
            kid = jwk.get("kid", "")
            if not isinstance(kid, str):
                raise KeySourceError("'kid' is not a string")
            kty = jwk.get("kty")
            if not isinstance(kty, str):
                raise KeySourceError("missing 'kty'")
            private = "d" in jwk
            key: PublicKeyTypes | None = None
            if kty == "RSA":
                key = _parse_rsa(jwk)
            elif kty == "EC":
                key = _parse_ec(jwk)
            elif kty == "oct":
                _b64url_field(jwk, "k")
            elif kty == "OKP":
                if jwk.get("crv") != "Ed25519":
                    raise KeySourceError("unsupported OKP curve")
                x = _b64url_field(jwk, "x")
                if x is None or len(x) != 32:
                    raise KeySourceError("invalid Ed25519 key")
            else:
                raise KeySourceError("unknown 'kty'")
            if private:
                _b64url_field(jwk, "d")
            _check_x5(jwk, key)
        except KeySourceError as exc:
            raise KeySourceError(f"key #{index}: {exc}") from exc
        if private or key is None:
            # Never log the JWK itself: it may be a secret.
            log.warning(
                "jwks_key_skipped",
                index=index,
                kid=_short(kid),
                kty=kty,
                why="private key" if private else "key type not used for RS256/ES256",
            )
            skipped += 1
        elif isinstance(key, rsa.RSAPublicKey):
            rsa_keys[kid] = key  # later kid wins, as in Temporal
        elif isinstance(key, ec.EllipticCurvePublicKey):
            ec_keys[kid] = key
    return KeySet(rsa=MappingProxyType(rsa_keys), ec=MappingProxyType(ec_keys), skipped=skipped)


def _merge(sets: list[KeySet]) -> KeySet:
    rsa_keys: dict[str, rsa.RSAPublicKey] = {}
    ec_keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for ks in sets:  # in URI order, so a later URI wins a kid collision
        rsa_keys.update(ks.rsa)
        ec_keys.update(ks.ec)
    return KeySet(
        rsa=MappingProxyType(rsa_keys),
        ec=MappingProxyType(ec_keys),
        skipped=sum(ks.skipped for ks in sets),
    )


# ------------------------------------------------------------------------------- fetching


def _check_uri(uri: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with remote host is not supported: {redact_uri(uri)}")
    elif scheme not in ("http", "https"):
        raise ValueError(f"unsupported key source URI scheme: {redact_uri(uri)}")
    return parts


def redact_uri(uri: str) -> str:
    """The URI without user info, query or fragment, which may carry credentials."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


# Only HTTP(S) handlers: a redirect must not turn into an ftp:// or file:// read.
_OPENER = urllib.request.OpenerDirector()
for _handler in (
    urllib.request.ProxyHandler(),
    urllib.request.HTTPHandler(),
    urllib.request.HTTPSHandler(),
    urllib.request.HTTPRedirectHandler(),
    urllib.request.HTTPDefaultErrorHandler(),
    urllib.request.HTTPErrorProcessor(),
):
    _OPENER.add_handler(_handler)


def _read_limited(stream: Any) -> bytes:
    data: bytes = stream.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise KeySourceError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


def _fetch_blocking(uri: str, timeout: float) -> bytes:
    parts = _check_uri(uri)
    if parts.scheme.lower() == "file":
        path = urllib.request.url2pathname(parts.path)
        with open(path, "rb") as fh:
            return _read_limited(fh)
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})  # noqa: S310 (scheme checked above)
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            status = resp.status
            if not 200 <= status < 300:
                raise KeySourceError(f"HTTP status {status}")
            return _read_limited(resp)
    except urllib.error.HTTPError as exc:
        raise KeySourceError(f"HTTP status {exc.code}") from exc


async def _refresh_loop(
    refresh: Callable[[], Awaitable[bool]], interval: float, *, load_first: bool
) -> None:
    if load_first:
        await refresh()
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        await refresh()


class JwksKeyProvider:
    """KeyProvider backed by JWKS URIs, refreshed in the background (also a BackgroundTask)."""

    def __init__(
        self,
        uris: tuple[str, ...],
        refresh_interval: float,
        fetch_timeout: float = 10.0,
        logger: Logger | None = None,
        on_refresh: Callable[[bool, int], None] | None = None,
    ) -> None:
        self._uris = tuple(u.strip() for u in uris if u.strip())
        if not self._uris:
            raise ValueError("at least one non-blank key source URI is required")
        for uri in self._uris:
            _check_uri(uri)  # fail at startup, not at the first refresh
        if refresh_interval < 0:
            raise ValueError("refresh_interval must not be negative")
        if fetch_timeout <= 0:
            raise ValueError("fetch_timeout must be positive")
        self._refresh_interval = refresh_interval
        self._fetch_timeout = fetch_timeout
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._on_refresh = on_refresh
        self._keys = KeySet()
        self._generation = 0
        self._loaded = False
        self._attempted = False
        self._last_success: float | None = None
        self._lock = asyncio.Lock()

    # -- KeyProvider

    def get_key(self, alg: str, kid: str) -> PublicKeyTypes:
        if not self._loaded:
            raise CredentialError(Reason.NO_KEYS, "no verification keys loaded yet")
        return self._keys.get(alg, kid)

    @property
    def generation(self) -> int:
        return self._generation

    # -- state for readiness and metrics

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def key_count(self) -> int:
        return self._keys.key_count

    @property
    def last_success(self) -> float | None:
        return self._last_success

    # -- refreshing

    async def _fetch(self, uri: str) -> bytes:
        # The thread cannot be cancelled; urllib's own timeout bounds it, asyncio.timeout
        # bounds how long we wait (a slow-drip server can outlast a per-read timeout).
        async with asyncio.timeout(self._fetch_timeout):
            return await asyncio.to_thread(_fetch_blocking, uri, self._fetch_timeout)

    async def refresh(self) -> bool:
        """Fetch every URI; replace the key set only if all succeed. Never raises on failure."""
        async with self._lock:
            self._attempted = True
            sets: list[KeySet] = []
            for uri in self._uris:
                try:
                    sets.append(parse_jwks(await self._fetch(uri), self._log))
                except TimeoutError:
                    return self._failed(uri, f"timed out after {self._fetch_timeout:g}s")
                except Exception as exc:  # a refresh must never kill the loop
                    return self._failed(uri, _describe(exc))
            new = _merge(sets)
            self._keys = new
            self._generation += 1
            self._loaded = True
            self._last_success = time.time()
            self._log.info(
                "jwks_refreshed",
                rsa_keys=len(new.rsa),
                ec_keys=len(new.ec),
                skipped_keys=new.skipped,
                sources=len(self._uris),
            )
            self._notify(True)
            return True

    def _failed(self, uri: str, error: str) -> bool:
        self._log.warning("jwks_refresh_failed", uri=redact_uri(uri), error=error)
        self._notify(False)
        return False

    def _notify(self, success: bool) -> None:
        if self._on_refresh is not None:
            self._on_refresh(success, self._keys.key_count)

    async def run(self) -> None:
        """Load now unless already attempted, then refresh every interval (0 = never)."""
        await _refresh_loop(self.refresh, self._refresh_interval, load_first=not self._attempted)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc).__name__}: {exc.reason}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class StaticKeyProvider:
    """A fixed key set, for tests and air-gapped deployments. `keys` maps kid to public key."""

    def __init__(self, keys: Mapping[str, PublicKeyTypes]) -> None:
        rsa_keys: dict[str, rsa.RSAPublicKey] = {}
        ec_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for kid, key in keys.items():
            if isinstance(key, rsa.RSAPublicKey):
                rsa_keys[kid] = key
            elif isinstance(key, ec.EllipticCurvePublicKey):
                ec_keys[kid] = key
            else:
                raise ValueError(f"key {kid!r}: only RSA and EC public keys are supported")
        self._keys = KeySet(rsa=MappingProxyType(rsa_keys), ec=MappingProxyType(ec_keys))

    @classmethod
    def from_jwks(cls, document: bytes | str, logger: Logger | None = None) -> StaticKeyProvider:
        # RSA and EC kids are separate namespaces, so keep the parsed set as it is.
        provider = cls({})
        provider._keys = parse_jwks(document, logger)
        return provider

    def get_key(self, alg: str, kid: str) -> PublicKeyTypes:
        return self._keys.get(alg, kid)

    @property
    def generation(self) -> int:
        return 0

    @property
    def key_count(self) -> int:
        return self._keys.key_count


# ------------------------------------------------------------- identity-provider key sets
#
# Beyond Temporal (`claimMapper: idp`): every asymmetric JWS key type, a JWK's `alg`/`use`
# honoured, OIDC discovery, a rate-limited refetch when a token names an unknown kid, static
# PEM/JWKS keys for air-gapped clusters, and the last good set kept through an outage.

_OKP_CURVES: Mapping[str, Callable[[bytes], PublicKeyTypes]] = {
    "Ed25519": ed25519.Ed25519PublicKey.from_public_bytes,
    "Ed448": ed448.Ed448PublicKey.from_public_bytes,
}
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationKey:
    """One public key of an identity provider. `alg` is the JWK's `alg` member ("" if absent)."""

    kid: str | None
    key: PublicKeyTypes
    alg: str = ""


def _parse_idp_jwk(jwk: Mapping[str, Any]) -> PublicKeyTypes | None:
    """The public key of one JWK; None for a key that is not a public signing key."""
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    if "d" in jwk:  # a private key published by mistake: never use it
        return None
    kty = jwk.get("kty")
    key: PublicKeyTypes
    if kty == "RSA":
        key = _parse_rsa(jwk)
    elif kty == "EC":
        key = _parse_ec(jwk)
    elif kty == "OKP":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _OKP_CURVES:
            raise KeySourceError("unsupported OKP curve")
        x = _b64url_field(jwk, "x")
        assert x is not None
        try:
            key = _OKP_CURVES[crv](x)
        except ValueError as exc:
            raise KeySourceError("invalid OKP public key") from exc
    else:
        return None  # oct (HMAC) and unknown types are never verification keys here
    _check_x5(jwk, key)
    return key


def parse_idp_jwks(
    document: bytes | str, logger: Logger | None = None
) -> tuple[VerificationKey, ...]:
    """Every usable public signing key of a JWKS document.

    Unlike Temporal's parser a single bad or foreign JWK is skipped (with a warning), not fatal:
    skipping can only refuse tokens, never accept one. A document without any usable key is an
    error, so a broken answer never replaces a good set.
    """
    log = logger if logger is not None else structlog.get_logger()
    try:
        doc = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeySourceError("document is not valid JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySourceError("document is not a JWKS ({'keys': [...]})")
    out: list[VerificationKey] = []
    for index, jwk in enumerate(doc["keys"]):
        kid: object = None
        try:
            if not isinstance(jwk, dict):
                raise KeySourceError("not a JSON object")
            kid = jwk.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise KeySourceError("'kid' is not a string")
            alg = jwk.get("alg", "")
            if not isinstance(alg, str):
                raise KeySourceError("'alg' is not a string")
            key = _parse_idp_jwk(jwk)
        except KeySourceError as exc:
            log.warning("jwks_key_skipped", index=index, kid=_short(str(kid)), why=str(exc))
            continue
        if key is None:
            log.warning(
                "jwks_key_skipped", index=index, kid=_short(str(kid)), why="not a signing key"
            )
            continue
        out.append(VerificationKey(kid=kid, key=key, alg=alg))
    if not out:
        raise KeySourceError("no usable signing key in the document")
    return tuple(out)


def load_public_key_pem(data: bytes) -> PublicKeyTypes:
    """A PEM public key, or the public key of a PEM certificate (as IdPs often publish)."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeySourceError("not a PEM public key or certificate") from exc


def parse_discovery(document: bytes, issuer: str) -> str:
    """`jwks_uri` from an OpenID Provider configuration whose `issuer` must be ours exactly."""
    try:
        doc = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeySourceError("discovery document is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise KeySourceError("discovery document is not a JSON object")
    if doc.get("issuer") != issuer:
        # OpenID Connect Discovery §4.3: a mismatch means the document must not be used.
        raise KeySourceError("discovery document names a different issuer")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise KeySourceError("discovery document has no jwks_uri")
    try:
        _check_uri(jwks_uri)
    except ValueError as exc:
        raise KeySourceError(str(exc)) from exc
    return jwks_uri


def discovery_uri_for(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


class IssuerKeys:
    """The verification keys of one identity provider.

    Remote keys come from `jwks_uri`, or from the `jwks_uri` an OIDC discovery document names
    (re-discovered on every periodic refresh). Static keys (PEM files, a JWKS file) are always
    there. A failed refresh keeps the last good remote set; `age()` tells how old it is.

    A token naming a kid we do not have triggers one refetch, at most once per
    `refetch_interval` (0 disables it); concurrent misses share that one fetch.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str = "",
        discovery_uri: str = "",
        static_keys: Sequence[VerificationKey] = (),
        refresh_interval: float = 300.0,
        refetch_interval: float = 30.0,
        fetch_timeout: float = 10.0,
        logger: Logger | None = None,
        on_refresh: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if jwks_uri and discovery_uri:
            raise ValueError("give jwks_uri or discovery_uri, not both")
        for uri in (jwks_uri, discovery_uri):
            if uri:
                _check_uri(uri)
        if not (jwks_uri or discovery_uri or static_keys):
            raise ValueError("an issuer needs a JWKS URI, discovery or static keys")
        if refresh_interval < 0 or refetch_interval < 0:
            raise ValueError("intervals must not be negative")
        if fetch_timeout <= 0:
            raise ValueError("fetch_timeout must be positive")
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._discovery_uri = discovery_uri
        self._static = tuple(static_keys)
        self._refresh_interval = refresh_interval
        self._refetch_interval = refetch_interval
        self._fetch_timeout = fetch_timeout
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._on_refresh = on_refresh
        self._clock = clock
        self._wall = wall_clock
        self._remote: tuple[VerificationKey, ...] = ()
        self._by_kid: Mapping[str | None, tuple[VerificationKey, ...]] = self._index()
        self._generation = 0
        self._loaded = False
        self._attempted = False
        self._last_success: float | None = None
        self._last_refetch = -math.inf
        self._inflight: asyncio.Task[bool] | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0  # remote documents fetched (discovery and JWKS), for tests and debugging

    def _index(self) -> Mapping[str | None, tuple[VerificationKey, ...]]:
        index: dict[str | None, list[VerificationKey]] = {}
        for vk in (*self._static, *self._remote):
            index.setdefault(vk.kid, []).append(vk)
        return MappingProxyType({k: tuple(v) for k, v in index.items()})

    # -- state

    @property
    def remote(self) -> bool:
        return bool(self._jwks_uri or self._discovery_uri)

    @property
    def loaded(self) -> bool:
        return self._loaded or not self.remote

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def key_count(self) -> int:
        return len(self._static) + len(self._remote)

    @property
    def last_success(self) -> float | None:
        return self._last_success

    def age(self) -> float | None:
        """Seconds since the remote key set was last fetched successfully (None: never/static)."""
        return None if self._last_success is None else max(0.0, self._wall() - self._last_success)

    # -- lookups

    def lookup(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """Keys for a token's kid; a token without kid may use any key (the caller filters)."""
        if kid is None:
            return (*self._static, *self._remote)
        return self._by_kid.get(kid, ())

    async def keys_for(self, kid: str | None) -> tuple[VerificationKey, ...]:
        found = self.lookup(kid)
        if found or kid is None or not self.remote:
            return found
        if await self.refetch_unknown_kid():
            return self.lookup(kid)
        return ()

    async def refetch_unknown_kid(self) -> bool:
        """Refresh because a token names an unknown kid; rate-limited, shared by waiters."""
        task = self._inflight
        if task is None:
            now = self._clock()
            if self._refetch_interval <= 0 or now - self._last_refetch < self._refetch_interval:
                return False
            self._last_refetch = now
            task = self._inflight = asyncio.get_running_loop().create_task(
                self.refresh(), name=f"jwks-refetch {redact_uri(self.issuer)}"
            )
            task.add_done_callback(self._refetch_done)
        # shield: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def _refetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    # -- fetching

    async def _fetch(self, uri: str) -> bytes:
        self.fetches += 1
        async with asyncio.timeout(self._fetch_timeout):
            return await asyncio.to_thread(_fetch_blocking, uri, self._fetch_timeout)

    async def refresh(self) -> bool:
        """Discover (if configured) and fetch the JWKS; keep the old set on any failure."""
        if not self.remote:
            return True
        async with self._lock:
            self._attempted = True
            uri = self._jwks_uri or self._discovery_uri
            try:
                if self._discovery_uri:
                    document = await self._fetch(self._discovery_uri)
                    uri = parse_discovery(document, self.issuer)
                keys = parse_idp_jwks(await self._fetch(uri), self._log)
            except TimeoutError:
                return self._failed(uri, f"timed out after {self._fetch_timeout:g}s")
            except Exception as exc:  # a refresh must never kill the loop
                return self._failed(uri, _describe(exc))
            self._remote = keys
            self._by_kid = self._index()
            self._generation += 1
            self._loaded = True
            self._last_success = self._wall()
            self._log.info(
                "jwks_refreshed",
                issuer=redact_uri(self.issuer),
                uri=redact_uri(uri),
                keys=len(keys),
                static_keys=len(self._static),
            )
            if self._on_refresh is not None:
                self._on_refresh(True)
            return True

    def _failed(self, uri: str, error: str) -> bool:
        age = self.age()
        self._log.warning(
            "jwks_refresh_failed",
            issuer=redact_uri(self.issuer),
            uri=redact_uri(uri),
            error=error,
            kept_keys=len(self._remote),
            key_set_age_seconds=None if age is None else round(age, 1),
        )
        if self._on_refresh is not None:
            self._on_refresh(False)
        return False

    async def run(self) -> None:
        """Load unless already attempted, then refresh every interval (0 = never)."""
        if self.remote:
            await _refresh_loop(
                self.refresh, self._refresh_interval, load_first=not self._attempted
            )


class IdpKeys:
    """All configured issuers' key sets: what the app refreshes, runs and checks for readiness.

    `on_refresh(success, key_count, oldest_success)` feeds the JWKS metrics; `oldest_success` is
    the oldest issuer's last good fetch, so `time() - jwks_last_success_timestamp_seconds` is
    the age of the stalest key set.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerKeys],
        on_refresh: Callable[[bool, int, float], None] | None = None,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        if len(self._issuers) != len(issuers):
            raise ValueError("issuers must be distinct")
        self._on_refresh = on_refresh
        for issuer in issuers:
            issuer._on_refresh = self._notify

    def _notify(self, success: bool) -> None:
        if self._on_refresh is None:
            return
        remote = [i for i in self._issuers.values() if i.remote]
        oldest = min((i.last_success or 0.0 for i in remote), default=0.0)
        self._on_refresh(success, self.key_count, oldest)

    def issuer(self, name: str) -> IssuerKeys | None:
        return self._issuers.get(name)

    @property
    def issuers(self) -> tuple[IssuerKeys, ...]:
        return tuple(self._issuers.values())

    @property
    def loaded(self) -> bool:
        return all(i.loaded for i in self._issuers.values())

    @property
    def key_count(self) -> int:
        return sum(i.key_count for i in self._issuers.values())

    def oldest_age(self) -> float | None:
        ages = [a for a in (i.age() for i in self._issuers.values()) if a is not None]
        return max(ages, default=None)

    async def refresh(self) -> bool:
        results = await asyncio.gather(*(i.refresh() for i in self._issuers.values()))
        return all(results)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for issuer in self._issuers.values():
                tg.create_task(issuer.run(), name=f"jwks {redact_uri(issuer.issuer)}")
