"""The Codec Server end to end: a temporalio worker encrypts with the shipped EncryptionCodec
through the proxy against the real dev server, the real `temporal` CLI reads the history through
the proxy and decodes it at the proxy's HTTPS admin listener, keys rotate across a proxy
restart, and the endpoints enforce roles and CORS. Loopback only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.worker import Worker

from proxy.sdk_codec import EncryptionCodec
from tests.e2e import sdk
from tests.e2e.conftest import ProxyFactory
from tests.e2e.rig import LOOPBACK, Pki, ProxyProcess, cli, jwt_authorization, sample
from tests.e2e.workflows import GreetingWorkflow, greet

KEY_A = os.urandom(32)
KEY_B = os.urandom(32)
KEYS = {"key-a": KEY_A, "key-b": KEY_B}
UI = "https://ui.example"
OTHER = "https://other.example"
NAMESPACE = "default"
ENCRYPTED = b"binary/encrypted"


# --------------------------------------------------------------------------- helpers


@dataclass
class Started:
    proxy: ProxyProcess
    base: str  # https://127.0.0.1:<admin>


Start = Callable[..., Started]


@pytest.fixture
def codec_proxy(start_proxy: ProxyFactory, pki: Pki, tmp_path: Path) -> Start:
    """A proxy with JWT, the codec on (key-a inline, key-b from a file) and admin over HTTPS."""
    key_b_file = tmp_path / "key-b.b64"
    key_b_file.write_text(base64.b64encode(KEY_B).decode() + "\n")

    def start(
        current: str, *, same_ports_as: ProxyProcess | None = None, path_prefix: str = ""
    ) -> Started:
        overrides: dict[str, Any] = {
            "authorization": jwt_authorization(pki),
            "codec": {
                "enabled": True,
                "keys": {
                    "key-a": base64.b64encode(KEY_A).decode(),
                    "key-b": f"file:{key_b_file}",
                },
                "encryptKeyId": current,
                "cors": {"origins": [UI], "allowCredentials": True},
                "pathPrefix": path_prefix,
            },
            "admin": {
                "tls": {"certFile": pki.files["server.pem"], "keyFile": pki.files["server.key"]}
            },
        }
        if same_ports_as is not None:
            overrides["listen"] = {"address": same_ports_as.address}
            overrides["admin"]["address"] = f"{LOOPBACK}:{same_ports_as.admin_port}"
        proxy = start_proxy(overrides, admin_ca=pki.files["ca.pem"])
        return Started(proxy, f"https://{LOOPBACK}:{proxy.admin_port}")

    return start


def worker_codec(current: str) -> EncryptionCodec:
    return EncryptionCodec(KEYS, encrypt_key_id=current)


async def run_encrypted_workflow(
    pki: Pki, proxy: ProxyProcess, codec: EncryptionCodec, name: str
) -> tuple[Client, str]:
    """GreetingWorkflow through the proxy with a writer token and `codec` as payload codec."""
    client = await sdk.connect(
        pki,
        proxy.address,
        token=pki.token(f"{NAMESPACE}:write", subject="codec-worker"),
        data_converter=DataConverter(payload_codec=codec),
    )
    workflow_id = f"codec-{uuid.uuid4().hex[:12]}"
    async with Worker(
        client, task_queue=workflow_id, workflows=[GreetingWorkflow], activities=[greet]
    ):
        result = await client.execute_workflow(
            GreetingWorkflow.run, name, id=workflow_id, task_queue=workflow_id
        )
    assert result == f"Hello, {name}!"
    return client, workflow_id


async def history_payloads(client: Client, workflow_id: str) -> dict[str, Payload]:
    """The raw (still encrypted) workflow input, activity input and activity result."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    out: dict[str, Payload] = {}
    for event in history.events:
        if event.HasField("workflow_execution_started_event_attributes"):
            out["input"] = event.workflow_execution_started_event_attributes.input.payloads[0]
        elif event.HasField("activity_task_scheduled_event_attributes"):
            out["activity_input"] = event.activity_task_scheduled_event_attributes.input.payloads[0]
        elif event.HasField("activity_task_completed_event_attributes"):
            out["activity_result"] = event.activity_task_completed_event_attributes.result.payloads[
                0
            ]
    assert set(out) == {"input", "activity_input", "activity_result"}, out
    return out


