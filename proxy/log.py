"""structlog configuration: redaction, length bounds and repeat limits applied to every line."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from proxy.config.schema import LogConfig

REDACTED = "<redacted>"

# Field names whose values are secrets whatever they hold.
_SECRET_KEYS = frozenset(
    {
        "token",
        "authorization",
        "auth_token",
        "bearer",
        "password",
        "secret",
        "key_data",
        "private_key",
    }
)
# A JWT (three base64url segments, header starting with '{"' -> "eyJ") or a bearer credential.
# The third segment is optional: a value cut by `BoundValues` may end inside the payload.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?")
_BEARER = re.compile(r"(?i)\b(bearer)\s+\S+")
_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)


def scrub(text: str) -> str:
    """Remove anything that looks like a token or private key from free text."""
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "PRIVATE KEY" in text:
        text = _PEM_KEY.sub(REDACTED, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes):
        return scrub(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in _SECRET_KEYS else _scrub_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last line of defence, run on every event."""
    out: MutableMapping[str, Any] = {}
    for k, v in event_dict.items():
        out[k] = REDACTED if k.lower() in _SECRET_KEYS else _scrub_value(v)
    return dict(out)


def truncate(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """`text` cut to `limit` characters plus a marker saying how many were dropped."""
    if len(text) <= limit:
        return text
    dropped = len(text) - limit
    if keep_tail:  # a traceback's last frames and message matter most
        return f"[truncated {dropped} chars]\u2026{text[-limit:]}"
    return f"{text[:limit]}\u2026[truncated {dropped} chars]"


class BoundValues:
    """structlog processor: every string in an event (nested ones included) is at most `limit`
    characters, containers at most `max_items` entries, so no caller can make a line big.

    Runs before `redact`, which then scans bounded text only (its regexes stay linear-time
    on short input whatever a caller sends).
    """

    TRACEBACK_FACTOR = 8  # `exception` keeps more, from the end

    def __init__(self, limit: int = 1024, *, max_items: int = 32, max_depth: int = 4) -> None:
        self.limit = limit
        self.max_items = max_items
        self.max_depth = max_depth

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        for k, v in event_dict.items():
            if k == "exception" and isinstance(v, str):
                event_dict[k] = truncate(v, self.limit * self.TRACEBACK_FACTOR, keep_tail=True)
            else:
                event_dict[k] = self.bound(v, 0)
        return event_dict

    def bound(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return truncate(value, self.limit)
        if isinstance(value, bytes | bytearray):
            # Decode only what can survive the cut (4 bytes per character at most).
            head = bytes(value[: self.limit * 4]).decode("utf-8", "replace")
            text = truncate(head, self.limit)
            if len(value) > self.limit * 4 and not text.endswith("]"):
                text = f"{text}\u2026[truncated {len(value) - len(head)} bytes]"
            return text
        if isinstance(value, BaseException):
            return truncate(f"{type(value).__name__}: {value}", self.limit)
        if isinstance(value, dict | list | tuple | set | frozenset):
            if depth >= self.max_depth:
                return truncate(repr(value), self.limit)
            if isinstance(value, dict):
                items = list(value.items())
                out_d = {
                    truncate(str(k), 128): self.bound(v, depth + 1)
                    for k, v in items[: self.max_items]
                }
                if len(items) > self.max_items:
                    out_d["\u2026"] = f"[truncated {len(items) - self.max_items} entries]"
                return out_d
            seq = list(value)
            out_l = [self.bound(v, depth + 1) for v in seq[: self.max_items]]
            if len(seq) > self.max_items:
                out_l.append(f"\u2026[truncated {len(seq) - self.max_items} items]")
            return out_l
        if isinstance(value, bool | int | float) or value is None:
            return value
        return truncate(str(value), self.limit)


class _Window:
    __slots__ = ("count", "start", "suppressed", "timer")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 1
        self.suppressed = 0
        self.timer = False


SUPPRESSED_EVENT = "log_suppressed"


class RepeatFilter:
    """structlog processor: at most `burst` lines per `interval` for one (level, event, reason).

    The rest are dropped and counted; the count is written once per interval as a
    `log_suppressed` line (from a timer on the running event loop; off the loop, on the next
    line of that kind as `suppressed=N`). Denials are keyed by reason, so a flood of one kind
    cannot push other kinds out. Keys are bounded (`max_keys`, oldest first out).
    """

    def __init__(
        self,
        interval: float = 10.0,
        burst: int = 10,
        *,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.interval = interval
        self.burst = burst
        self.emit = emit  # writes one summary line: (level, fields)
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()  # grpc and to_thread callers log off the loop thread
        self._windows: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        if self.interval <= 0:
            return event_dict
        event = event_dict.get("event")
        if event == SUPPRESSED_EVENT:
            return event_dict
        key = (
            str(event_dict.get("level", "")),
            str(event)[:200],
            str(event_dict.get("reason", ""))[:100],
        )
        now = self._clock()
        schedule = False
        with self._lock:
            w = self._windows.get(key)
            if w is None or now - w.start >= self.interval:
                carried = w.suppressed if w is not None else 0
                self._windows[key] = _Window(now)
                self._windows.move_to_end(key)
                if len(self._windows) > self._max_keys:
                    self._windows.popitem(last=False)
                if carried:
                    event_dict["suppressed"] = carried
                return event_dict
            w.count += 1
            if w.count <= self.burst:
                return event_dict
            w.suppressed += 1
            if not w.timer:
                w.timer = schedule = True
                delay = max(0.0, w.start + self.interval - now)
        if schedule:
            try:
                asyncio.get_running_loop().call_later(delay, self.flush, key)
            except RuntimeError:  # no loop on this thread: the next line carries the count
                with self._lock:
                    w.timer = False
        raise structlog.DropEvent

    def flush(self, key: tuple[str, str, str]) -> None:
        """Write the summary of one key's window (called by the window's timer)."""
        with self._lock:
            w = self._windows.get(key)
            if w is None or not w.suppressed:
                return
            count, w.suppressed, w.timer = w.suppressed, 0, False
        if self.emit is not None:
            fields: dict[str, Any] = {
                "suppressed_event": key[1],
                "count": count,
                "interval_seconds": self.interval,
            }
            if key[2]:
                fields["reason"] = key[2]
            self.emit(key[0], fields)


def processors(
    fmt: str, *, max_value_length: int = 1024, repeats: RepeatFilter | None = None
) -> list[Processor]:
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if repeats is not None:
        chain.append(repeats)  # before the costly steps: a dropped line costs little
    chain += [
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        BoundValues(max_value_length),
        redact,
    ]
    if fmt == "console":
        chain.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        chain.append(structlog.processors.JSONRenderer())
    return chain


def configure_from(cfg: LogConfig, stream: TextIO | None = None) -> None:
    """`configure` with the `log` section's settings."""
    configure(
        cfg.format,
        cfg.level,
        stream,
        max_value_length=cfg.max_value_length,
        repeat_interval=cfg.repeat_interval,
        repeat_burst=cfg.repeat_burst,
    )


class StdlibBridge(logging.Handler):
    """Sends stdlib `logging` records (asyncio, aiohttp, grpc) through the structlog chain, so
    their lines are bounded and repeat-limited too: an accept loop failing with EMFILE
    thousands of times a second becomes one line per interval with a count."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            # asyncio appends context (fds, addresses) on later lines: keep the first as the
            # event so identical errors share a repeat key.
            event, _, detail = message.partition("\n")
            fields: dict[str, Any] = {"logger": record.name}
            if detail:
                fields["detail"] = detail
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger().log(record.levelno, event, **fields)
        except Exception:
            self.handleError(record)


def configure(
    fmt: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    max_value_length: int = 1024,
    repeat_interval: float = 10.0,
    repeat_burst: int = 10,
) -> None:
    """Configure structlog for the process (called once, from the composition root), and
    route the standard library's warnings and errors through it."""
    numeric = logging.getLevelName(level.upper())

    def emit_summary(level_name: str, fields: dict[str, Any]) -> None:
        structlog.get_logger().log(
            logging.getLevelName(level_name.upper()) if level_name else logging.WARNING,
            SUPPRESSED_EVENT,
            **fields,
        )

    repeats = RepeatFilter(repeat_interval, repeat_burst, emit=emit_summary)
    structlog.configure(
        processors=processors(fmt, max_value_length=max_value_length, repeats=repeats),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    # Libraries' info lines (aiohttp access, grpc) stay out unless debugging.
    root.setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)


def get_logger(**initial: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(**initial)  # type: ignore[no-any-return]
