"""Real parts for end-to-end tests: a Temporal dev server, a TLS terminator in front of it (the
upstream's TLS), the proxy as a subprocess, the `temporal` CLI. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.dev.pki import (
    CertificateAuthority,
    IssuedCert,
    generate_key,
    jwk_from_public_key,
    mint_token,
    private_key_pem,
)

VENV_BIN = Path(sys.executable).parent
TEMPORAL = str(VENV_BIN / "temporal")
LOOPBACK = "127.0.0.1"
PROXY_NAME = "proxy.test"
UPSTREAM_NAME = "temporal-frontend.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: S110 - polling until ready
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# --------------------------------------------------------------------------- PKI and keys


@dataclass
class Pki:
    """Everything minted once per test run (never read from certs-dev/)."""

    dir: Path
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    files: dict[str, str] = field(default_factory=dict)
    rsa_key_pem: bytes = b""
    ec_key_pem: bytes = b""
    rsa_kid: str = "rsa-1"
    ec_kid: str = "ec-1"
    jwks_path: Path = Path()

    def token(self, *permissions: str, subject: str = "tester", ttl: int = 3600, **kw: Any) -> str:
        return mint_token(
            self.rsa_key_pem,
            kid=self.rsa_kid,
            subject=subject,
            permissions=permissions,
            ttl_seconds=ttl,
            **kw,
        )

    def ec_token(self, *permissions: str, subject: str = "tester-ec", ttl: int = 3600) -> str:
        return mint_token(
            self.ec_key_pem,
            kid=self.ec_kid,
            subject=subject,
            permissions=permissions,
            ttl_seconds=ttl,
            alg="ES256",
        )

    def read(self, name: str) -> bytes:
        return Path(self.files[name]).read_bytes()


def _write(directory: Path, stem: str, cert: IssuedCert, files: dict[str, str]) -> None:
    cert_path, key_path = cert.write(directory, stem)
    files[f"{stem}.pem"] = str(cert_path)
    files[f"{stem}.key"] = str(key_path)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("e2e test CA")
    other = CertificateAuthority.create("e2e other CA")
    pki = Pki(dir=directory, ca=ca, other_ca=other)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "other-ca.pem").write_bytes(other.cert_pem)
    pki.files["ca.pem"] = str(directory / "ca.pem")
    pki.files["other-ca.pem"] = str(directory / "other-ca.pem")
    _write(
        directory,
        "server",
        ca.issue(
            PROXY_NAME, dns_names=(PROXY_NAME, "localhost"), ip_addresses=(LOOPBACK,), server=True
        ),
        pki.files,
    )
    _write(
        directory,
        "client",
        ca.issue(
            "worker-a",
            dns_names=("worker-a.test",),
            organizational_units=("payments",),
            uris=("spiffe://e2e.test/ns/default/sa/worker-a",),
            client=True,
        ),
        pki.files,
    )
    _write(directory, "rogue", other.issue("rogue", client=True), pki.files)
    _write(
        directory,
        "upstream",
        ca.issue(UPSTREAM_NAME, dns_names=(UPSTREAM_NAME,), ip_addresses=(LOOPBACK,), server=True),
        pki.files,
    )
    _write(directory, "internode", ca.issue("temporal-auth-proxy", client=True), pki.files)
    rsa_key = generate_key("rsa")
    ec_key = generate_key("ec")
    pki.rsa_key_pem = private_key_pem(rsa_key)
    pki.ec_key_pem = private_key_pem(ec_key)
    jwks = {
        "keys": [
            jwk_from_public_key(rsa_key.public_key(), pki.rsa_kid, "RS256"),
            jwk_from_public_key(ec_key.public_key(), pki.ec_kid, "ES256"),
        ]
    }
    pki.jwks_path = directory / "jwks.json"
    pki.jwks_path.write_text(json.dumps(jwks))
    return pki


# ------------------------------------------------------------------------- Temporal server


class TemporalDevServer:
    def __init__(
        self,
        workdir: Path,
        namespaces: tuple[str, ...] = ("other",),
        *,
        ui_port: int | None = None,
        ui_codec_endpoint: str = "",
    ) -> None:
        """`ui_port`: also serve the Web UI there (loopback, no newsfeed fetch); headless
        otherwise. `ui_codec_endpoint`: the UI's codec setting (`TEMPORAL_CODEC_ENDPOINT`)."""
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.log_path = workdir / "temporal.log"
        self.ui_port = ui_port
        ui = (
            ["--ui-ip", LOOPBACK, "--ui-port", str(ui_port), "--ui-disable-news-fetch"]
            if ui_port is not None
            else ["--headless"]
        )
        if ui_codec_endpoint:
            ui += ["--ui-codec-endpoint", ui_codec_endpoint]
        args = [
            TEMPORAL,
            "server",
            "start-dev",
            *ui,
            "--ip",
            LOOPBACK,
            "--port",
            str(self.port),
            "--log-level",
            "warn",
        ]
        for ns in namespaces:
            args += ["--namespace", ns]
        for kv in (
            "frontend.rps=100000",
            "frontend.namespaceRPS=100000",
            "frontend.globalNamespaceRPS=100000",
        ):
            args += ["--dynamic-config-value", kv]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(self._healthy, 60, 0.2, "the Temporal dev server")
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"temporal exited: {self.log_path.read_text()[-2000:]}")
        r = subprocess.run(
            [TEMPORAL, "operator", "cluster", "health", "--address", self.address],
            capture_output=True,
            timeout=10,
        )
        return r.returncode == 0

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._log.close()