def independent_decrypt(outer: Payload, key: bytes) -> Payload:
    """Temporal's encryption-sample format, without our code: nonce(12) || AES-GCM, no AAD."""
    assert outer.metadata["encoding"] == ENCRYPTED
    data = outer.data
    return Payload.FromString(AESGCM(key).decrypt(data[:12], data[12:], None))


def show(
    pki: Pki,
    proxy: ProxyProcess,
    workflow_id: str,
    *codec_args: str,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`temporal workflow show -o json` through the proxy (mTLS, reader API key)."""
    done = cli(
        pki,
        proxy.address,
        "workflow",
        "show",
        "--workflow-id",
        workflow_id,
        "--output",
        "json",
        "--namespace",
        NAMESPACE,
        *codec_args,
        token=pki.token(f"{NAMESPACE}:read", subject="cli-reader"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return {"stdout": done.stdout, "input": _started_input(done.stdout)}


def _started_input(show_json: str) -> dict[str, Any]:
    for event in json.loads(show_json)["events"]:
        attrs = event.get("workflowExecutionStartedEventAttributes")
        if attrs is not None:
            payload: dict[str, Any] = attrs["input"]["payloads"][0]
            return payload
    raise AssertionError(f"no WorkflowExecutionStarted event in {show_json[:500]}")


def b64(item: dict[str, Any], *path: str) -> bytes:
    value: Any = item
    for key in path:
        value = value[key]
    return base64.b64decode(value)


def trust_ca(pki: Pki) -> dict[str, str]:
    """Go's crypto/x509 takes its roots from SSL_CERT_FILE: the CLI has no codec TLS flag."""
    return {"SSL_CERT_FILE": pki.files["ca.pem"], "SSL_CERT_DIR": str(pki.dir / "no-such-dir")}


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    proxy: ProxyProcess,
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10, context=proxy.admin_ssl) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


def plain_payload(text: str) -> dict[str, Any]:
    return {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(json.dumps(text).encode()).decode(),
    }


# ----------------------------------------------------------------------------- tests


async def test_cli_shows_encrypted_input_without_codec_and_decoded_with_it(
    codec_proxy: Start, pki: Pki
) -> None:
    started = await asyncio.to_thread(codec_proxy, "key-a")
    secret = f"sekrit-{uuid.uuid4().hex[:8]}"
    client, workflow_id = await run_encrypted_workflow(
        pki, started.proxy, worker_codec("key-a"), secret
    )

    # What the server stored is the samples' format, under key-a, plaintext nowhere.
    stored = await history_payloads(client, workflow_id)
    for name, payload in stored.items():
        assert payload.metadata["encoding"] == ENCRYPTED, name
        assert payload.metadata["encryption-key-id"] == b"key-a", name
        assert secret.encode() not in payload.data, name
    inner = independent_decrypt(stored["input"], KEY_A)
    assert (inner.metadata["encoding"], inner.data) == (b"json/plain", json.dumps(secret).encode())

    # Without a codec endpoint the CLI prints the ciphertext.
    raw = await asyncio.to_thread(show, pki, started.proxy, workflow_id)
    assert secret not in raw["stdout"]
    assert b64(raw["input"], "metadata", "encoding") == ENCRYPTED
    assert b64(raw["input"], "metadata", "encryption-key-id") == b"key-a"
    assert secret.encode() not in b64(raw["input"], "data")

    # With the proxy's HTTPS codec endpoint and a reader's token it prints the input, for both
    # endpoint forms (the CLI fills in {namespace}).
    reader = bearer(pki.token(f"{NAMESPACE}:read", subject="codec-reader"))
    for endpoint in (started.base, started.base + "/{namespace}"):
        decoded = await asyncio.to_thread(
            show,
            pki,
            started.proxy,
            workflow_id,
            "--codec-endpoint",
            endpoint,
            "--codec-auth",
            reader,
            env=trust_ca(pki),
        )
        assert b64(decoded["input"], "metadata", "encoding") == b"json/plain", endpoint
        assert b64(decoded["input"], "data") == json.dumps(secret).encode(), endpoint
        every = [base64.b64decode(v) for v in _all_data(json.loads(decoded["stdout"]))]
        assert json.dumps(f"Hello, {secret}!").encode() in every, endpoint

    # The codec endpoint's own guard: a token for another namespace does not decode.
    stranger = bearer(pki.token("other:admin", subject="stranger"))
    denied = await asyncio.to_thread(
        cli,
        pki,
        started.proxy.address,
        "workflow",
        "show",
        "--workflow-id",
        workflow_id,
        "--output",
        "json",
        "--codec-endpoint",
        started.base,
        "--codec-auth",
        stranger,
        token=pki.token(f"{NAMESPACE}:read"),
        extra=("--command-timeout", "3s"),
        env=trust_ca(pki),
    )
    assert denied.returncode != 0
    assert secret not in denied.stdout
    denials = [e for e in started.proxy.events() if e.get("event") == "codec_denied"]
    assert denials and {e["subject"] for e in denials} == {"stranger"}, denials
    assert {e["reason"] for e in denials} == {"insufficient_role"}


