"""Fetch a key document with a timeout, keep the last good set, refresh it in a loop.

Shared by Temporal's JWKS provider and the identity-provider key sets: a `RefreshedSource`
subclass says how to load its value (`_load`) and what to do with it (`_install`, `_failed`);
the lock, the timeout, the all-or-nothing swap, the generation and the loop live here.
"""

from __future__ import annotations

import abc
import asyncio
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import structlog

from proxy.errors import KeySourceError
from proxy.interfaces import Logger
from proxy.keys.trust import CaTrust

# A JWKS document is small; anything this large is a misconfigured URI, not a key set.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

T = TypeVar("T")


def check_uri(uri: str) -> urllib.parse.SplitResult:
    """Raise ValueError unless `uri` is http(s) or a local file."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with remote host is not supported: {redact_uri(uri)}")
    elif scheme not in ("http", "https"):
        raise ValueError(f"unsupported key source URI scheme: {redact_uri(uri)}")
    return parts


def redact_uri(uri: str) -> str:
    """The URI without user info, query or fragment, which may carry credentials."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https to http: that would skip the verification."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        if old == "https" and urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            raise KeySourceError(f"refused redirect from https to {redact_uri(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """Only HTTP(S) handlers: a redirect must not turn into an ftp:// or file:// read.

    `context` (a source's private CA) verifies every https connection of this opener,
    redirects included; None means the system roots."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=context),
        _NoDowngradeRedirect(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _read_limited(stream: Any) -> bytes:
    data: bytes = stream.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise KeySourceError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


def fetch_blocking(uri: str, timeout: float, opener: urllib.request.OpenerDirector) -> bytes:
    """One document; a non-2xx answer is a failed fetch. Blocking: run it in a thread."""
    parts = check_uri(uri)
    if parts.scheme.lower() == "file":
        path = urllib.request.url2pathname(parts.path)
        with open(path, "rb") as fh:
            return _read_limited(fh)
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})  # noqa: S310 (scheme checked above)
    try:
        with opener.open(request, timeout=timeout) as resp:
            status = resp.status
            if not 200 <= status < 300:
                raise KeySourceError(f"HTTP status {status}")
            return _read_limited(resp)
    except urllib.error.HTTPError as exc:
        raise KeySourceError(f"HTTP status {exc.code}") from exc


def json_document(document: bytes | str, what: str = "document") -> dict[str, Any]:
    """A fetched (or configured) document that must be one JSON object."""
    try:
        doc = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeySourceError(f"{what} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise KeySourceError(f"{what} is not a JSON object")
    return doc


def describe(exc: BaseException) -> str:
    """A failed fetch or parse for a log line (never the document itself)."""
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc).__name__}: {exc.reason}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


async def refresh_loop(
    refresh: Callable[[], Awaitable[bool]], interval: float, *, load_first: bool
) -> None:
    if load_first:
        await refresh()
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        await refresh()


class RefreshedSource(abc.ABC, Generic[T]):
    """A remote value replaced only by a complete, valid new one; the old one survives failures.

    `refresh()` never raises on failure (it logs through `_failed` and returns False); until a
    value was ever installed `loaded` is False. `generation` changes on every install, so
    caches keyed on it cannot outlive the keys they were verified with.
    """

    def __init__(
        self,
        *,
        refresh_interval: float,
        fetch_timeout: float,
        logger: Logger | None,
        wall_clock: Callable[[], float] = time.time,
        trust: CaTrust | None = None,
    ) -> None:
        if refresh_interval < 0:
            raise ValueError("refresh_interval must not be negative")
        if fetch_timeout <= 0:
            raise ValueError("fetch_timeout must be positive")
        self._refresh_interval = refresh_interval
        self._fetch_timeout = fetch_timeout
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._wall = wall_clock
        self._opener = build_opener()
        self._trust = trust
        self._generation = 0
        self._loaded = False
        self._attempted = False
        self._last_success: float | None = None
        self._last_uri = ""
        self._last_error: str | None = None
        self._lock = asyncio.Lock()

    # -- what a subclass provides

    @abc.abstractmethod
    async def _load(self) -> T:
        """Fetch (with `self._fetch`) and parse a complete new value; raise on any problem."""

    @abc.abstractmethod
    def _install(self, value: T) -> None:
        """Swap `value` in, log and notify (the generation and timestamps are already set)."""

    @abc.abstractmethod
    def _failed(self, uri: str, error: str) -> None:
        """Log and notify a failed refresh; the previous value stays."""

    # -- state

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def last_success(self) -> float | None:
        return self._last_success

    @property
    def last_error(self) -> str | None:
        """Why the last refresh failed (the logged error); None after a success or none yet."""
        return self._last_error

    # -- refreshing

    async def _fetch(self, uri: str) -> bytes:
        self._last_uri = uri  # a failure is reported against the document being read
        # The thread cannot be cancelled; urllib's own timeout bounds it, asyncio.timeout
        # bounds how long we wait (a slow-drip server can outlast a per-read timeout).
        async with asyncio.timeout(self._fetch_timeout):
            return await asyncio.to_thread(self._fetch_in_thread, uri)

    def _fetch_in_thread(self, uri: str) -> bytes:
        # The CA files are re-read here, off the event loop, so a rotated CA counts from the
        # next fetch on; an unchanged file reuses the context.
        opener = self._opener if self._trust is None else build_opener(self._trust.context())
        return fetch_blocking(uri, self._fetch_timeout, opener)

    async def refresh(self) -> bool:
        """Load a new value and swap it in; keep the old one on any failure. Never raises."""
        async with self._lock:
            self._attempted = True
            try:
                value = await self._load()
            except TimeoutError:
                self._last_error = f"timed out after {self._fetch_timeout:g}s"
                self._failed(self._last_uri, self._last_error)
                return False
            except Exception as exc:  # a refresh must never kill the loop
                self._last_error = describe(exc)
                self._failed(self._last_uri, self._last_error)
                return False
            self._last_error = None
            self._generation += 1
            self._loaded = True
            self._last_success = self._wall()
            self._install(value)
            return True

    async def _run_loop(self) -> None:
        """Load unless already attempted, then refresh every interval (0 = never)."""
        await refresh_loop(self.refresh, self._refresh_interval, load_first=not self._attempted)
