"""The redaction step: no token, bearer credential or private key survives into a log line."""

from __future__ import annotations

import io
import json

import structlog

from proxy import log as logmod
from proxy.log import REDACTED, redact, scrub

TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsInBlcm1pc3Npb25zIjpbXX0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMTIzNDU2Nzg5MA"
)
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
