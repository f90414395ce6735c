"""structlog configuration and the redaction step that keeps credentials out of every line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

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
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
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


def processors(fmt: str) -> list[Processor]:
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    if fmt == "console":
        chain.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        chain.append(structlog.processors.JSONRenderer())
    return chain


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for the process (called once, from the composition root)."""
    structlog.configure(
        processors=processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**initial: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(**initial)  # type: ignore[no-any-return]
