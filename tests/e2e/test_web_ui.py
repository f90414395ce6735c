"""The real Temporal Web UI in headless Chromium shows a workflow's encrypted input decrypted
through the proxy's Codec Server (issue 16 item 6), and the pieces of `make run` tell that story
(item 5): deploy/dev/proxy.yaml, the dev codec key and deploy/dev/sample.py.

One `temporal server start-dev` with its UI per module, the proxy from the dev config in front of
it, one workflow started by the sample script. The browser is Debian's Chromium driven by
Playwright (never a downloaded one; `make test` installs the package). Each test gets a fresh
browser context, so the UI's codec settings in local storage start empty. Loopback only: the page's
requests to any other host are aborted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright
from playwright.sync_api import Response as PWResponse
from temporalio.api.common.v1 import Payload

from proxy.dev.pki import DEV_CODEC_KEY_ID, DevBundle, mint_token, write_dev_bundle
from tests.e2e.rig import (
    LOOPBACK,
    TEMPORAL,
    ProxyProcess,
    TemporalDevServer,
    deep_merge,
    free_port,
    running,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEV_CONFIG = ROOT / "deploy" / "dev" / "proxy.yaml"
RUN_SH = ROOT / "deploy" / "dev" / "run.sh"
SAMPLE = ROOT / "deploy" / "dev" / "sample.py"
DEV_UI_PORT = 8233  # run.sh's --ui-port; the dev config's CORS origins name it
NAMESPACE = "default"
# What deploy/dev/sample.py starts the workflow with (stored encrypted, shown decrypted).
SAMPLE_INPUT: dict[str, Any] = {
    "customer": "Ada Lovelace",
    "card": "4111 1111 1111 1111",
    "amount": 42,
}
PLAINTEXT = "Ada Lovelace"
CARD = "4111 1111 1111 1111"
# Resolved to 127.0.0.1 by the browser only: the same UI under an origin the proxy does not allow.
OTHER_HOST = "ui-other.test"
BROWSER_HOSTS = frozenset({LOOPBACK, "localhost", OTHER_HOST})
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {OTHER_HOST} {LOOPBACK}",
]
UI_TIMEOUT_MS = 20_000


def chromium() -> str:
    """Debian's Chromium: `chromium-headless-shell` or `chromium` (TAP_CHROMIUM overrides)."""
    for candidate in (
        os.environ.get("TAP_CHROMIUM", ""),
        "chromium-headless-shell",
        "chromium",
    ):
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    pytest.fail(
        "no Chromium: `make test` installs Debian's chromium-headless-shell "
        "(or: apt-get install chromium-headless-shell)"
    )


# ----------------------------------------------------------------------------- the stack


def dev_config(
    *, upstream: str, admin_port: int, ui_port: int, codec: dict[str, Any] | None = None
) -> dict[str, Any]:
    """deploy/dev/proxy.yaml as `make run` uses it, on this module's ports."""
    cfg: dict[str, Any] = yaml.safe_load(DEV_CONFIG.read_text())
    cfg["listen"]["address"] = f"{LOOPBACK}:0"
    cfg["admin"]["address"] = f"{LOOPBACK}:{admin_port}"
    cfg["upstream"]["address"] = upstream
    cfg["log"] = {"format": "json", "level": "info"}
    origins = cfg["codec"]["cors"]["origins"]
    cfg["codec"]["cors"]["origins"] = [o.replace(f":{DEV_UI_PORT}", f":{ui_port}") for o in origins]
    return deep_merge(cfg, {"codec": codec}) if codec else cfg


@dataclass
class Stack:
    dir: Path
    bundle: DevBundle
    temporal: TemporalDevServer
    proxy: ProxyProcess  # the dev config: codec open to the UI's two origins, no token needed
    ui_port: int
    workflow_id: str = ""
    run_id: str = ""
    link: str = ""  # what the sample printed
    ciphertext: str = ""  # base64 of the stored input payload's data, as the UI shows it
    stored: dict[str, Any] = field(default_factory=dict)

    def ui(self, host: str = "localhost") -> str:
        return f"http://{host}:{self.ui_port}"

    def history_url(self, host: str = "localhost") -> str:
        return (
            f"{self.ui(host)}/namespaces/{NAMESPACE}/workflows/"
            f"{self.workflow_id}/{self.run_id}/history"
        )

    def codec_base(self, proxy: ProxyProcess | None = None) -> str:
        return f"http://{LOOPBACK}:{(proxy or self.proxy).admin_port}"

    def another_proxy(self, name: str, codec: dict[str, Any]) -> ProxyProcess:
        cfg = dev_config(
            upstream=self.temporal.address,
            admin_port=free_port(),
            ui_port=self.ui_port,
            codec=codec,
        )
        return ProxyProcess(self.dir / name, cfg, env={"TAP_ROOT": str(self.dir)})


