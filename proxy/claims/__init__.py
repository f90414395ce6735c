"""Claim mappers: credentials -> Temporal claims."""

from proxy.claims.jwt import (
    DefaultJWTClaimMapper,
    compile_permissions_regex,
    parse_permissions,
    permission_to_role,
)
from proxy.claims.noop import NoopClaimMapper
from proxy.claims.token import parse_authorization_header

__all__ = [
    "DefaultJWTClaimMapper",
    "NoopClaimMapper",
    "compile_permissions_regex",
    "parse_authorization_header",
    "parse_permissions",
    "permission_to_role",
]
