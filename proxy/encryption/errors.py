"""The typed errors of payload encryption; the wiring maps each to one gRPC status and reason."""

from __future__ import annotations

import enum

from proxy.errors import ProxyError

__all__ = [
    "DecryptFailure",
    "DecryptionError",
    "EncryptionError",
    "LimitExceededError",
    "UnknownFieldError",
    "UnsupportedMethodError",
]


class DecryptFailure(enum.StrEnum):
    """Why a payload could not be decrypted: a closed set (metric label values)."""

    UNKNOWN_KEY = "unknown_key"  # key id not in the namespace's decrypt set (or not in the ring)
    AUTHENTICATION = "authentication"  # GCM tag check failed: tampered bytes or the wrong key
    MALFORMED = "malformed"  # no key id, bad compression, inner bytes not a Payload


class EncryptionError(ProxyError):
    """Base of the errors below. Messages name no key material and no payload bytes."""


class DecryptionError(EncryptionError):
    """A payload encrypted for the namespace that cannot be decrypted; never passed on as is."""

    def __init__(self, reason: DecryptFailure, method: str, detail: str) -> None:
        super().__init__(f"{method}: cannot decrypt a payload ({reason.value}): {detail}")
        self.reason = reason
        self.method = method
        self.detail = detail


class UnknownFieldError(EncryptionError):
    """A request carries a length-delimited field this proxy's API does not know (it could hide
    a payload). `paths` are field-number paths relative to the request message."""

    def __init__(self, method: str, paths: tuple[str, ...]) -> None:
        super().__init__(f"{method}: unknown length-delimited field(s) {', '.join(paths)}")
        self.method = method
        self.paths = paths


class LimitExceededError(EncryptionError):
    """A request whose inspection would cost more than its bound (payloads to seal, messages to
    walk for unknown fields): a caller-controlled amplification, refused before the work."""

    def __init__(self, method: str, what: str, limit: int) -> None:
        super().__init__(f"{method}: more than {limit} {what}")
        self.method = method
        self.what = what
        self.limit = limit


class UnsupportedMethodError(EncryptionError):
    """A method the shipped API descriptors do not define, or a body that does not parse."""
