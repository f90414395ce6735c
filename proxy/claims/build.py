"""Config -> the claim mapper: the one construction switch for `authorization.claimMapper`.

Adding a built-in claim mapper touches three places:
1. proxy/config.py: its name in `CLAIM_MAPPERS`, its config section, its checks in
   `_validate_identity` (and in `identity_members` if it reads token keys, which
   proxy/keys/build.py then builds);
2. this module: one branch in `build_claim_mapper`, and one in `_token_member` if it can be a
   chain member;
3. its own module beside this one (proxy/claims/<name>.py).

Called by the composition root and by `explain`. Every problem becomes a `ConfigError` naming
its key path, so `check-config` reports bad patterns, grants and key files before anything
listens. The IdP key sets are built by proxy/keys/build.py and handed in.
"""

from __future__ import annotations

from proxy.claims.cert import FIELDS, CertificateClaimMapper, CertificateRule
from proxy.claims.chain import ChainClaimMapper
from proxy.claims.idp import IdpClaimMapper, IssuerPolicy, RoleClaim
from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.claims.noop import NoopClaimMapper
from proxy.claims.patterns import PatternError
from proxy.config.schema import AuthorizationConfig, Config, IssuerConfig
from proxy.config.validate import identity_members
from proxy.errors import ConfigError
from proxy.interfaces import ClaimMapper, Logger
from proxy.keys.idp import IdpKeys
from proxy.keys.jwks import JwksKeyProvider
from proxy.plugins import load_plugin

_RULES = "authorization.certificateRules"
_ISSUERS = "authorization.idp.issuers"
_JWKS = "authorization.jwtKeyProvider.keySourceURIs"


def _for_policies(az: AuthorizationConfig) -> bool:
    """Only Cedar reads `Claims.peer` and `.token_claims`: otherwise they are not filled."""
    return az.authorizer == "cedar"


def _exposed(az: AuthorizationConfig) -> tuple[str, ...]:
    """`authorization.cedar.tokenClaims`, the token claims policies see (Cedar only)."""
    return az.cedar.token_claims if _for_policies(az) else ()


def build_claim_mapper(
    cfg: Config, keys: JwksKeyProvider | IdpKeys | None, logger: Logger | None
) -> ClaimMapper:
    """The mapper `authorization.claimMapper` names (config normalized the name);
    `keys` is what `build_key_provider` built for it."""
    az = cfg.authorization
    name = az.claim_mapper
    if name == "default":
        return build_jwt_mapper(az, keys, logger)
    if name == "noop":
        return NoopClaimMapper()
    if name == "cert":
        return build_certificate_mapper(az)
    if name == "idp":
        return build_idp_mapper(az, keys, logger)
    if name == "chain":
        return build_chain_mapper(az, keys, logger)
    mapper = load_plugin(name, ClaimMapper, "authorization.claimMapper")
    return mapper  # type: ignore[return-value]  # load_plugin checked the protocol


def build_jwt_mapper(
    az: AuthorizationConfig, keys: JwksKeyProvider | IdpKeys | None, logger: Logger | None
) -> DefaultJWTClaimMapper:
    """Temporal's default mapper (`claimMapper: default`, or chain member `jwt`)."""
    if not isinstance(keys, JwksKeyProvider):
        raise ConfigError(_JWKS, "no key set was built for Temporal's default claim mapper")
    try:
        return DefaultJWTClaimMapper(
            keys,
            permissions_claim_name=az.permissions_claim_name,
            permissions_regex=az.permissions_regex,
            cache_size=az.token_cache_size,
            logger=logger,
            token_claims=_exposed(az),
            attach_peer=_for_policies(az),
        )
    except ValueError as exc:
        raise ConfigError("authorization.permissionsRegex", str(exc)) from exc


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
    return CertificateClaimMapper(rules, attach_peer=_for_policies(az))


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
    az: AuthorizationConfig, keys: JwksKeyProvider | IdpKeys | None, logger: Logger | None = None
) -> IdpClaimMapper:
    """`claimMapper: idp`, or chain member `idp`: the issuers' policies over their key sets."""
    if not isinstance(keys, IdpKeys):
        raise ConfigError(_ISSUERS, "no key sets were built for the identity provider")
    policies = [_policy(iss, f"{_ISSUERS}[{i}]") for i, iss in enumerate(az.idp.issuers)]
    try:
        return IdpClaimMapper(
            policies,
            keys,
            cache_size=az.token_cache_size,
            logger=logger,
            token_claims=_exposed(az),
            attach_peer=_for_policies(az),
        )
    except ValueError as exc:
        raise ConfigError(_ISSUERS, str(exc)) from exc


def _token_member(
    az: AuthorizationConfig, keys: JwksKeyProvider | IdpKeys | None, logger: Logger | None
) -> ClaimMapper | None:
    used = identity_members(az)
    if "jwt" in used:
        return build_jwt_mapper(az, keys, logger)
    if "idp" in used:
        return build_idp_mapper(az, keys, logger)
    return None


def build_chain_mapper(
    az: AuthorizationConfig, keys: JwksKeyProvider | IdpKeys | None, logger: Logger | None
) -> ChainClaimMapper:
    """`claimMapper: chain`: the members its mode uses, built here like the stand-alone ones."""
    cert = build_certificate_mapper(az) if "cert" in identity_members(az) else None
    token = _token_member(az, keys, logger)
    try:
        return ChainClaimMapper(az.chain.mode, cert=cert, token=token)
    except ValueError as exc:
        raise ConfigError("authorization.chain", str(exc)) from exc
