"""The Codec Server under hostile readers, against a real proxy in front of the real dev server:
a 4 MiB body of `{},` and a 4 MiB nest of `[` cost the proxy little memory and never stall a
good gRPC client beside them; per-namespace keys keep one namespace's reader from decrypting
another namespace's payloads. Loopback only; every loop is bounded in count and time."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
)

from tests.e2e.conftest import ProxyFactory
from tests.e2e.rig import Pki, ProxyProcess, jwt_authorization, mtls_channel, sample

KEYS = {"pay-2": os.urandom(32), "pay-1": os.urandom(32), "dflt": os.urandom(32)}
DESCRIBE = "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace"
REJECTED = "temporal_auth_proxy_codec_rejected_total"
MIB = 1024 * 1024


def start(start_proxy: ProxyFactory, pki: Pki, **codec: Any) -> ProxyProcess:
    keys = {kid: base64.b64encode(key).decode() for kid, key in KEYS.items()}
    return start_proxy(
        {
            "authorization": jwt_authorization(pki),
            "codec": {"enabled": True, "keys": keys, **codec},
        }
    )


def post(proxy: ProxyProcess, path: str, body: bytes, headers: Mapping[str, str]) -> Any:
    """(status, JSON answer) of one codec request."""
    req = urllib.request.Request(
        proxy.admin_url + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class GoodClient:
    """DescribeNamespace through the proxy with a reader's token, timing every call."""

    def __init__(self, pki: Pki, proxy: ProxyProcess) -> None:
        self.channel = mtls_channel(pki, proxy.address)
        self.call = self.channel.unary_unary(
            DESCRIBE,
            request_serializer=DescribeNamespaceRequest.SerializeToString,
            response_deserializer=DescribeNamespaceResponse.FromString,
        )
        self.metadata = (("authorization", f"Bearer {pki.token('default:read')}"),)

    def once(self) -> float:
        started = time.perf_counter()
        answer = self.call(
            DescribeNamespaceRequest(namespace="default"), metadata=self.metadata, timeout=10
        )
        elapsed = time.perf_counter() - started
        assert answer.namespace_info.name == "default"
        return elapsed

    def loop(self, until: threading.Event, out: list[tuple[float, float]], max_s: float) -> None:
        """(start, latency) of each call until `until`, at most 5,000 calls or `max_s`."""
        deadline = time.monotonic() + max_s
        while not until.is_set() and len(out) < 5000 and time.monotonic() < deadline:
            started = time.perf_counter()
            out.append((started, self.once()))
            time.sleep(0.01)


def test_hostile_codec_bodies_cost_little_and_never_stall_grpc(
    start_proxy: ProxyFactory, pki: Pki
) -> None:
    proxy = start(start_proxy, pki, encryptKeyId="dflt")
    reader = {"Authorization": f"Bearer {pki.token('default:read')}", "X-Namespace": "default"}
    good = GoodClient(pki, proxy)
    try:
        # Warm both sides up (connections, code paths, the codec's worker threads).
        for _ in range(20):
            good.once()
        status, _ = post(proxy, "/decode", b'{"payloads": []}', reader)
        assert status == 200

        objects = b'{"payloads": [' + b"{}," * (4 * MIB // 3) + b"{}]}"
        nest = b'{"payloads": ' + b"[" * (4 * MIB) + b"]}"
        peak = [rss_bytes(proxy.proc.pid)]
        done = threading.Event()

        def watch_rss() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(proxy.proc.pid))
                time.sleep(0.02)

        calls: list[tuple[float, float]] = []
        threads = [
            threading.Thread(target=watch_rss),
            threading.Thread(target=good.loop, args=(done, calls, 40)),
        ]
        for t in threads:
            t.start()
        answers = []
        try:
            # The good client's baseline on this (busy, 2-core) machine: same loop, same
            # threads, no attack yet.
            time.sleep(2.5)
            rss_before = peak[0] = rss_bytes(proxy.proc.pid)
            attack_started = time.perf_counter()
            # 12 bodies, paced so the attacker does not simply take the machine's two cores
            # (a stall in the proxy would still overlap several of the good client's calls).
            while len(answers) < 12 and time.perf_counter() - attack_started < 20:
                for body in (objects, nest):
                    answers.append(post(proxy, "/decode", body, reader))
                    time.sleep(0.2)
            time.sleep(0.3)  # a few more good calls after the last answer
        finally:
            done.set()
            for t in threads:
                t.join(timeout=15)
    finally:
        good.channel.close()

    baseline = [lat for started, lat in calls if started + lat < attack_started]
    under_attack = [lat for started, lat in calls if started + lat >= attack_started]
    assert len(baseline) >= 20, baseline
    growth = peak[0] - rss_before
    print(  # shown with -rP: what this machine measured
        f"baseline max {max(baseline) * 1000:.1f} ms, under attack max "
        f"{max(under_attack) * 1000:.1f} ms ({len(under_attack)} calls), "
        f"RSS {rss_before / MIB:.1f} MiB + {growth / MIB:.1f} MiB"
    )
    assert growth <= 100 * MIB, f"proxy RSS grew by {growth / MIB:.1f} MiB"
    assert len(under_attack) >= 10, under_attack
    allowed = max(baseline) + 0.1
    assert max(under_attack) <= allowed, (
        f"good client: baseline max {max(baseline) * 1000:.1f} ms, under attack max "
        f"{max(under_attack) * 1000:.1f} ms over {len(under_attack)} calls"
    )
    assert [status for status, _ in answers] == [400] * len(answers), answers
    assert "codec.maxPayloads" in answers[0][1]["error"]
    assert "codec.maxJsonDepth" in answers[1][1]["error"]
    metrics = proxy.metrics()
    rounds = len(answers) // 2
    assert sample(metrics, REJECTED, operation="decode", reason="too_many_payloads") == rounds
    assert sample(metrics, REJECTED, operation="decode", reason="too_deep") == rounds


