"""Config loader: Temporal's keys and rules, our additions, path-qualified errors."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proxy.config.dump import REDACTED, derived_values, effective_config
from proxy.config.parse import format_duration, load_config, parse_config, parse_duration
from proxy.config.validate import codec_requires_authorization, is_loopback_address
from proxy.errors import ConfigError
from proxy.forward import channel_options

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def minimal(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"claimMapper": "noop", "authorizer": "noop"},
    }
    raw.update(sections)
    return raw


def error_path(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env or {})
    return caught.value.path


def test_defaults_match_the_design() -> None:
    cfg = parse_config(minimal(), {})
    assert cfg.listen.address == "0.0.0.0:7233"
    assert cfg.admin.address == "0.0.0.0:9090"
    assert cfg.listen.max_message_size == 128 * 1024 * 1024
    assert cfg.listen.max_header_list_size == 64 * 1024
    assert cfg.listen.shutdown_grace_period == 30.0
    assert cfg.upstream.authorization == "forward"
    assert cfg.upstream.transparent_retries is True
    assert cfg.tls.internode is None
    assert cfg.authorization.auth_header_name == "authorization"
    assert cfg.authorization.auth_extra_header_name == "authorization-extras"
    assert cfg.authorization.permissions_claim_name == "permissions"
    assert cfg.log.format == "json"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2h45m10s", 9910.0),
        ("10us", 1e-5),
        ("720h", 2592000.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "1 m", "1d", "-1s", "+1s", "s", "1.s.", "ms"])
def test_bad_durations_name_their_key(text: str) -> None:
    raw = minimal(listen={"shutdownGracePeriod": text})
    assert error_path(raw) == "listen.shutdownGracePeriod"


def test_a_bare_integer_is_not_a_duration() -> None:
    # yaml.v3 refuses integers for time.Duration; so do we.
    assert error_path(minimal(tls={"refreshInterval": 60})) == "tls.refreshInterval"


def test_format_duration_round_trips() -> None:
    for seconds in (0.0, 30.0, 60.0, 5400.0, 0.25, 3725.0):
        assert parse_duration(format_duration(seconds), "x") == pytest.approx(seconds)


def test_env_substitution_and_unset_variables() -> None:
    raw = minimal(upstream={"address": "${HOST}:${PORT}"})
    assert (
        parse_config(raw, {"HOST": "frontend", "PORT": "7233"}).upstream.address == "frontend:7233"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {"HOST": "frontend"})
    assert caught.value.path == "upstream.address" and "PORT is not set" in str(caught.value)


def test_unknown_keys_are_errors_with_their_path() -> None:
    assert error_path(minimal(listen={"adress": "x"})) == "listen.adress"
    assert error_path(minimal(tls={"frontend": {"server": {"certfile": "x"}}})) == (
        "tls.frontend.server.certfile"
    )
    assert error_path({**minimal(), "extra": 1}) == "extra"


def test_data_values_are_base64_of_pem() -> None:
    raw = minimal(tls={"frontend": {"server": {"certData": b64(PEM), "keyData": b64(KEY)}}})
    cfg = parse_config(raw, {})
    assert cfg.tls.frontend.server.cert_data == PEM
    assert cfg.tls.frontend.server.enabled
    bad = minimal(tls={"frontend": {"server": {"certData": PEM, "keyData": b64(KEY)}}})
    assert error_path(bad) == "tls.frontend.server.certData"
    not_pem = minimal(tls={"frontend": {"server": {"certData": b64("hello"), "keyData": b64(KEY)}}})
    assert error_path(not_pem) == "tls.frontend.server.certData"


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"certFile": "a", "certData": b64(PEM), "keyFile": "k"}, "tls.frontend.server.certFile"),
        ({"certFile": "a", "keyFile": "k", "keyData": b64(KEY)}, "tls.frontend.server.keyFile"),
        (
            {"certFile": "a", "keyFile": "k", "clientCaFiles": ["c"], "clientCaData": [b64(PEM)]},
            "tls.frontend.server.clientCaFiles",
        ),
        (
            {"certFile": "a", "keyFile": "k", "clientCaFiles": [" "]},
            "tls.frontend.server.clientCaFiles[0]",
        ),
        ({"keyFile": "k"}, "tls.frontend.server.certFile"),
        ({"certFile": "a"}, "tls.frontend.server.keyFile"),
        (
            {"certFile": "a", "keyFile": "k", "requireClientAuth": True},
            "tls.frontend.server.clientCaFiles",
        ),
        ({"requireClientAuth": True}, "tls.frontend.server.requireClientAuth"),
    ],
)
def test_temporal_tls_rules_and_ours(server: dict[str, Any], path: str) -> None:
    assert error_path(minimal(tls={"frontend": {"server": server}})) == path


def test_internode_rules() -> None:
    skip = {"client": {"disableHostVerification": True, "forceTLS": True}}
    assert error_path(minimal(tls={"internode": skip})) == (
        "tls.internode.client.disableHostVerification"
    )
    assert error_path(minimal(tls={"internode": {"client": {"serverName": "x"}}})) == (
        "tls.internode.client"
    )
    both = {"client": {"rootCaFiles": ["a"], "rootCaData": [b64(PEM)]}}
    assert error_path(minimal(tls={"internode": both})) == "tls.internode.client.rootCaFiles"
    ok = parse_config(
        minimal(tls={"internode": {"client": {"forceTLS": True, "serverName": "t"}}}), {}
    )
    assert ok.tls.internode is not None and ok.tls.internode.client.enabled


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"upstream": {"address": ""}}, "upstream.address"),
        ({"upstream": {"address": "no-port"}}, "upstream.address"),
        ({"upstream": {"address": "h:70000"}}, "upstream.address"),
        ({"upstream": {"address": "h:1", "authorization": "drop"}}, "upstream.authorization"),
        (
            {"upstream": {"address": "h:1", "transparentRetries": "no"}},
            "upstream.transparentRetries",
        ),
        ({"listen": {"workers": -1}}, "listen.workers"),
        ({"listen": {"workers": "two"}}, "listen.workers"),
        ({"listen": {"maxMessageSize": 100}}, "listen.maxMessageSize"),
        ({"log": {"format": "xml"}}, "log.format"),
        ({"authorization": {"authorizer": "strict"}}, "authorization.authorizer"),
        (
            {"authorization": {"claimMapper": "default"}},
            "authorization.jwtKeyProvider.keySourceURIs",
        ),
        ({"authorization": {"claimMapper": "noop", "mode": "audit"}}, "authorization.mode"),
        ({"codec": {"enabled": True}}, "codec.keys"),
        ({"audit": {"enabled": True, "sink": "file"}}, "audit.path"),
    ],
)
def test_proxy_rules(section: dict[str, Any], path: str) -> None:
    raw = minimal()
    for key, value in section.items():
        raw[key] = {**raw.get(key, {}), **value}
    assert error_path(raw) == path


def test_names_are_case_insensitive_like_temporal() -> None:
    from proxy.authz import DefaultAuthorizer
    from proxy.authz.build import build_authorizer
    from proxy.claims import NoopClaimMapper
    from proxy.claims.build import build_claim_mapper

    raw = minimal(authorization={"authorizer": "Default", "claimMapper": "NOOP"})
    cfg = parse_config(raw, {})
    assert isinstance(build_authorizer(cfg), DefaultAuthorizer)
    assert isinstance(build_claim_mapper(cfg, None, None), NoopClaimMapper)


def test_effective_config_redacts_secrets_and_shows_defaults() -> None:
    raw = minimal(
        tls={"frontend": {"server": {"certData": b64(PEM), "keyData": b64(KEY)}}},
        codec={"enabled": True, "keys": {"k1": b64("x" * 32)}, "encryptKeyId": "k1"},
        admin={"address": "127.0.0.1:9090"},
    )
    shown = effective_config(parse_config(raw, {}))
    assert shown["tls"]["frontend"]["server"]["keyData"] == REDACTED
    assert shown["codec"]["keys"] == {"k1": REDACTED}
    assert shown["listen"]["shutdownGracePeriod"] == "30s"
    assert "PRIVATE KEY" not in repr(shown)


def test_load_config_errors(tmp_path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(missing, {})
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, {})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(empty, {})
    assert caught.value.path == "upstream.address"


@pytest.mark.parametrize(("value", "enable_retries"), [(True, 1), (False, 0)])
def test_transparent_retries_reach_the_upstream_channel(value: bool, enable_retries: int) -> None:
    cfg = parse_config(minimal(upstream={"address": "h:1", "transparentRetries": value}), {})
    options = dict(
        channel_options(
            cfg.listen.max_message_size,
            cfg.listen.max_header_list_size,
            transparent_retries=cfg.upstream.transparent_retries,
        )
    )
    assert options["grpc.enable_retries"] == enable_retries


def test_admin_and_log_limits_have_safe_defaults_and_parse_go_durations() -> None:
    cfg = parse_config(minimal())
    a = cfg.admin
    assert (a.max_connections, a.header_timeout, a.body_timeout, a.idle_timeout) == (
        256,
        10.0,
        30.0,
        30.0,
    )
    assert (cfg.log.max_value_length, cfg.log.repeat_interval, cfg.log.repeat_burst) == (
        1024,
        10.0,
        10,
    )
    cfg = parse_config(
        minimal(
            admin={"maxConnections": 10, "headerTimeout": "2s", "bodyTimeout": "1m"},
            log={"repeatInterval": "500ms", "repeatBurst": 3, "maxValueLength": 200},
        )
    )
    assert (cfg.admin.max_connections, cfg.admin.header_timeout, cfg.admin.body_timeout) == (
        10,
        2.0,
        60.0,
    )
    assert (cfg.log.repeat_interval, cfg.log.repeat_burst, cfg.log.max_value_length) == (
        0.5,
        3,
        200,
    )


@pytest.mark.parametrize(
    ("section", "raw", "path"),
    [
        ("admin", {"maxConnections": 0}, "admin.maxConnections"),
        ("admin", {"headerTimeout": "0s"}, "admin.headerTimeout"),
        ("admin", {"bodyTimeout": "0"}, "admin.bodyTimeout"),
        ("admin", {"idleTimeout": "0s"}, "admin.idleTimeout"),
        ("log", {"maxValueLength": 1}, "log.maxValueLength"),
        ("log", {"repeatBurst": 0}, "log.repeatBurst"),
    ],
)
def test_unbounded_admin_and_log_limits_are_refused(
    section: str, raw: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(minimal(**{section: raw}))
    assert err.value.path == path
    assert "unknown key" not in str(err.value)


# ------------------------------------------- unauthenticated codec off loopback (issue 16 #4)


def _codec(admin: str, **codec: Any) -> dict[str, Any]:
    return minimal(
        admin={"address": admin},
        codec={"enabled": True, "keys": {"k1": b64("x" * 32)}, "encryptKeyId": "k1", **codec},
    )


@pytest.mark.parametrize(
    ("admin", "codec"),
    [
        ("0.0.0.0:9090", {}),  # the README's sample address, requireAuthorization unset
        ("0.0.0.0:9090", {"requireAuthorization": False}),
        ("[::]:9090", {}),
        ("10.1.2.3:9090", {}),
        ("proxy.internal:9090", {}),  # a name may resolve to anything
        ("[::ffff:10.0.0.1]:9090", {}),
        ("0.0.0.0:9090", {"allowUnauthenticated": False}),
    ],
)
def test_unauthenticated_codec_off_loopback_refuses_to_start(
    admin: str, codec: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_codec(admin, **codec), {})
    assert info.value.path == "codec.allowUnauthenticated"
    # The message says what to set, and where the exposure is.
    assert "codec.allowUnauthenticated: true" in info.value.message
    assert "codec.requireAuthorization: true" in info.value.message
    assert admin in info.value.message


@pytest.mark.parametrize(
    "admin",
    [
        "127.0.0.1:9090",
        "127.8.9.10:9090",  # all of 127.0.0.0/8
        "[::1]:9090",
        "localhost:9090",
        "LocalHost.:9090",
        "[::ffff:127.0.0.1]:9090",
    ],
)
def test_unauthenticated_codec_on_loopback_is_allowed(admin: str) -> None:
    cfg = parse_config(_codec(admin), {})
    assert cfg.codec.allow_unauthenticated is False
    assert is_loopback_address(admin)


def test_unauthenticated_codec_off_loopback_with_explicit_opt_in() -> None:
    cfg = parse_config(_codec("0.0.0.0:9090", allowUnauthenticated=True), {})
    assert cfg.codec.allow_unauthenticated is True
    assert codec_requires_authorization(cfg) is False


def test_authenticated_codec_off_loopback_needs_no_opt_in() -> None:
    raw = _codec("0.0.0.0:9090", requireAuthorization=True)
    raw["authorization"] = {"claimMapper": "default", "authorizer": "default"}
    raw["authorization"]["jwtKeyProvider"] = {"keySourceURIs": ["file:///nonexistent/jwks.json"]}
    cfg = parse_config(raw, {})
    assert codec_requires_authorization(cfg) is True
    # Default (unset) with JWT keys configured means required, so no opt-in either.
    del raw["codec"]["requireAuthorization"]
    assert codec_requires_authorization(parse_config(raw, {})) is True


def test_a_disabled_codec_needs_no_opt_in() -> None:
    raw = _codec("0.0.0.0:9090")
    raw["codec"]["enabled"] = False
    assert parse_config(raw, {}).codec.enabled is False


@pytest.mark.parametrize(
    ("authorization", "codec", "shown", "derived"),
    [
        ({}, {}, False, "false because"),
        ({}, {"requireAuthorization": False}, False, None),
        ({}, {"requireAuthorization": True}, True, None),
        (
            {"claimMapper": "default", "jwtKeyProvider": {"keySourceURIs": ["file:///x.json"]}},
            {},
            True,
            "true because",
        ),
    ],
)
def test_effective_config_shows_the_effective_require_authorization(
    authorization: dict[str, Any], codec: dict[str, Any], shown: bool, derived: str | None
) -> None:
    raw = _codec("127.0.0.1:9090", **codec)
    raw["authorization"].update(authorization)
    cfg = parse_config(raw, {})
    out = effective_config(cfg)
    assert out["codec"]["requireAuthorization"] is shown
    assert out["codec"]["allowUnauthenticated"] is False
    why = derived_values(cfg).get("codec.requireAuthorization")
    assert (why is None) if derived is None else (why is not None and derived in why)


def test_stream_and_call_limits_have_defaults_sized_for_long_polls() -> None:
    listen = parse_config(minimal(), {}).listen
    assert listen.max_concurrent_streams == 1000
    assert listen.max_concurrent_calls == 8000
    shown = effective_config(parse_config(minimal(), {}))["listen"]
    assert shown["maxConcurrentStreams"] == 1000
    assert shown["maxConcurrentCalls"] == 8000
    cfg = parse_config(minimal(listen={"maxConcurrentStreams": 5, "maxConcurrentCalls": 7}), {})
    assert (cfg.listen.max_concurrent_streams, cfg.listen.max_concurrent_calls) == (5, 7)


@pytest.mark.parametrize("key", ["maxConcurrentStreams", "maxConcurrentCalls"])
@pytest.mark.parametrize("value", [0, -1, 2**31, "many", True, 1.5])
def test_stream_and_call_limits_are_validated_with_their_path(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(listen={key: value}), {})
    assert caught.value.path == f"listen.{key}"
    assert "unknown" not in str(caught.value)  # a known key, refused for its value


@pytest.mark.parametrize(
    "origin",
    ["https://ui.example.com/", "https://ui.example.com/path", "ui.example.com", "*", ""],
)
def test_a_cors_origin_a_browser_never_sends_is_refused(origin: str) -> None:
    # Such an entry matches no browser's Origin header: a silent wall for the Web UI.
    raw = _codec("127.0.0.1:9090", cors={"origins": ["http://localhost:8233", origin]})
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    assert info.value.path == "codec.cors.origins[1]"


@pytest.mark.parametrize(
    "origin", ["http://localhost:8233", "https://ui.example.com", "http://[::1]:8233"]
)
def test_cors_origins_as_browsers_send_them_are_accepted(origin: str) -> None:
    raw = _codec("127.0.0.1:9090", cors={"origins": [origin]})
    assert parse_config(raw, {}).codec.cors.origins == (origin,)
