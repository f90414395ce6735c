"""Identity-provider key sets: per issuer a JWKS URI or OIDC discovery, static keys, refetch.

Beyond Temporal (`claimMapper: idp`): every asymmetric JWS key type, a JWK's `alg`/`use`
honoured, OIDC discovery, a rate-limited refetch when a token names an unknown kid, static
PEM/JWKS keys for air-gapped clusters, and the last good set kept through an outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from proxy.errors import KeySourceError
from proxy.interfaces import Logger, TaskSpawner
from proxy.keys.fetch import RefreshedSource, check_uri, json_document, redact_uri
from proxy.keys.jwk import check_x5, parse_ec, parse_okp, parse_rsa, short
from proxy.keys.trust import CaTrust

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
        key = parse_rsa(jwk)
    elif kty == "EC":
        key = parse_ec(jwk)
    elif kty == "OKP":
        key = parse_okp(jwk)
    else:
        return None  # oct (HMAC) and unknown types are never verification keys here
    check_x5(jwk, key)
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
    keys = json_document(document).get("keys")
    if not isinstance(keys, list):
        raise KeySourceError("document is not a JWKS ({'keys': [...]})")
    out: list[VerificationKey] = []
    for index, jwk in enumerate(keys):
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
            log.warning("jwks_key_skipped", index=index, kid=short(str(kid)), why=str(exc))
            continue
        if key is None:
            log.warning(
                "jwks_key_skipped", index=index, kid=short(str(kid)), why="not a signing key"
            )
            continue
        out.append(VerificationKey(kid=kid, key=key, alg=alg))
    if not out:
        raise KeySourceError("no usable signing key in the document")
    return tuple(out)


def parse_discovery(document: bytes, issuer: str) -> str:
    """`jwks_uri` from an OpenID Provider configuration whose `issuer` must be ours exactly."""
    doc = json_document(document, "discovery document")
    if doc.get("issuer") != issuer:
        # OpenID Connect Discovery §4.3: a mismatch means the document must not be used.
        raise KeySourceError("discovery document names a different issuer")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise KeySourceError("discovery document has no jwks_uri")
    try:
        check_uri(jwks_uri)
    except ValueError as exc:
        raise KeySourceError(str(exc)) from exc
    return jwks_uri


def discovery_uri_for(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


class IssuerKeys(RefreshedSource[tuple[VerificationKey, ...]]):
    """The verification keys of one identity provider.

    Remote keys come from `jwks_uri`, or from the `jwks_uri` an OIDC discovery document names
    (re-discovered on every periodic refresh). Static keys (PEM files, a JWKS file) are always
    there. A failed refresh keeps the last good remote set; `age()` tells how old it is.

    A token naming a kid we do not have triggers one refetch, at most once per
    `refetch_interval` (0 disables it); concurrent misses share that one fetch. The refetch runs
    in the TaskGroup `attach` gave (`IdpKeys.run` does); unattached, the first caller runs it.
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
        trust: CaTrust | None = None,
    ) -> None:
        if jwks_uri and discovery_uri:
            raise ValueError("give jwks_uri or discovery_uri, not both")
        for uri in (jwks_uri, discovery_uri):
            if uri:
                check_uri(uri)
        if not (jwks_uri or discovery_uri or static_keys):
            raise ValueError("an issuer needs a JWKS URI, discovery or static keys")
        if refresh_interval < 0 or refetch_interval < 0:
            raise ValueError("intervals must not be negative")
        super().__init__(
            refresh_interval=refresh_interval,
            fetch_timeout=fetch_timeout,
            logger=logger,
            wall_clock=wall_clock,
            trust=trust,
        )
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._discovery_uri = discovery_uri
        self._static = tuple(static_keys)
        self._refetch_interval = refetch_interval
        self._on_refresh = on_refresh
        self._clock = clock
        self._remote: tuple[VerificationKey, ...] = ()
        self._by_kid: Mapping[str | None, tuple[VerificationKey, ...]] = self._index()
        self._last_refetch = -math.inf
        self._inflight: asyncio.Future[bool] | None = None
        self._spawner: TaskSpawner | None = None

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
    def can_refetch(self) -> bool:
        """Whether an unknown kid can trigger a refetch (so `run` keeps a TaskGroup for it)."""
        return self.remote and self._refetch_interval > 0

    @property
    def loaded(self) -> bool:
        return self._loaded or not self.remote

    @property
    def key_count(self) -> int:
        return len(self._static) + len(self._remote)

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

    def attach(self, spawner: TaskSpawner | None) -> None:
        """Run refetches as tasks of `spawner` (a TaskGroup in the app's); None detaches."""
        self._spawner = spawner

    async def refetch_unknown_kid(self) -> bool:
        """Refresh because a token names an unknown kid; rate-limited, shared by waiters."""
        pending = self._inflight
        if pending is None:
            now = self._clock()
            if self._refetch_interval <= 0 or now - self._last_refetch < self._refetch_interval:
                return False
            self._last_refetch = now
            if self._spawner is None:
                return await self._refetch_in_caller()
            task = self._spawner.create_task(
                self.refresh(), name=f"jwks-refetch {redact_uri(self.issuer)}"
            )
            task.add_done_callback(self._refetch_done)
            pending = self._inflight = task
        # shield: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(pending)

    async def _refetch_in_caller(self) -> bool:
        # Not running (a one-shot check, a test): the first caller fetches, the others wait
        # for its answer, and nothing outlives the callers.
        shared: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight = shared
        result = False
        try:
            result = await self.refresh()
        finally:
            self._inflight = None
            shared.set_result(result)
        return result

    def _refetch_done(self, task: asyncio.Future[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    # -- refreshing

    async def refresh(self) -> bool:
        """Discover (if configured) and fetch the JWKS; keep the old set on any failure."""
        if not self.remote:
            return True
        return await super().refresh()

    async def _load(self) -> tuple[VerificationKey, ...]:
        uri = self._jwks_uri
        if self._discovery_uri:
            uri = parse_discovery(await self._fetch(self._discovery_uri), self.issuer)
        return parse_idp_jwks(await self._fetch(uri), self._log)

    def _install(self, value: tuple[VerificationKey, ...]) -> None:
        self._remote = value
        self._by_kid = self._index()
        self._log.info(
            "jwks_refreshed",
            issuer=redact_uri(self.issuer),
            uri=redact_uri(self._last_uri),
            keys=len(value),
            static_keys=len(self._static),
        )
        if self._on_refresh is not None:
            self._on_refresh(True)

    def _failed(self, uri: str, error: str) -> None:
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

    async def run(self) -> None:
        """Load unless already attempted, then refresh every interval (0 = never)."""
        if self.remote:
            await self._run_loop()


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
        """Every issuer's refresh loop, and its refetches, in one TaskGroup (the app's task)."""
        try:
            async with asyncio.TaskGroup() as tg:
                for issuer in self._issuers.values():
                    issuer.attach(tg)
                    tg.create_task(issuer.run(), name=f"jwks {redact_uri(issuer.issuer)}")
                if any(i.can_refetch for i in self._issuers.values()):
                    # Refetches need the group even when no issuer refreshes periodically.
                    await asyncio.Event().wait()
        finally:
            for issuer in self._issuers.values():
                issuer.attach(None)
