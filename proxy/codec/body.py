"""Bounding and parsing a codec request body: limits, a C-speed structural scan, Payloads JSON.

A body is refused before it costs memory: its size (413, by the HTTP layer), then a structural
scan of the raw bytes that stops at the first limit crossed (payload count, JSON nesting depth,
JSON values) before `json.loads` builds a single object. No aiohttp here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from proxy.codec.payload import Payload, Payloads
from proxy.config.schema import CodecConfig

__all__ = [
    "VALUES_PER_PAYLOAD",
    "CodecLimits",
    "Rejected",
    "bad_request",
    "check_json_bounds",
    "dump_payloads",
    "parse_payloads",
]

# JSON values (strings, keys, containers, list items) a body may hold per allowed payload. A
# real payload has about a dozen (metadata entries, data); the bound keeps json.loads' objects
# proportional to maxPayloads, not to the body size.
VALUES_PER_PAYLOAD = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecLimits:
    """What one codec request may cost (`codec.maxBodyBytes` and friends)."""

    max_body_bytes: int
    max_payloads: int
    max_json_depth: int
    max_concurrent_requests: int
    # A request waits this long for a processing slot (then 503) and must deliver its whole
    # body within body_timeout (then 408): a slow sender cannot hold a slot forever.
    slot_timeout: float = 10.0
    body_timeout: float = 30.0

    @classmethod
    def from_config(cls, cfg: CodecConfig) -> CodecLimits:
        return cls(
            max_body_bytes=cfg.max_body_bytes,
            max_payloads=cfg.max_payloads,
            max_json_depth=cfg.max_json_depth,
            max_concurrent_requests=cfg.max_concurrent_requests,
        )

    @property
    def max_json_values(self) -> int:
        return VALUES_PER_PAYLOAD * (self.max_payloads + 1)


class Rejected(Exception):
    """A request we refuse: HTTP status, a reason label for the metric, the caller's message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def bad_request(message: str) -> Rejected:
    return Rejected(400, "bad_request", message)


# The bytes the structural scan stops at; everything else (numbers, literals, whitespace, `:`)
# is skipped at C speed by the regex engine, and string contents by bytes.find.
_STRUCTURE = re.compile(rb'[\[\]{},"]')
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")
_ARRAY = ord("[")


def check_json_bounds(body: bytes | bytearray, limits: CodecLimits) -> None:
    """Refuse a body whose JSON would exceed the limits, before building any object.

    Counts tokens (containers, strings, list items), nesting depth and the objects directly
    inside a top-level array (the payloads), and stops at the first limit crossed, so its work
    is bounded by the limits, not by the body. It does not validate JSON (json.loads does,
    after it); a malformed body can only make it count more, never less.
    """
    max_values, max_depth = limits.max_json_values, limits.max_json_depth
    max_payloads = limits.max_payloads
    search, find = _STRUCTURE.search, body.find
    stack = bytearray()  # the open containers, at most max_depth
    values = payloads = 0
    pos = 0
    while (m := search(body, pos)) is not None:
        i = m.start()
        c = body[i]
        values += 1
        if c == _QUOTE:
            # Skip the string: find the next quote not escaped by an odd run of backslashes.
            # Escaped quotes and backslash runs are charged to the budget, so a body made of
            # them cannot make this loop long.
            end = find(b'"', i + 1)
            while end >= 0:
                k = end - 1
                while body[k] == _BACKSLASH and values <= max_values:
                    k -= 1
                    values += 1
                if values > max_values or (end - 1 - k) % 2 == 0:
                    break
                end = find(b'"', end + 1)
            if end < 0:
                raise bad_request("body is not valid JSON (unterminated string)")
            pos = end + 1
        else:
            pos = i + 1
            if c in _OPENERS:
                stack.append(c)
                if len(stack) > max_depth:
                    raise Rejected(
                        400,
                        "too_deep",
                        f"JSON nested deeper than {max_depth} levels (codec.maxJsonDepth)",
                    )
                if len(stack) == 3 and stack[1] == _ARRAY:
                    payloads += 1
                    if payloads > max_payloads:
                        raise _too_many_payloads(max_payloads)
            elif c in _CLOSERS and stack:
                stack.pop()
        if values > max_values:
            raise Rejected(
                400,
                "too_many_values",
                f"body holds more than {max_values} JSON values "
                f"({VALUES_PER_PAYLOAD} per payload allowed by codec.maxPayloads)",
            )


def _too_many_payloads(limit: int) -> Rejected:
    return Rejected(
        400, "too_many_payloads", f"more than {limit} payloads in one request (codec.maxPayloads)"
    )


def parse_payloads(body: bytes | bytearray, limits: CodecLimits) -> list[Payload]:
    check_json_bounds(body, limits)
    # json_format.Parse accepts any JSON value (`[]` becomes an empty message), so the shape
    # is checked here first.
    try:
        raw: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("body is not valid JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("payloads"), list):
        raise bad_request('body must be a JSON object {"payloads": [...]}')
    if len(raw["payloads"]) > limits.max_payloads:
        raise _too_many_payloads(limits.max_payloads)
    try:
        message = json_format.ParseDict(raw, Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise bad_request(f"body is not a valid Payloads message: {exc}") from None
    return list(message.payloads)


def dump_payloads(payloads: list[Payload]) -> bytes:
    # Built by hand so an empty list is still written as "payloads": [] (clients index it).
    data = {"payloads": [json_format.MessageToDict(p) for p in payloads]}
    return json.dumps(data, separators=(",", ":")).encode()
