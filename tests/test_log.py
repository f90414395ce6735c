"""The redaction step: no token, bearer credential or private key survives into a log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from proxy import log as logmod
from proxy.log import REDACTED, redact, scrub

TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsInBlcm1pc3Npb25zIjpbXX0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMTIzNDU2Nzg5MA"
)


@pytest.fixture(autouse=True)
def _restore_stdlib_logging() -> Iterator[None]:
    """`configure` hooks the root logger; leave it as it was for other tests."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"


def test_scrub_removes_jwts_bearer_values_and_private_keys() -> None:
    text = f"header was Bearer {TOKEN} and raw {TOKEN} key {PEM_KEY} end"
    out = scrub(text)
    for part in TOKEN.split("."):
        assert part not in out
    assert "MIIEvQIBADAN" not in out
    assert "Bearer <redacted>" in out and out.endswith(" end")


def test_scrub_leaves_ordinary_text_alone() -> None:
    text = "subject=alice method=StartWorkflowExecution namespace=default reason=insufficient_role"
    assert scrub(text) == text


def test_redact_processor_masks_secret_fields_and_nested_values() -> None:
    event = {
        "event": "claims_failed",
        "token": "anything at all",
        "authorization": "Bearer x",
        "error": f"cannot parse {TOKEN}",
        "headers": {"Authorization": f"Bearer {TOKEN}", "x-tenant": "acme"},
        "items": [TOKEN, "plain"],
        "exc": ValueError(f"bad {TOKEN}"),
    }
    out = redact(None, "warning", dict(event))
    assert out["token"] == REDACTED and out["authorization"] == REDACTED
    assert TOKEN not in json.dumps(out, default=str)
    assert out["headers"]["Authorization"] == REDACTED
    assert out["headers"]["x-tenant"] == "acme"
    assert out["items"][1] == "plain"
    assert out["event"] == "claims_failed"


def test_configured_json_logging_redacts_every_line() -> None:
    stream = io.StringIO()
    logmod.configure("json", "info", stream=stream)
    try:
        logger = structlog.get_logger()
        logger.warning("authz_denied", subject="alice", detail=f"token {TOKEN}")
        logger.info("jwks_refreshed", keys=2)
        logger.debug("hidden_below_level")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["authz_denied", "jwks_refreshed"]
    assert lines[0]["level"] == "warning" and "timestamp" in lines[0]
    assert TOKEN.split(".")[2] not in stream.getvalue()


def test_console_format_renders_key_values() -> None:
    stream = io.StringIO()
    logmod.configure("console", "info", stream=stream)
    try:
        structlog.get_logger().info("listening", port=7233)
    finally:
        structlog.reset_defaults()
    assert "listening" in stream.getvalue() and "port=7233" in stream.getvalue()


# ------------------------------------------------------------------ bounds and repeat limits

BIG = "n" * (8 * 1024 * 1024)


def _configured(stream: io.StringIO, **kw: object) -> None:
    logmod.configure("json", "info", stream=stream, **kw)  # type: ignore[arg-type]


def test_every_string_value_is_cut_with_a_marker() -> None:
    out = logmod.BoundValues(100)(
        None,
        "warning",
        {
            "event": "authz_denied",
            "namespace": BIG,
            "subject": "alice",
            "nested": {"method": BIG, "list": [BIG] * 100},
            "raw": BIG.encode(),
            "error": ValueError(BIG),
        },
    )
    assert out["subject"] == "alice"
    assert out["namespace"].startswith("n" * 100)
    assert out["namespace"].endswith(f"[truncated {len(BIG) - 100} chars]")
    assert len(out["namespace"]) < 140
    assert len(out["nested"]["method"]) < 140
    assert len(out["nested"]["list"]) == 33 and out["nested"]["list"][-1].endswith("68 items]")
    assert len(out["raw"]) < 200 and "truncated" in out["raw"]
    assert len(out["error"]) < 140
    assert len(json.dumps(out)) < 100 * 40 + 2000


def test_tracebacks_keep_their_last_lines() -> None:
    text = "Traceback...\n" + "frame\n" * 10_000 + "ValueError: the message"
    out = logmod.BoundValues(100)(None, "error", {"event": "x", "exception": text})
    assert out["exception"].endswith("ValueError: the message")
    assert out["exception"].startswith("[truncated")
    assert len(out["exception"]) < 100 * 8 + 40