def _all_data(node: Any) -> list[str]:
    """Every `data` string of a protobuf-JSON document (payload data, base64)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_all_data(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_all_data(value))
    return found


async def test_cli_needs_to_trust_the_admin_certificate(codec_proxy: Start, pki: Pki) -> None:
    """The admin listener really is TLS with our certificate: untrusted, the CLI's codec call
    fails; over plain http nothing answers."""
    started = await asyncio.to_thread(codec_proxy, "key-a")
    secret = f"sekrit-{uuid.uuid4().hex[:8]}"
    _, workflow_id = await run_encrypted_workflow(pki, started.proxy, worker_codec("key-a"), secret)
    reader = bearer(pki.token(f"{NAMESPACE}:read"))
    done = await asyncio.to_thread(
        cli,
        pki,
        started.proxy.address,
        "workflow",
        "show",
        "--workflow-id",
        workflow_id,
        "--output",
        "json",
        "--codec-endpoint",
        started.base,
        "--codec-auth",
        reader,
        token=reader.removeprefix("Bearer "),
        extra=("--command-timeout", "3s"),
        env={"SSL_CERT_FILE": pki.files["other-ca.pem"], "SSL_CERT_DIR": "/nonexistent"},
    )
    assert secret not in done.stdout
    # The Go client retries the failed codec call until the command times out.
    assert done.returncode != 0, done.stdout
    with pytest.raises(OSError):  # URLError, or the TLS listener hanging up on plaintext
        urllib.request.urlopen(f"http://{LOOPBACK}:{started.proxy.admin_port}/readyz", timeout=5)


async def test_rotation_across_a_restart(codec_proxy: Start, pki: Pki) -> None:
    first = await asyncio.to_thread(codec_proxy, "key-a")
    old_secret = f"old-{uuid.uuid4().hex[:8]}"
    _, old_id = await run_encrypted_workflow(pki, first.proxy, worker_codec("key-a"), old_secret)
    writer = {"Authorization": bearer(pki.token(f"{NAMESPACE}:write"))}
    enc = request(
        first.proxy,
        "POST",
        f"{first.base}/encode",
        {"payloads": [plain_payload("x")]},
        {**writer, "X-Namespace": NAMESPACE},
    )
    assert enc.status == 200, enc.body
    assert b64(enc.json()["payloads"][0], "metadata", "encryption-key-id") == b"key-a"
    await asyncio.to_thread(first.proxy.stop)

    # Same ports, key-b is now current, key-a stays in the ring.
    second = await asyncio.to_thread(codec_proxy, "key-b", same_ports_as=first.proxy)
    assert second.base == first.base
    new_secret = f"new-{uuid.uuid4().hex[:8]}"
    client, new_id = await run_encrypted_workflow(
        pki, second.proxy, worker_codec("key-b"), new_secret
    )
    stored = await history_payloads(client, new_id)
    assert {p.metadata["encryption-key-id"] for p in stored.values()} == {b"key-b"}
    assert independent_decrypt(stored["input"], KEY_B).data == json.dumps(new_secret).encode()
    old_stored = await history_payloads(client, old_id)
    assert old_stored["input"].metadata["encryption-key-id"] == b"key-a"

    # The server encodes with key-b now; an independent decryption and the SDK codec agree.
    enc = request(
        second.proxy,
        "POST",
        f"{second.base}/{NAMESPACE}/encode",
        {"payloads": [plain_payload("rotated")]},
        writer,
    )
    assert enc.status == 200, enc.body
    item = enc.json()["payloads"][0]
    assert b64(item, "metadata", "encryption-key-id") == b"key-b"
    outer = Payload(
        metadata={k: base64.b64decode(v) for k, v in item["metadata"].items()},
        data=b64(item, "data"),
    )
    assert independent_decrypt(outer, KEY_B).data == b'"rotated"'
    (back,) = await worker_codec("key-a").decode([outer])
    assert back.data == b'"rotated"'

    # The CLI decodes both histories through the restarted proxy.
    args = ("--codec-endpoint", second.base, "--codec-auth", bearer(pki.token(f"{NAMESPACE}:read")))
    for workflow_id, secret in ((old_id, old_secret), (new_id, new_secret)):
        decoded = await asyncio.to_thread(
            show, pki, second.proxy, workflow_id, *args, env=trust_ca(pki)
        )
        assert b64(decoded["input"], "data") == json.dumps(secret).encode(), workflow_id

    # An unknown key id fails clearly (400, JSON, names the id), not with a 500.
    bogus = dict(item, metadata=dict(item["metadata"]))
    bogus["metadata"]["encryption-key-id"] = base64.b64encode(b"key-z").decode()
    reader = {"Authorization": bearer(pki.token(f"{NAMESPACE}:read"))}
    dec = request(
        second.proxy, "POST", f"{second.base}/{NAMESPACE}/decode", {"payloads": [bogus]}, reader
    )
    assert dec.status == 400, dec.body
    assert "key-z" in dec.json()["error"]


async def test_roles_and_cors_on_the_codec_endpoints(codec_proxy: Start, pki: Pki) -> None:
    started = await asyncio.to_thread(codec_proxy, "key-a")
    proxy, base = started.proxy, started.base
    body = {"payloads": [plain_payload("hello")]}
    reader = bearer(pki.token(f"{NAMESPACE}:read", subject="reader"))
    writer = bearer(pki.token(f"{NAMESPACE}:write", subject="writer"))
    system = bearer(pki.token("temporal-system:admin", subject="operator"))

    def post(path: str, payload: Any, **headers: str) -> Answer:
        return request(proxy, "POST", base + path, payload, headers)

    for path in ("/encode", f"/{NAMESPACE}/encode"):
        hdrs = {"X-Namespace": NAMESPACE} if path == "/encode" else {}
        # No token, a reader, a writer of another namespace: 403 with a JSON error.
        for auth in (None, reader, bearer(pki.token("other:write"))):
            extra = {"Authorization": auth} if auth else {}
            denied = post(path, body, **hdrs, **extra)
            assert denied.status == 403, (path, auth, denied.body)
            assert denied.headers["Content-Type"].startswith("application/json")
            assert denied.json() == {"error": "Request unauthorized."}
        for auth in (writer, system):
            ok = post(path, body, **hdrs, Authorization=auth)
            assert ok.status == 200, (path, ok.body)
            (item,) = ok.json()["payloads"]
            assert b64(item, "metadata", "encoding") == ENCRYPTED
            assert b64(item, "metadata", "encryption-key-id") == b"key-a"
            outer = Payload(metadata={"encoding": ENCRYPTED}, data=b64(item, "data"))
            assert independent_decrypt(outer, KEY_A).data == b'"hello"'

    encrypted = post("/encode", body, **{"X-Namespace": NAMESPACE, "Authorization": writer})
    assert encrypted.status == 200
    # Decode: reader is enough, no token is not; a garbage body is a JSON 400.
    assert post(f"/{NAMESPACE}/decode", encrypted.json()).status == 403
    dec = post(f"/{NAMESPACE}/decode", encrypted.json(), Authorization=reader)
    assert dec.status == 200, dec.body
    assert dec.json() == body
    bad = request(
        proxy,
        "POST",
        f"{base}/{NAMESPACE}/decode",
        None,
        {"Authorization": reader, "Content-Type": "application/json"},
    )
    assert bad.status == 400 and "error" in bad.json(), bad.body
    # Path and header namespaces must agree.
    assert (
        post(f"/{NAMESPACE}/decode", body, Authorization=reader, **{"X-Namespace": "other"}).status
        == 400
    )

    # CORS preflight: the configured origin gets the allow headers, another origin none.
    for path in ("/decode", f"/{NAMESPACE}/encode"):
        pre = request(
            proxy,
            "OPTIONS",
            base + path,
            headers={
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            },
        )
        assert pre.status in (200, 204), pre.body
        assert pre.headers["Access-Control-Allow-Origin"] == UI
        assert pre.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        allowed = {
            h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "authorization-extras", "x-namespace", "content-type"} <= allowed
        foreign = request(
            proxy,
            "OPTIONS",
            base + path,
            headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
        )
        assert not [h for h in foreign.headers if h.lower().startswith("access-control-")]
    # The actual (non-preflight) answer carries CORS for the UI only.
    ui = post(
        "/decode", encrypted.json(), Authorization=reader, Origin=UI, **{"X-Namespace": NAMESPACE}
    )
    assert ui.status == 200
    assert ui.headers["Access-Control-Allow-Origin"] == UI
    assert ui.headers["Access-Control-Allow-Credentials"] == "true"
    other = post(
        "/decode",
        encrypted.json(),
        Authorization=reader,
        Origin=OTHER,
        **{"X-Namespace": NAMESPACE},
    )
    assert other.status == 200
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_path_prefix_and_the_web_uis_request_shape(codec_proxy: Start, pki: Pki) -> None:
    """Behind an ingress path (`codec.pathPrefix: /codec`): the CLI with both endpoint forms,
    the Web UI's unexpanded `/%7Bnamespace%7D/decode` with X-Namespace, and errors a browser
    can read (CORS on a 404); every request counted and logged once."""
    started = await asyncio.to_thread(codec_proxy, "key-a", path_prefix="/codec")
    proxy, base = started.proxy, started.base + "/codec"
    secret = f"prefixed-{uuid.uuid4().hex[:8]}"
    client, workflow_id = await run_encrypted_workflow(pki, proxy, worker_codec("key-a"), secret)
    reader = bearer(pki.token(f"{NAMESPACE}:read", subject="ui-user"))
    for endpoint in (base, base + "/{namespace}"):
        decoded = await asyncio.to_thread(
            show,
            pki,
            proxy,
            workflow_id,
            "--codec-endpoint",
            endpoint,
            "--codec-auth",
            reader,
            env=trust_ca(pki),
        )
        assert b64(decoded["input"], "data") == json.dumps(secret).encode(), endpoint

    stored = await history_payloads(client, workflow_id)
    body = {"payloads": [json_format_dict(stored["input"])]}
    ui_headers = {"Authorization": reader, "Origin": UI, "X-Namespace": NAMESPACE}
    ui = request(proxy, "POST", f"{base}/%7Bnamespace%7D/decode", body, ui_headers)
    assert ui.status == 200, ui.body
    assert b64(ui.json()["payloads"][0], "data") == json.dumps(secret).encode()
    assert ui.headers["Access-Control-Allow-Origin"] == UI
    missing = request(proxy, "POST", f"{base}/{NAMESPACE}/nothing", body, ui_headers)
    assert missing.status == 404 and missing.json()["error"].startswith("not found")
    assert missing.headers["Access-Control-Allow-Origin"] == UI
    assert "Origin" in missing.headers["Vary"]
    # Outside the prefix there is no codec.
    assert request(proxy, "POST", f"{started.base}/decode", body, ui_headers).status == 404

    metrics = proxy.metrics()
    ok = sample(metrics, "temporal_auth_proxy_codec_requests_total", operation="decode", code="200")
    assert ok is not None and ok >= 3
    assert (
        sample(metrics, "temporal_auth_proxy_codec_requests_total", operation="unknown", code="404")
        == 1
    )
    lines = [e for e in proxy.events() if e.get("event") == "codec_request"]
    assert lines and all(e["level"] == "info" for e in lines)
    assert {e["path"] for e in lines} <= {"/codec/decode", "/codec/{namespace}/decode"}
    assert any(e["origin"] == UI and e["namespace"] == NAMESPACE for e in lines)
    assert not [line for line in proxy.logs().splitlines() if reader.split()[1] in line]


def json_format_dict(payload: Payload) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(payload)
    return result
