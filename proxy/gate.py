"""Per call: credentials -> claims -> CallTarget -> decision. No grpc here, so it tests without
sockets; `forward.py` turns a `Verdict` into a gRPC status (`proxy.wire.write` has its bytes)."""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Literal

from proxy.config.schema import Config
from proxy.errors import CredentialError, MalformedRequestError
from proxy.interfaces import AuthInfoOptional, Authorizer, ClaimMapper, ClaimsOnlyDenial, Logger
from proxy.listfilter import can_list_some
from proxy.methods import LIST_NAMESPACES
from proxy.metrics import ProxyMetrics
from proxy.model import (
    ALLOW,
    AuthInfo,
    AuthType,
    CallTarget,
    Claims,
    Decision,
    MethodInfo,
    PeerIdentity,
    Reason,
    Result,
)
from proxy.wire.read import extract_namespace

Mode = Literal["enforce", "shadow"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    result: Result
    claims: Claims | None
    namespace: str
    would_deny: bool = False  # shadow mode: forwarded although `enforce` would deny
    filter_namespaces: bool = False  # ListNamespaces answered with the caller's namespaces only
    body_read: bool = True  # False: denied from the claims alone, the request bytes untouched

    @property
    def allowed(self) -> bool:
        return self.result.decision is Decision.ALLOW


_AUTH_TYPES = {t.value: t.value for t in AuthType}


def auth_type_label(claims: Claims | None) -> str:
    if claims is None:
        return AuthType.NONE.value
    if claims.auth_type == "":
        return AuthType.NOOP.value
    return _AUTH_TYPES.get(claims.auth_type, AuthType.OTHER.value)


class Gate:
    """Decides one call exactly as Temporal's authorization interceptor would."""

    def __init__(
        self,
        *,
        claim_mapper: ClaimMapper,
        authorizer: Authorizer,
        metrics: ProxyMetrics,
        logger: Logger,
        audience: str = "",
        peer_always_verified: bool = False,
        mode: Mode = "enforce",
        filter_list_namespaces: bool = False,
    ) -> None:
        self._mapper = claim_mapper
        self._authorizer = authorizer
        self._metrics = metrics
        self._log = logger
        self._audience = audience
        # With requireClientAuth every connection carries a verified certificate, so Temporal's
        # "no token and no certificate -> anonymous" rule never applies.
        self._peer_always_verified = peer_always_verified
        self._mode: Mode = mode
        self._filter_list_namespaces = filter_list_namespaces
        self._auth_info_required = not (
            isinstance(claim_mapper, AuthInfoOptional) and not claim_mapper.auth_info_required()
        )
        # Shadow mode forwards every call, so it always reads the namespace it logs.
        self._early: ClaimsOnlyDenial | None = (
            authorizer if mode == "enforce" and isinstance(authorizer, ClaimsOnlyDenial) else None
        )

    @property
    def mode(self) -> Mode:
        """The one owner of the authorization mode (forward's audit records read it here)."""
        return self._mode

    def _filters_list(self, result: Result, method: MethodInfo, claims: Claims | None) -> bool:
        return (
            self._filter_list_namespaces
            and result.reason is Reason.INSUFFICIENT_ROLE
            and method.full_name == LIST_NAMESPACES
            and can_list_some(claims)
        )

    async def check(
        self,
        method: MethodInfo,
        request: bytes,
        *,
        token: str = "",
        extra: str = "",
        peer: PeerIdentity | None = None,
    ) -> Verdict:
        started = perf_counter()
        claims: Claims | None = None
        namespace = ""
        stage = Reason.CLAIM_MAPPER_ERROR
        body_read = False
        try:
            if self._mode == "shadow":
                # Shadow mode forwards every call: the would-deny log names its namespace even
                # when the credentials fail, so the body is read first, as it always was.
                body_read = True
                namespace = extract_namespace(request, method.namespace_field)
            if peer is not None and not peer.client_auth:
                raise CredentialError(
                    Reason.BAD_CERTIFICATE, "client certificate lacks the clientAuth key usage"
                )
            if (
                token
                or peer is not None
                or self._peer_always_verified
                or not self._auth_info_required
            ):
                info = AuthInfo(token=token, extra=extra, peer=peer, audience=self._audience)
                claims = await self._mapper.get_claims(info)
            stage = Reason.AUTHORIZER_ERROR
            early = (
                self._early.deny_without_target(claims, method.full_name)
                if self._early is not None
                else None
            )
            if (
                early is not None
                and early.decision is Decision.DENY
                and not self._filters_list(early, method, claims)
            ):
                # The claims decide: the body, whatever its size, is never parsed.
                result = early
            else:
                if not body_read:
                    body_read = True
                    namespace = extract_namespace(request, method.namespace_field)
                result = await self._authorizer.authorize(
                    claims,
                    CallTarget(api_name=method.full_name, namespace=namespace, request=request),
                )
        except MalformedRequestError as exc:
            # Labelled as before the claims were read (auth_type "none"), as it always was.
            claims = None
            result = Result(decision=Decision.DENY, reason=Reason.MALFORMED_REQUEST)
            self._log.warning("request_malformed", method=method.short_name, error=str(exc))
        except CredentialError as exc:
            result = Result(decision=Decision.DENY, reason=exc.reason)
            self._log.warning(
                "claims_failed", method=method.short_name, reason=exc.reason.value, error=exc.detail
            )
        except Exception as exc:  # a plugin's bug must deny, never crash or allow
            result = Result(decision=Decision.DENY, reason=stage)
            self._log.error(
                "authorization_error",
                method=method.short_name,
                reason=stage.value,
                error=repr(exc),
            )
        filtered = False
        if body_read and self._filters_list(result, method, claims):
            # Opt-in extension: namespace-scoped callers may list, and see only their own.
            result, filtered = ALLOW, True
        auth_type = auth_type_label(claims)
        self._metrics.authz_duration.observe(perf_counter() - started)
        self._metrics.decision(
            result.decision, result.reason, auth_type, self._mode, namespace
        ).inc()
        if result.decision is not Decision.ALLOW:
            # Cedar: the ids of the policies that denied (none: no `permit` matched).
            decided = (
                {"policies": list(result.policies)}
                if result.policies or result.reason is Reason.POLICY_DENIED
                else {}
            )
            self._log.warning(
                "authz_denied" if self._mode == "enforce" else "authz_would_deny",
                subject=claims.subject if claims is not None else "",
                auth_type=auth_type,
                method=method.short_name,
                namespace=namespace,
                reason=result.reason.value,
                mode=self._mode,
                **decided,
            )
            if self._mode == "shadow":
                return Verdict(
                    result=Result(decision=Decision.ALLOW, reason=result.reason),
                    claims=claims,
                    namespace=namespace,
                    would_deny=True,
                    body_read=body_read,
                )
        return Verdict(
            result=result,
            claims=claims,
            namespace=namespace,
            filter_namespaces=filtered,
            body_read=body_read,
        )


def build_gate(
    cfg: Config,
    *,
    claim_mapper: ClaimMapper,
    authorizer: Authorizer,
    metrics: ProxyMetrics,
    logger: Logger,
    peer_always_verified: bool,
    mode: Mode | None = None,
) -> Gate:
    """The Gate `serve` runs; `explain` passes mode="enforce" to show what enforce decides.

    `peer_always_verified`: every connection carries a verified certificate (requireClientAuth
    as loaded, not just as configured)."""
    az = cfg.authorization
    return Gate(
        claim_mapper=claim_mapper,
        authorizer=authorizer,
        metrics=metrics,
        logger=logger,
        audience=az.audience,
        peer_always_verified=peer_always_verified,
        mode=az.mode if mode is None else mode,
        filter_list_namespaces=az.filter_list_namespaces,
    )
