"""temporal-auth-proxy: mTLS, JWT and Temporal-exact authorization for a Temporal frontend."""

from proxy.interfaces import Authorizer, ClaimMapper, KeyProvider
from proxy.model import (
    Access,
    AuthInfo,
    CallTarget,
    Claims,
    Decision,
    MethodInfo,
    PeerIdentity,
    Reason,
    Result,
    Role,
    Scope,
)

__version__ = "0.1.0"

__all__ = [
    "Access",
    "AuthInfo",
    "Authorizer",
    "CallTarget",
    "ClaimMapper",
    "Claims",
    "Decision",
    "KeyProvider",
    "MethodInfo",
    "PeerIdentity",
    "Reason",
    "Result",
    "Role",
    "Scope",
    "__version__",
]
