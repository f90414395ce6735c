"""The composition root's grpc arguments: names grpc-core knows, values from the config."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from proxy.app import server_options
from proxy.config.parse import parse_config
from proxy.forward import channel_options

CONFIG = {
    "upstream": {"address": "127.0.0.1:7233"},
    "authorization": {"claimMapper": "noop", "authorizer": "noop"},
    "listen": {"maxConcurrentStreams": 123, "maxConcurrentCalls": 4567},
}


@pytest.fixture(scope="module")
def grpc_core() -> bytes:
    """The grpc-core library grpcio runs: every channel argument name it reads is in it."""
    (library,) = (Path(grpc.__file__).parent / "_cython").glob("cygrpc*.so")
    return library.read_bytes()


def test_every_grpc_argument_name_is_one_grpc_core_reads(grpc_core: bytes) -> None:
    # An unknown name is ignored without a word (a misspelt ping-interval argument once left
    # grpc's 5-minute default in force and cut idle SDK clients off).
    cfg = parse_config(CONFIG, {})
    names = {name for name, _ in server_options(cfg)}
    names |= {name for name, _ in channel_options(1024, 1024)}
    unknown = sorted(n for n in names if n.encode() not in grpc_core)
    assert not unknown


def test_listener_limits_come_from_the_config() -> None:
    options = dict(server_options(parse_config(CONFIG, {})))
    assert options["grpc.max_concurrent_streams"] == 123
    assert options["grpc.http.overload_protection"] == 1
    assert options["grpc.server.max_pending_requests"] == 4567
    assert options["grpc.server.max_pending_requests_hard_limit"] == 4567
    # Temporal's frontend ping policy: with or without calls, one per 10 s, grpc's 2 strikes.
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.http2.max_ping_strikes"] == 2