def test_a_line_with_8_mib_caller_strings_stays_small_and_redacted() -> None:
    stream = io.StringIO()
    _configured(stream, max_value_length=1024)
    try:
        structlog.get_logger().warning(
            "authz_denied", namespace=BIG, method=BIG, error=f"{TOKEN} {BIG}", reason="r"
        )
    finally:
        structlog.reset_defaults()
    line = stream.getvalue()
    assert len(line) < 4 * 1024
    assert "truncated" in json.loads(line)["namespace"]
    assert TOKEN.split(".")[1] not in line


def test_a_token_cut_inside_its_payload_is_still_redacted() -> None:
    cut = TOKEN[: TOKEN.index(".") + 10]
    assert scrub(f"x {cut}") == f"x {REDACTED}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(flt: logmod.RepeatFilter, event: dict[str, object]) -> bool:
    try:
        flt(None, "warning", dict(event))
    except structlog.DropEvent:
        return False
    return True


def test_repeat_filter_passes_a_burst_then_counts_per_reason() -> None:
    clock = FakeClock()
    summaries: list[tuple[str, dict[str, object]]] = []
    flt = logmod.RepeatFilter(10.0, 3, clock=clock, emit=lambda lvl, f: summaries.append((lvl, f)))
    denied = {"event": "authz_denied", "level": "warning", "reason": "no_credentials"}
    other = {"event": "authz_denied", "level": "warning", "reason": "insufficient_role"}
    assert [_run(flt, denied) for _ in range(1000)].count(True) == 3
    assert _run(flt, other)  # another reason has its own budget
    flt.flush(("warning", "authz_denied", "no_credentials"))  # the window's timer
    assert summaries == [
        (
            "warning",
            {
                "suppressed_event": "authz_denied",
                "count": 997,
                "interval_seconds": 10.0,
                "reason": "no_credentials",
            },
        )
    ]
    clock.now += 10
    assert _run(flt, denied)


def test_repeat_count_is_carried_by_the_next_line_when_no_timer_ran() -> None:
    clock = FakeClock()
    flt = logmod.RepeatFilter(10.0, 1, clock=clock)
    ev = {"event": "admin_accept_failed", "level": "error"}
    assert _run(flt, ev) and not _run(flt, ev) and not _run(flt, ev)
    clock.now += 11
    out = flt(None, "error", dict(ev))
    assert out["suppressed"] == 2


async def test_configured_logging_writes_one_summary_line_per_interval() -> None:
    stream = io.StringIO()
    _configured(stream, repeat_interval=0.2, repeat_burst=2)
    try:
        log = structlog.get_logger()
        for _ in range(500):
            log.warning("authz_denied", reason="no_credentials", namespace=BIG)
        await asyncio.sleep(0.4)
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    shown = [line for line in lines if line["event"] == "authz_denied"]
    summaries = [line for line in lines if line["event"] == "log_suppressed"]
    assert len(shown) + len(summaries) == len(lines)
    # Per interval the loop spanned (usually one): `repeat_burst` lines, then one summary.
    assert summaries and len(shown) <= 2 * (len(summaries) + 1) <= 12
    assert all(line["suppressed_event"] == "authz_denied" for line in summaries)
    assert len(shown) + sum(line["count"] for line in summaries) == 500
    assert len(stream.getvalue()) < 8 * 1024 * len(summaries)


async def test_stdlib_errors_such_as_asyncio_accept_failures_are_folded_too() -> None:
    stream = io.StringIO()
    _configured(stream, repeat_interval=0.2, repeat_burst=1)
    try:
        for fd in range(1000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logging.getLogger("asyncio").error(
                    "socket.accept() out of system resource\nsocket: <fd=%d>", fd, exc_info=True
                )
        await asyncio.sleep(0.4)
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    event = "socket.accept() out of system resource"
    shown = [line for line in lines if line["event"] == event]
    summaries = [line for line in lines if line["event"] == "log_suppressed"]
    assert len(shown) + len(summaries) == len(lines)
    assert shown[0]["logger"] == "asyncio" and "Too many open files" in shown[0]["exception"]
    # Folded: one line per interval the loop spanned (usually one), the rest counted, none lost.
    assert 1 <= len(shown) <= 5 and summaries
    assert len(shown) + sum(line["count"] for line in summaries) == 1000


def test_log_level_warn_is_accepted_and_means_warning() -> None:
    # Temporal's and zap's spelling: `log.level: warn`.
    from proxy.config.parse import parse_config

    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:1"},
            "authorization": {"claimMapper": "noop", "authorizer": "noop"},
            "log": {"level": "warn"},
        }
    )
    stream = io.StringIO()
    logmod.configure_from(cfg.log, stream=stream)
    try:
        logger = structlog.get_logger()
        logger.info("hidden_below_warn")
        logger.warning("shown_at_warn")
    finally:
        structlog.reset_defaults()
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["shown_at_warn"]