# ----------------------------------------------------------------------- TLS terminator


class TLSTerminator:
    """The upstream's TLS: OpenSSL (Python's ssl) in front of the plaintext dev server.

    It requires a client certificate from the test CA, so the proxy's internode certificate is
    verified by an independent TLS stack. `stop()`/`start()` simulate the upstream going away.
    """

    def __init__(self, pki: Pki, target_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(pki.files["upstream.pem"], pki.files["upstream.key"])
        ctx.load_verify_locations(pki.files["ca.pem"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])
        self._ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.client_serials: list[int] = []  # the proxy's internode certificate, per connection
        self.start()

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                self._server = await asyncio.start_server(
                    self._handle, LOOPBACK, self.port, ssl=self._ctx, reuse_address=True
                )
                ready.set()
                async with self._server:
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._server.serve_forever()

            loop.run_until_complete(main())
            # Let the aborted transports really close their sockets before the loop goes.
            loop.run_until_complete(asyncio.sleep(0.2))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("TLS terminator did not start")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            from cryptography import x509

            self.client_serials.append(x509.load_der_x509_certificate(der).serial_number)
        try:
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.target_port), 5
            )
        except OSError:
            writer.close()
            return
        self._writers.add(up_w)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        loop = self._loop
        if loop is None or self._server is None:
            return

        def close_all() -> None:
            assert self._server is not None
            self._server.close()
            for w in self._writers:
                w.transport.abort()  # like a crashed upstream: no goodbye
            self._writers.clear()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(close_all)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None


# ------------------------------------------------------------------------------- proxy


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def base_config(pki: Pki, upstream_port: int, *, internode: bool = True) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": {"address": f"{LOOPBACK}:0", "shutdownGracePeriod": "10s"},
        "upstream": {"address": f"{LOOPBACK}:{upstream_port}"},
        "admin": {"address": f"{LOOPBACK}:0"},
        "tls": {
            "frontend": {
                "server": {
                    "certFile": pki.files["server.pem"],
                    "keyFile": pki.files["server.key"],
                    "clientCaFiles": [pki.files["ca.pem"]],
                    "requireClientAuth": True,
                }
            },
        },
        "authorization": {"authorizer": "noop", "claimMapper": "noop"},
        # Tests read individual denials from the log: lift the repeat limit (default 10 per
        # 10 s per reason); test_admin_and_log_floods.py sets the defaults back.
        "log": {"format": "json", "level": "info", "repeatBurst": 100_000},
    }
    if internode:
        cfg["tls"]["internode"] = {
            "server": {
                "certFile": pki.files["internode.pem"],
                "keyFile": pki.files["internode.key"],
            },
            "client": {"serverName": UPSTREAM_NAME, "rootCaFiles": [pki.files["ca.pem"]]},
        }
    return cfg