def run_sample(stack: Stack) -> subprocess.CompletedProcess[str]:
    token = mint_token(
        stack.bundle.jwt_key.read_bytes(),
        kid=stack.bundle.kid,
        subject="dev-user",
        permissions=[f"{NAMESPACE}:admin"],
    )
    return subprocess.run(
        [
            sys.executable,
            str(SAMPLE),
            "--certs",
            str(stack.bundle.directory),
            "--address",
            stack.proxy.address,
            "--token",
            token,
            "--ui",
            stack.ui(),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        # This tree's `proxy` package, as the rig's `python -m proxy` does.
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def stored_input(stack: Stack) -> dict[str, Any]:
    """The started event's input payload straight from the dev server (no codec)."""
    done = subprocess.run(
        [
            TEMPORAL,
            "workflow",
            "show",
            "--address",
            stack.temporal.address,
            "--namespace",
            NAMESPACE,
            "--workflow-id",
            stack.workflow_id,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    for event in json.loads(done.stdout)["events"]:
        attrs = event.get("workflowExecutionStartedEventAttributes")
        if attrs is not None:
            payload: dict[str, Any] = attrs["input"]["payloads"][0]
            return payload
    raise AssertionError("no WorkflowExecutionStarted event")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("webui")
    bundle = write_dev_bundle(directory / "certs-dev")
    admin_port, ui_port = free_port(), free_port()
    # The UI's own codec setting (TEMPORAL_CODEC_ENDPOINT): the proxy's root endpoint.
    temporal = TemporalDevServer(
        directory,
        namespaces=(),
        ui_port=ui_port,
        ui_codec_endpoint=f"http://{LOOPBACK}:{admin_port}",
    )
    try:
        wait_until(
            lambda: (
                urllib.request.urlopen(
                    f"http://{LOOPBACK}:{ui_port}/api/v1/settings", timeout=2
                ).status
                == 200
            ),
            30,
            0.2,
            "the Web UI",
        )
        cfg = dev_config(upstream=temporal.address, admin_port=admin_port, ui_port=ui_port)
        proxy = ProxyProcess(directory / "proxy", cfg, env={"TAP_ROOT": str(directory)})
        with running(proxy):
            st = Stack(directory, bundle, temporal, proxy, ui_port)
            done = run_sample(st)
            assert done.returncode == 0, done.stdout + done.stderr
            match = re.search(
                r"(http://\S+)/namespaces/(\S+)/workflows/(\S+)/(\S+)/history", done.stdout
            )
            assert match is not None, done.stdout
            st.link = match.group(0)
            st.workflow_id, st.run_id = match.group(3), match.group(4)
            st.stored = stored_input(st)
            st.ciphertext = st.stored["data"]
            yield st
    finally:
        temporal.stop()


# ---------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    pw: Playwright = sync_playwright().start()
    try:
        # launch() gives the browser a new, empty profile directory of its own.
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@dataclass
class Seen:
    """What the page's codec calls got: (status, url) answers and failed urls."""

    requests: list[str] = field(default_factory=list)
    answers: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked_hosts: set[str] = field(default_factory=set)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def open_page(
    ctx: BrowserContext,
    codec_prefix: str,
    *,
    local_endpoint: str = "",
    pass_access_token: bool = False,
    include_credentials: bool = False,
) -> tuple[Page, Seen]:
    """A page whose requests stay on loopback. `local_endpoint` and the flags are what a user
    sets in the UI's Codec Server settings: local storage (UI 2.54), overriding the server's."""
    seen = Seen()

    def loopback_only(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in BROWSER_HOSTS:
            route.continue_()
        else:
            seen.blocked_hosts.add(host)
            route.abort()

    ctx.route("**/*", loopback_only)
    if local_endpoint:
        settings = {
            "endpoint": local_endpoint,
            "passAccessToken": pass_access_token,
            "includeCredentials": include_credentials,
            "overrideRemoteCodecConfiguration": True,
        }
        ctx.add_init_script(
            "".join(
                f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});"
                for k, v in settings.items()
            )
        )
    page = ctx.new_page()

    def on_response(response: PWResponse) -> None:
        if response.url.startswith(codec_prefix) and response.request.method == "POST":
            seen.answers.append((response.status, response.url))

    page.on("response", on_response)
    page.on(
        "request",
        lambda r: seen.requests.append(r.url) if r.url.startswith(codec_prefix) else None,
    )
    page.on(
        "requestfailed",
        lambda r: seen.failed.append(r.url) if r.url.startswith(codec_prefix) else None,
    )
    return page, seen


def screenshot(page: Page, stack: Stack, name: str) -> None:
    """For a person to look at: in $TAP_SCREENSHOTS, else beside the module's temporary files."""
    directory = Path(os.environ.get("TAP_SCREENSHOTS") or stack.dir)
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"))


def expect_decrypted(page: Page, stack: Stack) -> None:
    expect(page.get_by_text(PLAINTEXT).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(CARD).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(stack.ciphertext[:32])).to_have_count(0)


def expect_ciphertext(page: Page, stack: Stack, *, banner: bool = True) -> None:
    expect(page.get_by_text(stack.ciphertext[:32]).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    failed = page.get_by_text("Codec Server could not connect").filter(visible=True)
    if banner:
        expect(failed.first).to_be_visible(timeout=UI_TIMEOUT_MS)
    else:
        expect(failed).to_have_count(0)
    expect(page.get_by_text(PLAINTEXT)).to_have_count(0)


# ------------------------------------------------------------------------------- the tests


def test_the_dev_stack_serves_the_ui_its_codec_and_both_spellings_of_its_origin() -> None:
    cfg = yaml.safe_load(DEV_CONFIG.read_text())
    codec = cfg["codec"]
    assert codec["enabled"] is True
    assert codec["keys"] == {DEV_CODEC_KEY_ID: "file:${TAP_ROOT}/certs-dev/codec.key"}
    assert codec["encryptKeyId"] == DEV_CODEC_KEY_ID
    # The dev server prints http://localhost:8233; users also type 127.0.0.1.
    assert set(codec["cors"]["origins"]) == {
        f"http://localhost:{DEV_UI_PORT}",
        f"http://127.0.0.1:{DEV_UI_PORT}",
    }
    # The dev UI has no login and so sends no token: open, but only on loopback.
    assert codec["requireAuthorization"] is False
    assert cfg["admin"]["address"].startswith(f"{LOOPBACK}:")
    script = RUN_SH.read_text()
    assert f"ui_port={DEV_UI_PORT}" in script
    admin = cfg["admin"]["address"]
    assert f"codec=http://{admin}" in script and "--ui-codec-endpoint" in script
    assert "--headless" not in script and "sample.py" in script


def test_the_sample_stores_its_input_encrypted_with_the_dev_codec_key(stack: Stack) -> None:
    meta = {k: base64.b64decode(v) for k, v in stack.stored["metadata"].items()}
    assert meta["encoding"] == b"binary/encrypted"
    assert meta["encryption-key-id"] == DEV_CODEC_KEY_ID.encode()
    data = base64.b64decode(stack.ciphertext)
    assert PLAINTEXT.encode() not in data
    # Temporal's encryption-sample format, decrypted without our code.
    key = base64.b64decode(stack.bundle.codec_key.read_text())
    inner = Payload.FromString(AESGCM(key).decrypt(data[:12], data[12:], None))
    assert json.loads(inner.data) == SAMPLE_INPUT
    assert stack.link == stack.history_url("localhost")


def test_the_ui_shows_the_sample_input_decrypted_through_the_root_endpoint(
    stack: Stack, context: BrowserContext
) -> None:
    """The UI's own codec setting (the dev server's --ui-codec-endpoint), both origins."""
    base = stack.codec_base()
    page, seen = open_page(context, base)
    page.goto(stack.link)  # the link the sample printed: http://localhost:<ui>
    expect_decrypted(page, stack)
    screenshot(page, stack, "root-localhost")
    page.goto(stack.history_url(LOOPBACK))
    expect_decrypted(page, stack)
    assert seen.answers, "the UI never called the codec"
    assert {status for status, _ in seen.answers} == {200}
    assert {urlsplit(url).path for _, url in seen.answers} == {"/decode"}
    assert not seen.failed and not seen.blocked_hosts, (seen.failed, seen.blocked_hosts)


def test_the_ui_decrypts_through_a_path_prefix(stack: Stack, context: BrowserContext) -> None:
    """`codec.pathPrefix` (an ingress path): the endpoint set in the UI's settings."""
    with running(stack.another_proxy("prefix", {"pathPrefix": "/codec"})) as proxy:
        base = stack.codec_base(proxy)
        page, seen = open_page(context, base, local_endpoint=f"{base}/codec")
        page.goto(stack.history_url())
        expect_decrypted(page, stack)
        screenshot(page, stack, "prefix")
    assert {status for status, _ in seen.answers} == {200}
    assert {urlsplit(url).path for _, url in seen.answers} == {"/codec/decode"}


def test_the_ui_decrypts_through_the_namespace_placeholder(
    stack: Stack, context: BrowserContext
) -> None:
    """The UI does not expand `{namespace}`: it posts to /%7Bnamespace%7D/decode with the
    namespace in X-Namespace."""
    base = stack.codec_base()
    page, seen = open_page(context, base, local_endpoint=f"{base}/{{namespace}}")
    page.goto(stack.history_url())
    expect_decrypted(page, stack)
    screenshot(page, stack, "namespace-placeholder")
    assert {status for status, _ in seen.answers} == {200}
    assert {urlsplit(url).path for _, url in seen.answers} == {"/%7Bnamespace%7D/decode"}


def test_a_disallowed_origin_shows_ciphertext(stack: Stack, context: BrowserContext) -> None:
    base = stack.codec_base()
    page, seen = open_page(context, base)
    page.goto(stack.history_url(OTHER_HOST))  # the same UI, an origin not in codec.cors
    expect_ciphertext(page, stack)
    screenshot(page, stack, "disallowed-origin")
    # The browser withheld every answer: no CORS grant for this origin.
    assert seen.failed and not seen.answers, seen
    assert not seen.blocked_hosts, seen.blocked_hosts


def test_a_403_reaches_the_browser_as_a_403(stack: Stack, context: BrowserContext) -> None:
    """Authorization required (the default with JWT on) and a UI that sends no token."""
    with running(stack.another_proxy("auth", {"requireAuthorization": True})) as proxy:
        base = stack.codec_base(proxy)
        page, seen = open_page(context, base, local_endpoint=base)
        page.goto(stack.history_url())
        expect_ciphertext(page, stack)
        screenshot(page, stack, "forbidden")
        assert seen.answers and {status for status, _ in seen.answers} == {403}, seen
        # The page's own script reads the status and the body: CORS covers the error answer.
        answer = page.evaluate(
            """async (url) => {
                const r = await fetch(url, {method: 'POST', body: '{"payloads": []}',
                    headers: {'Content-Type': 'application/json', 'X-Namespace': 'default'}});
                return {status: r.status, body: await r.json()};
            }""",
            f"{base}/decode",
        )
        assert answer == {"status": 403, "body": {"error": "Request unauthorized."}}
        denied = [e for e in proxy.events() if e.get("event") == "codec_denied"]
        assert denied and {e["reason"] for e in denied} == {"token_required"}, denied


def test_pass_access_token_over_plain_http_sends_nothing(
    stack: Stack, context: BrowserContext
) -> None:
    """The UI hands tokens only to an https endpoint: over http it does not call at all, and
    shows the raw payload (metadata and data in base64) without any error banner."""
    base = stack.codec_base()
    page, seen = open_page(context, base, local_endpoint=base, pass_access_token=True)
    page.goto(stack.history_url())
    expect_ciphertext(page, stack, banner=False)
    encrypted = base64.b64encode(b"binary/encrypted").decode()
    expect(page.get_by_text(encrypted).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, stack, "pass-token-over-http")
    assert not seen.requests, seen


def test_include_credentials_needs_allow_credentials(stack: Stack, context: BrowserContext) -> None:
    """`includeCredentials` makes the browser demand Access-Control-Allow-Credentials: true;
    the dev config does not send it, `codec.cors.allowCredentials: true` does."""
    base = stack.codec_base()
    page, seen = open_page(context, base, local_endpoint=base, include_credentials=True)
    page.goto(stack.history_url())
    expect_ciphertext(page, stack)
    assert seen.failed and not seen.answers, seen
    with running(stack.another_proxy("credentials", {"cors": {"allowCredentials": True}})) as ok:
        base = stack.codec_base(ok)
        page, seen = open_page(context, base, local_endpoint=base, include_credentials=True)
        page.goto(stack.history_url())
        expect_decrypted(page, stack)
    assert {status for status, _ in seen.answers} == {200}
