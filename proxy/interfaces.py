"""The seams. Small protocols; everything else is concrete."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from proxy.model import AuthInfo, CallTarget, Claims, Result

_T = TypeVar("_T")


class Logger(Protocol):
    """The part of a structlog BoundLogger the proxy's parts call."""

    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...

    def error(self, event: str, **kw: Any) -> Any: ...

    def debug(self, event: str, **kw: Any) -> Any: ...


class TaskSpawner(Protocol):
    """Where a part starts background work: the app's TaskGroup (or one nested in it)."""

    def create_task(
        self, coro: Coroutine[Any, Any, _T], *, name: str | None = None
    ) -> asyncio.Task[_T]: ...


@runtime_checkable
class ClaimMapper(Protocol):
    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        """Map credentials to claims; raise `CredentialError` on bad credentials."""
        ...


@runtime_checkable
class AuthInfoOptional(Protocol):
    """Optional capability: a mapper that wants to run even without token or certificate."""

    def auth_info_required(self) -> bool: ...


@runtime_checkable
class Authorizer(Protocol):
    async def authorize(self, claims: Claims | None, target: CallTarget) -> Result: ...


@runtime_checkable
class ClaimsOnlyDenial(Protocol):
    """Optional capability of an Authorizer: deny from the claims and the method alone.

    A Result returned here must be a denial that `authorize` would give for every namespace and
    request body; None means the target matters. The Gate then denies without reading the body
    (issue 14: no work on attacker-sized input before credentials decide). Authorizers without
    it always get the namespace.
    """

    def deny_without_target(self, claims: Claims | None, api_name: str) -> Result | None: ...


@runtime_checkable
class KeyProvider(Protocol):
    def get_key(self, alg: str, kid: str) -> PublicKeyTypes:
        """The verification key for `kid`; raise `CredentialError` when there is none."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever the key set changes, so cached verifications cannot outlive it."""
        ...