def jwt_authorization(pki: Pki, **over: Any) -> dict[str, Any]:
    auth = {
        "authorizer": "default",
        "claimMapper": "default",
        "jwtKeyProvider": {"keySourceURIs": [pki.jwks_path.as_uri()], "refreshInterval": "1m"},
    }
    auth.update(over)
    return auth


class ProxyProcess:
    """`python -m proxy serve` as a real subprocess with its own config file and log."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        wait_ready: bool = True,
        env: Mapping[str, str] | None = None,
        admin_ca: str | None = None,
    ) -> None:
        """`admin_ca`: the admin port serves HTTPS (`admin.tls`); poll it trusting this CA."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = config
        self.admin_ssl = ssl.create_default_context(cafile=admin_ca) if admin_ca else None
        self.port = (
            free_port()
            if config["listen"]["address"].endswith(":0")
            else int(config["listen"]["address"].rpartition(":")[2])
        )
        self.admin_port = (
            free_port()
            if config["admin"]["address"].endswith(":0")
            else int(config["admin"]["address"].rpartition(":")[2])
        )
        config["listen"]["address"] = f"{LOOPBACK}:{self.port}"
        config["admin"]["address"] = f"{LOOPBACK}:{self.admin_port}"
        scheme = "https" if admin_ca else "http"
        self.admin_url = f"{scheme}://{LOOPBACK}:{self.admin_port}"
        self.config_path = workdir / f"proxy-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"proxy-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.address = f"{LOOPBACK}:{self.port}"
        try:
            wait_until(self.healthy if not wait_ready else self.ready, 30, 0.1, "the proxy")
        except BaseException:
            self.stop()  # never leave a proxy running behind a failed start
            raise

    def _get(self, path: str) -> tuple[int, bytes]:
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.logs()[-3000:]}")
        try:
            with urllib.request.urlopen(
                f"{self.admin_url}{path}", timeout=5, context=self.admin_ssl
            ) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str) -> tuple[int, bytes]:
        return self._get(path)

    def healthy(self) -> bool:
        return self._get("/healthz")[0] == 200

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def metrics(self) -> str:
        return self._get("/metrics")[1].decode()

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self._log.closed:
            self._log.close()


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample whose labels include `labels`, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# ------------------------------------------------------------------------------ the CLI


def cli(
    pki: Pki,
    address: str,
    *args: str,
    token: str | None = None,
    cert: str = "client",
    timeout: float = 30,
    extra: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `temporal` CLI through the proxy with mTLS (and --api-key when given).

    `env` is added to this process's environment for the CLI."""
    cmd = [
        TEMPORAL,
        *args,
        "--address",
        address,
        "--tls-ca-path",
        pki.files["ca.pem"],
        "--tls-server-name",
        PROXY_NAME,
    ]
    if cert:
        cmd += [
            "--tls-cert-path",
            pki.files[f"{cert}.pem"],
            "--tls-key-path",
            pki.files[f"{cert}.key"],
        ]
    if token is not None:
        cmd += ["--api-key", token]
    cmd += list(extra)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env is not None else None,
    )


@contextlib.contextmanager
def running(proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    try:
        yield proxy
    finally:
        proxy.stop()


def mtls_channel(
    pki: Pki,
    address: str,
    cert: str | None = "client",
    *,
    pair: tuple[bytes, bytes] | None = None,
) -> Any:
    """A grpc channel to the proxy with the rig's `cert` (None: no client certificate) or an
    explicit (certificate, key) PEM `pair`. Each channel opens its own connection."""
    import grpc

    cert_pem, key_pem = pair or (
        (pki.read(f"{cert}.pem"), pki.read(f"{cert}.key")) if cert else (None, None)
    )
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"), private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.secure_channel(
        address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", PROXY_NAME),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )
