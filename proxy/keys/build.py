"""Config -> the key provider the claim mapper needs: Temporal's JWKS, the IdP key sets, or none.

Every problem becomes a `ConfigError` naming its key path, so `check-config` reports bad URIs
and key files before anything listens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from proxy.config.schema import AuthorizationConfig, Config, IssuerConfig
from proxy.config.validate import identity_members
from proxy.errors import ConfigError, KeySourceError
from proxy.interfaces import Logger
from proxy.keys.idp import (
    IdpKeys,
    IssuerKeys,
    VerificationKey,
    discovery_uri_for,
    parse_idp_jwks,
)
from proxy.keys.jwk import load_public_key_pem
from proxy.keys.jwks import JwksKeyProvider
from proxy.keys.trust import CaTrust

_ISSUERS = "authorization.idp.issuers"


class RefreshMetrics(Protocol):
    """Where refresh outcomes go (ProxyMetrics): success, key count, last success time."""

    def on_jwks_refresh(self, success: bool, key_count: int, when: float) -> None: ...


def build_key_provider(
    cfg: Config, metrics: RefreshMetrics, logger: Logger | None
) -> JwksKeyProvider | IdpKeys | None:
    """The key sets of the configured mapper(s); None when no mapper reads tokens."""
    used = identity_members(cfg.authorization)
    if "idp" in used:
        return build_idp_keys(cfg.authorization, logger, metrics.on_jwks_refresh)
    if "jwt" not in used:
        return None
    kp = cfg.authorization.jwt_key_provider
    trust = _trust(kp.root_ca_files, kp.root_ca_data, "authorization.jwtKeyProvider", logger)
    try:
        return JwksKeyProvider(
            kp.key_source_uris,
            kp.refresh_interval,
            fetch_timeout=kp.fetch_timeout,
            logger=logger,
            on_refresh=lambda ok, n: metrics.on_jwks_refresh(ok, n, time.time()),
            trust=trust,
        )
    except ValueError as exc:  # a blank list, a URI we cannot fetch, a negative interval
        raise ConfigError("authorization.jwtKeyProvider.keySourceURIs", str(exc)) from exc


def _trust(
    files: tuple[str, ...], data: tuple[str, ...], where: str, logger: Logger | None
) -> CaTrust | None:
    """The source's private CA, read and parsed now (errors name the key); None: system roots."""
    if not files and not data:
        return None
    return CaTrust(files=files, data=data, path=where, logger=logger)


def _read(path: str, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror}") from exc


def _static_keys(iss: IssuerConfig, where: str, logger: Logger | None) -> list[VerificationKey]:
    keys: list[VerificationKey] = []
    if iss.jwks_file:
        try:
            keys += parse_idp_jwks(_read(iss.jwks_file, f"{where}.jwksFile"), logger)
        except KeySourceError as exc:
            raise ConfigError(f"{where}.jwksFile", str(exc)) from exc
    for j, pk in enumerate(iss.public_key_files):
        path = f"{where}.publicKeyFiles[{j}].file"
        try:
            key = load_public_key_pem(_read(pk.file, path))
        except KeySourceError as exc:
            raise ConfigError(path, str(exc)) from exc
        keys.append(VerificationKey(kid=pk.kid or None, key=key))
    return keys


def build_idp_keys(
    az: AuthorizationConfig,
    logger: Logger | None = None,
    on_refresh: Callable[[bool, int, float], None] | None = None,
) -> IdpKeys:
    issuers: list[IssuerKeys] = []
    for i, iss in enumerate(az.idp.issuers):
        where = f"{_ISSUERS}[{i}]"
        discovery = iss.discovery_uri or (discovery_uri_for(iss.issuer) if iss.discovery else "")
        try:
            issuers.append(
                IssuerKeys(
                    iss.issuer,
                    jwks_uri=iss.jwks_uri,
                    discovery_uri=discovery,
                    static_keys=_static_keys(iss, where, logger),
                    refresh_interval=iss.refresh_interval,
                    refetch_interval=iss.refetch_interval,
                    fetch_timeout=iss.fetch_timeout,
                    logger=logger,
                    trust=_trust(iss.root_ca_files, iss.root_ca_data, where, logger),
                )
            )
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from exc
    try:
        return IdpKeys(issuers, on_refresh)
    except ValueError as exc:
        raise ConfigError(_ISSUERS, str(exc)) from exc
