"""Claim mapper chain (`claimMapper: chain`): a certificate mapper and a token mapper combined.

Modes:
- `union`: whatever credentials are present count; roles OR-ed. A token that is present but
  bad is still an error (never silently ignored). Neither credential: CERTIFICATE_REQUIRED.
- `jwt-only`: only the token mapper; the certificate is ignored.
- `cert-only`: only the certificate mapper; any token is ignored.
- `cert-and-jwt`: both are required (CERTIFICATE_REQUIRED / TOKEN_REQUIRED); roles OR-ed.

The subject (and auth type) is the token's when a token counted, else the certificate's.
"""

from __future__ import annotations

from typing import Literal

from proxy.claims.patterns import RoleAccumulator
from proxy.errors import CredentialError
from proxy.interfaces import ClaimMapper
from proxy.model import AuthInfo, Claims, Reason

Mode = Literal["union", "jwt-only", "cert-only", "cert-and-jwt"]
MODES: tuple[Mode, ...] = ("union", "jwt-only", "cert-only", "cert-and-jwt")


class ChainClaimMapper:
    def __init__(
        self,
        mode: Mode,
        *,
        cert: ClaimMapper | None = None,
        token: ClaimMapper | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown chain mode {mode!r}")
        uses_cert = mode in ("union", "cert-only", "cert-and-jwt")
        uses_token = mode in ("union", "jwt-only", "cert-and-jwt")
        if mode == "union" and cert is None and token is None:
            raise ValueError("union needs at least one member")
        if mode != "union":
            if uses_cert and cert is None:
                raise ValueError(f"{mode} needs a certificate member")
            if uses_token and token is None:
                raise ValueError(f"{mode} needs a token member")
        self._mode = mode
        self._cert = cert if uses_cert else None
        self._token = token if uses_token else None

    @property
    def mode(self) -> Mode:
        return self._mode

    def auth_info_required(self) -> bool:
        return True

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        has_cert = self._cert is not None and auth_info.peer is not None
        has_token = self._token is not None and bool(auth_info.token)
        if self._mode == "cert-and-jwt":
            if not has_cert:
                raise CredentialError(Reason.CERTIFICATE_REQUIRED, "no verified client certificate")
            if not has_token:
                raise CredentialError(Reason.TOKEN_REQUIRED, "no bearer token")
        elif self._mode == "cert-only" and not has_cert:
            raise CredentialError(Reason.CERTIFICATE_REQUIRED, "no verified client certificate")
        elif self._mode == "jwt-only" and not has_token:
            raise CredentialError(Reason.TOKEN_REQUIRED, "no bearer token")
        elif not (has_cert or has_token):
            if self._cert is not None:
                raise CredentialError(Reason.CERTIFICATE_REQUIRED, "no credentials")
            raise CredentialError(Reason.TOKEN_REQUIRED, "no credentials")

        cert_claims = await self._cert.get_claims(auth_info) if has_cert and self._cert else None
        token_claims = (
            await self._token.get_claims(auth_info) if has_token and self._token else None
        )
        parts = [c for c in (cert_claims, token_claims) if c is not None]
        if len(parts) == 1:
            return parts[0]
        roles = RoleAccumulator()
        for c in parts:
            roles.add_roles(c.system, c.namespaces)
        lead = token_claims if token_claims is not None else parts[0]
        return Claims.build(
            subject=lead.subject,
            system=roles.system,
            namespaces=roles.namespaces,
            auth_type=lead.auth_type,
            # For policy engines: the certificate and the token's exposed claims (when filled).
            peer=next((c.peer for c in parts if c.peer is not None), None),
            token_claims=lead.token_claims,
        )