def test_a_namespace_reader_cannot_decrypt_another_namespaces_payloads(
    start_proxy: ProxyFactory, pki: Pki
) -> None:
    """The finding: a reader of `default` posted a payload encrypted for `payments` to
    /default/decode and got the plaintext."""
    proxy = start(
        start_proxy, pki, namespaceKeys={"payments": ["pay-2", "pay-1"], "default": "dflt"}
    )
    secret = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}}
    secret["data"] = base64.b64encode(b'"card 4111"').decode()  # type: ignore[assignment]
    body = json.dumps({"payloads": [secret]}).encode()
    pay_writer = {"Authorization": f"Bearer {pki.token('payments:write')}"}
    status, sealed = post(proxy, "/payments/encode", body, pay_writer)
    assert status == 200, sealed
    assert base64.b64decode(sealed["payloads"][0]["metadata"]["encryption-key-id"]) == b"pay-2"
    # A payload a worker wrote under payments' previous key, in the samples' format.
    inner = Payload(metadata={"encoding": b"json/plain"}, data=b'"old card"')
    nonce = os.urandom(12)
    old = {
        "metadata": {
            "encoding": base64.b64encode(b"binary/encrypted").decode(),
            "encryption-key-id": base64.b64encode(b"pay-1").decode(),
        },
        "data": base64.b64encode(
            nonce + AESGCM(KEYS["pay-1"]).encrypt(nonce, inner.SerializeToString(), None)
        ).decode(),
    }
    stolen = [json.dumps(sealed).encode(), json.dumps({"payloads": [old]}).encode()]

    # A reader of default (even one that can also read payments) is refused at /default.
    snoop = {"Authorization": f"Bearer {pki.token('default:read', subject='snoop')}"}
    both = {"Authorization": f"Bearer {pki.token('default:read', 'payments:read')}"}
    for headers in (snoop, both):
        for payload in stolen:
            for path, extra in (("/default/decode", {}), ("/decode", {"X-Namespace": "default"})):
                status, answer = post(proxy, path, payload, {**headers, **extra})
                assert status == 400, answer
                assert "not a key of namespace 'default'" in answer["error"], answer
                assert "card" not in json.dumps(answer)
    # Payments' own readers decode both its current and its previous key.
    status, answer = post(proxy, "/payments/decode", stolen[0], both)
    assert (status, answer) == (200, {"payloads": [secret]})
    status, answer = post(proxy, "/payments/decode", stolen[1], both)
    assert status == 200
    assert base64.b64decode(answer["payloads"][0]["data"]) == b'"old card"'
    # A namespace namespaceKeys does not name has no keys at all (fail closed).
    other = {"Authorization": f"Bearer {pki.token('other:read')}"}
    status, answer = post(proxy, "/other/decode", stolen[0], other)
    assert status == 400
    assert answer == {"error": "namespace 'other' has no codec keys (codec.namespaceKeys)"}

    metrics = proxy.metrics()
    assert sample(metrics, REJECTED, operation="decode", reason="key_not_allowed") == 8
    assert sample(metrics, REJECTED, operation="decode", reason="namespace_without_keys") == 1
    # The codec's worker threads do not hold up a clean shutdown.
    started = time.monotonic()
    assert proxy.terminate() == 0
    assert time.monotonic() - started < 10
