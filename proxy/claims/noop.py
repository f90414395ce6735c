"""Temporal's noop claim mapper: everyone is a system admin (`claimMapper: noop`)."""

from __future__ import annotations

from proxy.model import AuthInfo, Claims, Role

_ADMIN = Claims(system=Role.ADMIN, auth_type="")


class NoopClaimMapper:
    """Claims(system=ADMIN) for every caller; runs even without a token or certificate."""

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        return _ADMIN

    def auth_info_required(self) -> bool:
        return False
