"""Config -> the opt-in identity mappers (cert, chain, idp); the IdP key sets: proxy.keys.build.

Called by the composition root. Every problem becomes a `ConfigError` naming its key path, so
`check-config` reports bad patterns, grants and key files before anything listens.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.claims.cert import FIELDS, CertificateClaimMapper, CertificateRule
from proxy.claims.chain import ChainClaimMapper
from proxy.claims.idp import IdpClaimMapper, IssuerPolicy, RoleClaim
from proxy.claims.patterns import PatternError
from proxy.config import AuthorizationConfig, Config, IssuerConfig, identity_members
from proxy.errors import ConfigError
from proxy.interfaces import ClaimMapper, Logger
from proxy.keys.idp import IdpKeys

_RULES = "authorization.certificateRules"
_ISSUERS = "authorization.idp.issuers"


def build_certificate_mapper(az: AuthorizationConfig) -> CertificateClaimMapper:
    rules: list[CertificateRule] = []
    for i, rule in enumerate(az.certificate_rules):
        patterns = {name: getattr(rule, name) for name, _, _ in FIELDS if getattr(rule, name)}
        try:
            rules.append(CertificateRule.build(patterns, rule.grants))
        except PatternError as exc:
            where = f"{_RULES}[{i}].{exc.key}" if exc.key else f"{_RULES}[{i}]"
            raise ConfigError(where, str(exc)) from exc
    if not rules:
        raise ConfigError(_RULES, "at least one rule is required")
    return CertificateClaimMapper(rules)


def _policy(iss: IssuerConfig, where: str) -> IssuerPolicy:
    role_claims: list[RoleClaim] = []
    for j, rc in enumerate(iss.role_claims):
        try:
            role_claims.append(RoleClaim.build(path=rc.path, claim=rc.claim, table=rc.map))
        except PatternError as exc:
            raise ConfigError(f"{where}.roleClaims[{j}]", str(exc)) from exc
    try:
        return IssuerPolicy(
            issuer=iss.issuer,
            audiences=frozenset(a for a in iss.audience if a.strip()),
            algorithms=frozenset(iss.algorithms),
            subject_claim=iss.subject_claim,
            leeway=iss.leeway,
            role_claims=tuple(role_claims),
            permissions_claim=iss.permissions_claim,
        )
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from exc


def build_idp_mapper(
    az: AuthorizationConfig, keys: IdpKeys, logger: Logger | None = None
) -> IdpClaimMapper:
    policies = [_policy(iss, f"{_ISSUERS}[{i}]") for i, iss in enumerate(az.idp.issuers)]
    try:
        return IdpClaimMapper(policies, keys, cache_size=az.token_cache_size, logger=logger)
    except ValueError as exc:
        raise ConfigError(_ISSUERS, str(exc)) from exc


def build_identity_mapper(
    cfg: Config,
    *,
    jwt: Callable[[], ClaimMapper],
    idp_keys: IdpKeys | None,
    logger: Logger | None = None,
) -> ClaimMapper:
    """The mapper for `claimMapper: cert | chain | idp`; `jwt()` builds Temporal's default."""
    az = cfg.authorization
    name = az.claim_mapper.lower()
    used = identity_members(az)

    def idp() -> ClaimMapper:
        if idp_keys is None:
            raise ConfigError(_ISSUERS, "no key sets were built for the identity provider")
        return build_idp_mapper(az, idp_keys, logger)

    if name == "cert":
        return build_certificate_mapper(az)
    if name == "idp":
        return idp()
    if name != "chain":
        raise ConfigError("authorization.claimMapper", f"not an identity mapper: {name!r}")
    cert = build_certificate_mapper(az) if "cert" in used else None
    token = jwt() if "jwt" in used else idp() if "idp" in used else None
    try:
        return ChainClaimMapper(az.chain.mode, cert=cert, token=token)
    except ValueError as exc:
        raise ConfigError("authorization.chain", str(exc)) from exc
