"""Temporal's JWKS KeyProvider: RSA and EC kid maps from JWKS URIs, refreshed in the background.

Temporal's default token key provider semantics (spec §3): RSA and EC keys live in separate kid
maps, a refresh is all-or-nothing across the URIs, the previous set is kept on failure, and a
kid miss never triggers a refresh. Where we differ on purpose: fetches have a timeout, a non-2xx
HTTP answer is a failed fetch, and until a set was ever loaded every lookup fails with NO_KEYS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from proxy.errors import CredentialError, KeySourceError
from proxy.interfaces import Logger
from proxy.keys.fetch import RefreshedSource, check_uri, json_document, redact_uri
from proxy.keys.jwk import b64url_member, check_x5, parse_ec, parse_rsa, short
from proxy.keys.trust import CaTrust
from proxy.model import Reason


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
            raise CredentialError(Reason.UNKNOWN_KEY, f"no {kind} key for kid {short(kid)}")
        return key


def parse_jwks(document: bytes | str, logger: Logger | None = None) -> KeySet:
    """Parse a JWKS document into a KeySet; raise KeySourceError if any JWK is unparseable.

    Usable keys: public RSA and public EC (P-256/384/521). `oct`, OKP Ed25519 and private keys
    are valid JWKs Temporal does not use: skipped with a warning. Anything else fails the whole
    document, as in Temporal.
    """
    log = logger if logger is not None else structlog.get_logger()
    keys = json_document(document).get("keys")
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
                key = parse_rsa(jwk)
            elif kty == "EC":
                key = parse_ec(jwk)
            elif kty == "oct":
                b64url_member(jwk, "k")
            elif kty == "OKP":
                if jwk.get("crv") != "Ed25519":
                    raise KeySourceError("unsupported OKP curve")
                x = b64url_member(jwk, "x")
                if x is None or len(x) != 32:
                    raise KeySourceError("invalid Ed25519 key")
            else:
                raise KeySourceError("unknown 'kty'")
            if private:
                b64url_member(jwk, "d")
            check_x5(jwk, key)
        except KeySourceError as exc:
            raise KeySourceError(f"key #{index}: {exc}") from exc
        if private or key is None:
            # Never log the JWK itself: it may be a secret.
            log.warning(
                "jwks_key_skipped",
                index=index,
                kid=short(kid),
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


class JwksKeyProvider(RefreshedSource[KeySet]):
    """KeyProvider backed by JWKS URIs, refreshed in the background (`run`, in a TaskGroup)."""

    def __init__(
        self,
        uris: tuple[str, ...],
        refresh_interval: float,
        fetch_timeout: float = 10.0,
        logger: Logger | None = None,
        on_refresh: Callable[[bool, int], None] | None = None,
        trust: CaTrust | None = None,
    ) -> None:
        self._uris = tuple(u.strip() for u in uris if u.strip())
        if not self._uris:
            raise ValueError("at least one non-blank key source URI is required")
        for uri in self._uris:
            check_uri(uri)  # fail at startup, not at the first refresh
        super().__init__(
            refresh_interval=refresh_interval,
            fetch_timeout=fetch_timeout,
            logger=logger,
            trust=trust,
        )
        self._on_refresh = on_refresh
        self._keys = KeySet()

    # -- KeyProvider

    def get_key(self, alg: str, kid: str) -> PublicKeyTypes:
        if not self._loaded:
            raise CredentialError(Reason.NO_KEYS, "no verification keys loaded yet")
        return self._keys.get(alg, kid)

    # -- state for readiness and metrics

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def key_count(self) -> int:
        return self._keys.key_count

    # -- refreshing: every URI, all-or-nothing

    async def _load(self) -> KeySet:
        return _merge([parse_jwks(await self._fetch(uri), self._log) for uri in self._uris])

    def _install(self, value: KeySet) -> None:
        self._keys = value
        self._log.info(
            "jwks_refreshed",
            rsa_keys=len(value.rsa),
            ec_keys=len(value.ec),
            skipped_keys=value.skipped,
            sources=len(self._uris),
        )
        self._notify(True)

    def _failed(self, uri: str, error: str) -> None:
        self._log.warning("jwks_refresh_failed", uri=redact_uri(uri), error=error)
        self._notify(False)

    def _notify(self, success: bool) -> None:
        if self._on_refresh is not None:
            self._on_refresh(success, self._keys.key_count)

    async def run(self) -> None:
        """Load now unless already attempted, then refresh every interval (0 = never)."""
        await self._run_loop()


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
