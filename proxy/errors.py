"""A small exception tree. Messages never contain tokens or key material."""

from __future__ import annotations

from proxy.model import Reason


class ProxyError(Exception):
    """Base of everything the proxy raises on purpose."""


class ConfigError(ProxyError):
    """A bad configuration value; `path` is the dotted key path (`tls.frontend.server.certFile`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class CredentialError(ProxyError):
    """The caller's credentials were refused. Becomes PERMISSION_DENIED `Request unauthorized.`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class MalformedRequestError(ProxyError):
    """Request bytes that are not a well-formed protobuf message (denied before forwarding)."""


class KeySourceError(ProxyError):
    """A JWKS source could not be fetched or parsed."""
