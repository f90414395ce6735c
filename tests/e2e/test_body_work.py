"""Issue 14: bounded work before a decision, over real sockets.

Hostile 4 MiB bodies made of the cheapest fields, from a caller without a token (decided from
the claims: the body is never parsed) and from a caller with a role elsewhere (the body is read
at C speed and the call denied), plus a gzip bomb that inflates past `listen.maxMessageSize`,
while a good client keeps calling: all its calls succeed and none takes more than 1 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

from tests.e2e.rig import (
    PROXY_NAME,
    Pki,
    ProxyProcess,
    TLSTerminator,
    base_config,
    deep_merge,
    jwt_authorization,
)

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
START = WF + "StartWorkflowExecution"
DESCRIBE_NS = WF + "DescribeNamespace"
DECISIONS = "temporal_auth_proxy_authz_decisions_total"
MAX_MESSAGE = 8 * 1024 * 1024
BODY = 4 * 1024 * 1024
ATTACKS = 12  # per attacker
# The namespace first, then 2-byte varint fields; a copy with 64-bit overflow look-alikes in
# payloads (the slowest exact check) is the second worst case.
TINY_FIELDS = b"\x0a\x07default" + b"\x10\x00" * ((BODY - 9) // 2)
_LOOKALIKE = (b"\x00" + b"\xff" * 9 + b"\x02") * 11 + b"\x00" * 6
LOOKALIKES = b"\x0a\x07default" + (b"\x12\x7f" + _LOOKALIKE) * ((BODY - 9) // 129)
# 120 MiB of tiny fields: about 120 KiB once gzip-compressed.
BOMB = b"\x0a\x07default" + b"\x10\x00" * (60 * 1024 * 1024)
DESCRIBE_DEFAULT = DescribeNamespaceRequest(namespace="default").SerializeToString()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, terminator: TLSTerminator
) -> Iterator[ProxyProcess]:
    cfg = deep_merge(
        base_config(pki, terminator.port),
        {"authorization": jwt_authorization(pki), "listen": {"maxMessageSize": MAX_MESSAGE}},
    )
    proc = ProxyProcess(tmp_path_factory.mktemp("body-work"), cfg)
    yield proc
    proc.stop()
    assert proc.proc.returncode == 0
    assert "Traceback" not in proc.log_path.read_text(errors="replace")


def channel(pki: Pki, address: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read("client.key"),
        certificate_chain=pki.read("client.pem"),
    )
    return grpc.secure_channel(
        address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", PROXY_NAME),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ],
    )


def decisions(proxy: ProxyProcess, reason: str) -> float:
    """Denials for `reason`, summed over every other label (auth_type, mode)."""
    return all_decisions(proxy, decision="deny", reason=reason)


def all_decisions(proxy: ProxyProcess, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(proxy.metrics())
        for s in family.samples
        if s.name == DECISIONS and all(s.labels.get(k) == v for k, v in labels.items())
    )


def with_good_client(pki: Pki, proxy: ProxyProcess, attack: Callable[[], None]) -> list[float]:
    """Run `attack` while a good reader calls DescribeNamespace; its latencies (all must pass)."""
    token = pki.token("default:read", subject="good-client")
    latencies: list[float] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def good() -> None:
        with channel(pki, proxy.address) as ch:
            call = ch.unary_unary(DESCRIBE_NS)
            deadline = time.monotonic() + 50
            while not done.is_set() and time.monotonic() < deadline and len(latencies) < 2000:
                started = time.monotonic()
                try:
                    call(
                        DESCRIBE_DEFAULT,
                        timeout=10,
                        metadata=(("authorization", f"Bearer {token}"),),
                    )
                except grpc.RpcError as exc:
                    errors.append(exc)
                    return
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    thread = threading.Thread(target=good)
    thread.start()
    try:
        time.sleep(0.3)  # the good client is connected and warm before the attack
        attack()
    finally:
        done.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert len(latencies) >= 10
    return latencies


def test_hostile_bodies_without_a_token_and_with_a_role_elsewhere(
    proxy: ProxyProcess, pki: Pki
) -> None:
    other_reader = pki.token("other:read", subject="hostile-with-role")
    before = decisions(proxy, "insufficient_role")
    refused: list[grpc.StatusCode] = []

    def attacker(token: str | None) -> None:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        with channel(pki, proxy.address) as ch:
            call = ch.unary_unary(START)
            for i in range(ATTACKS):
                body = TINY_FIELDS if i % 2 == 0 else LOOKALIKES
                try:
                    call(body, timeout=20, metadata=metadata)
                except grpc.RpcError as exc:
                    refused.append(exc.code())

    def attack() -> None:
        threads = [threading.Thread(target=attacker, args=(t,)) for t in (None, other_reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=50)

    latencies = with_good_client(pki, proxy, attack)
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert refused == [grpc.StatusCode.PERMISSION_DENIED] * (2 * ATTACKS)
    # requireClientAuth: without a token the certificate gives empty claims (no role at all).
    assert decisions(proxy, "insufficient_role") == before + 2 * ATTACKS
    denied = [e for e in proxy.events() if e.get("event") == "authz_denied"]
    no_token = [
        e for e in denied if e.get("subject") == "" and e.get("method") == "StartWorkflowExecution"
    ]
    with_role = [e for e in denied if e.get("subject") == "hostile-with-role"]
    # The claims decided: the body was never read, so the denial names no namespace ...
    assert len(no_token) == ATTACKS and {e["namespace"] for e in no_token} == {""}
    # ... while a caller with a role gets its (well-formed) body read and the namespace named.
    assert len(with_role) == ATTACKS and {e["namespace"] for e in with_role} == {"default"}
    assert not [e for e in proxy.events() if e.get("event") == "request_malformed"]


@pytest.mark.parametrize("with_role", [False, True], ids=["no-token", "role-elsewhere"])
def test_a_gzip_bomb_is_refused_by_the_size_limit_after_decompression(
    proxy: ProxyProcess, pki: Pki, with_role: bool
) -> None:
    token = pki.token("other:read", subject="bomber")
    metadata = (("authorization", f"Bearer {token}"),) if with_role else ()
    denials_before = all_decisions(proxy, decision="deny")
    codes: list[grpc.StatusCode] = []
    details: list[str] = []

    def attack() -> None:
        with channel(pki, proxy.address) as ch:
            call = ch.unary_unary(START)
            for _ in range(3):
                try:
                    call(BOMB, timeout=20, metadata=metadata, compression=grpc.Compression.Gzip)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    details.append(exc.details() or "")

    latencies = with_good_client(pki, proxy, attack)
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    # grpc-core inflates against grpc.max_receive_message_length (= listen.maxMessageSize),
    # stops at the limit (a 512 MiB bomb left a bare grpc server at 48 MiB RSS) and refuses the
    # call before the proxy's handler sees a byte: no decision is made at all.
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert all("larger than max" in d for d in details), details
    # The good client's calls are (allowed) decisions too; the bomber's calls made none: no
    # denial was counted or logged while it ran.
    bomber = [e for e in proxy.events() if e.get("subject") == "bomber"]
    assert bomber == []
    assert all_decisions(proxy, decision="deny") == denials_before
