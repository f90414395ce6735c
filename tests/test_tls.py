from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import structlog
from structlog.testing import capture_logs

from proxy.app import App, build
from proxy.config.parse import parse_config
from proxy.config.schema import ClientTLSConfig, GroupTLSConfig, ServerTLSConfig, TLSConfig
from proxy.dev.pki import SPIFFE_DEV_CLIENT, CertificateAuthority, IssuedCert
from proxy.errors import ConfigError
from proxy.tls.credentials import FrontendCredentials, channel_credentials
from proxy.tls.expiry import expiring_certificates, expiry_timestamps
from proxy.tls.material import (
    TLSMaterials,
    load_client_material,
    load_server_material,
    load_tls_materials,
)
from proxy.tls.peer import peer_identity
from proxy.tls.reload import TLSReloader

try:  # the helper sits next to this file; import it whichever way pytest set up sys.path
    from tests.pki import SecretMount, served_certificate
except ImportError:
    from pki import SecretMount, served_certificate  # type: ignore[no-redef]


ECHO = "/test.Echo/Identity"
FRONTEND = "tls.frontend.server"
NO_REUSEPORT = [("grpc.so_reuseport", 0)]


# --- fixtures --------------------------------------------------------------------------------


@dataclasses.dataclass
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: IssuedCert
    client: IssuedCert
    stranger: IssuedCert  # a client cert from other_ca
    dir: Path

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def server_cfg(self, **overrides: Any) -> ServerTLSConfig:
        values: dict[str, Any] = {
            "cert_file": self.write("server.pem", self.server.cert_pem),
            "key_file": self.write("server.key", self.server.key_pem),
            "client_ca_files": (self.write("ca.pem", self.ca.cert_pem),),
            "require_client_auth": True,
        }
        values.update(overrides)
        return ServerTLSConfig(**values)

    def new_server_cert(self) -> IssuedCert:
        return self.ca.issue(
            "proxy.test",
            dns_names=("localhost", "proxy.test"),
            ip_addresses=("127.0.0.1",),
            server=True,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create("test CA")
    other = CertificateAuthority.create("other CA")
    server = ca.issue(
        "proxy.test",
        dns_names=("localhost", "proxy.test"),
        ip_addresses=("127.0.0.1",),
        server=True,
    )
    client = ca.issue(
        "dev-client",
        dns_names=("dev-client.test",),
        uris=(SPIFFE_DEV_CLIENT,),
        organizational_units=("workers",),
        client=True,
    )
    stranger = other.issue("dev-client", dns_names=("dev-client.test",), client=True)
    return Pki(ca, other, server, client, stranger, tmp_path)


async def _echo_identity(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    identity = peer_identity(context.auth_context())
    return json.dumps(None if identity is None else dataclasses.asdict(identity)).encode()


@asynccontextmanager
async def serving(credentials: Any) -> AsyncIterator[int]:
    server = grpc.aio.server(options=NO_REUSEPORT)
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Identity": grpc.unary_unary_rpc_method_handler(_echo_identity)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


def client_creds(pki: Pki, cert: IssuedCert | None) -> Any:
    if cert is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=cert.key_pem,
        certificate_chain=cert.cert_pem,
    )


async def call(
    port: int, creds: Any, options: list[tuple[str, Any]] | None = None
) -> dict[str, Any] | None:
    opts = options if options is not None else [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as channel:
        reply = await channel.unary_unary(ECHO)(b"", timeout=5)
    result: dict[str, Any] | None = json.loads(reply)
    return result


# --- loading errors name the key path --------------------------------------------------------


def _expect_error(fn: Callable[[], object], path: str, fragment: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn()
    assert info.value.path == path, str(info.value)
    assert fragment in info.value.message, info.value.message
    return info.value


def test_load_server_material_ok(pki: Pki) -> None:
    material = load_server_material(pki.server_cfg(), FRONTEND)
    assert material.serial == pki.server.serial
    assert material.require_client_auth
    assert material.client_ca_pem == pki.ca.cert_pem
    assert material.not_after == pki.server.certificate.not_valid_after_utc.timestamp()
    assert material.client_ca_not_afters == (pki.ca.certificate.not_valid_after_utc.timestamp(),)
    assert "BEGIN PRIVATE KEY" not in repr(material)


def test_missing_cert_file(pki: Pki) -> None:
    cfg = pki.server_cfg(cert_file=str(pki.dir / "nope.pem"))
    _expect_error(lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.certFile", "not found")


def test_unreadable_key_file(pki: Pki) -> None:
    cfg = pki.server_cfg(key_file=str(pki.dir))  # a directory cannot be read, even by root
    _expect_error(lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.keyFile", "directory")


def test_garbage_cert(pki: Pki) -> None:
    cfg = pki.server_cfg(cert_file=pki.write("bad.pem", b"not a certificate\n"))
    _expect_error(lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.certFile", "PEM")


def test_garbage_key_does_not_echo_the_bytes(pki: Pki) -> None:
    secret = b"-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n"
    cfg = pki.server_cfg(key_file=pki.write("bad.key", secret))
    err = _expect_error(lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.keyFile", "PEM")
    assert "U0VDUkVU" not in str(err)


def test_key_not_matching_cert(pki: Pki) -> None:
    cfg = pki.server_cfg(key_file=pki.write("client.key", pki.client.key_pem))
    _expect_error(
        lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.keyFile", "does not match"
    )


def test_ca_bundle_without_certificate(pki: Pki) -> None:
    good = pki.write("ca.pem", pki.ca.cert_pem)
    empty = pki.write("empty.pem", b"\n")
    cfg = pki.server_cfg(client_ca_files=(good, empty))
    _expect_error(
        lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.clientCaFiles[1]", "no PEM"
    )
    key_only = pki.write("keyonly.pem", pki.client.key_pem)
    cfg = pki.server_cfg(client_ca_files=(key_only,))
    _expect_error(
        lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.clientCaFiles[0]", "certificate"
    )


def test_cert_without_key_and_key_without_cert(pki: Pki) -> None:
    cfg = pki.server_cfg(key_file="")
    _expect_error(lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.keyFile", "plaintext")
    cfg = pki.server_cfg(cert_file="")
    _expect_error(
        lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.certFile", "no certFile"
    )
    # load_tls_materials must not treat a lone certificate as "TLS off".
    tls = TLSConfig(frontend=GroupTLSConfig(server=pki.server_cfg(key_file="")))
    _expect_error(lambda: load_tls_materials(tls), f"{FRONTEND}.keyFile", "plaintext")


def test_data_fields_are_named_in_errors(pki: Pki) -> None:
    cfg = ServerTLSConfig(cert_data="garbage", key_data=pki.server.key_pem.decode())
    _expect_error(lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.certData", "PEM")
    cfg = ServerTLSConfig(
        cert_data=pki.server.cert_pem.decode(),
        key_data=pki.server.key_pem.decode(),
        client_ca_data=("  ",),
        require_client_auth=True,
    )
    _expect_error(
        lambda: load_server_material(cfg, FRONTEND), f"{FRONTEND}.clientCaData[0]", "empty"
    )


def test_require_client_auth_needs_client_cas(pki: Pki) -> None:
    cfg = pki.server_cfg(client_ca_files=())
    _expect_error(
        lambda: load_server_material(cfg, FRONTEND),
        f"{FRONTEND}.clientCaFiles",
        "requireClientAuth",
    )


def test_disable_host_verification_is_refused(pki: Pki) -> None:
    client = ClientTLSConfig(disable_host_verification=True, force_tls=True)
    _expect_error(
        lambda: load_client_material(client, None, "tls.internode"),
        "tls.internode.client.disableHostVerification",
        "grpcio",
    )


def test_client_material_errors(pki: Pki) -> None:
    bad_root = ClientTLSConfig(root_ca_files=(pki.write("junk", b"junk"),))
    _expect_error(
        lambda: load_client_material(bad_root, None, "tls.internode"),
        "tls.internode.client.rootCaFiles[0]",
        "PEM",
    )
    roots = ClientTLSConfig(root_ca_files=(pki.write("ca.pem", pki.ca.cert_pem),))
    cert_only = ServerTLSConfig(cert_file=pki.write("i.pem", pki.client.cert_pem))
    _expect_error(
        lambda: load_client_material(roots, cert_only, "tls.internode"),
        "tls.internode.server.keyFile",
        "no keyFile",
    )


def test_load_tls_materials_enablement(pki: Pki) -> None:
    assert load_tls_materials(TLSConfig()) == TLSMaterials()
    # forceTLS without roots: TLS with the system roots.
    forced = load_tls_materials(
        TLSConfig(internode=GroupTLSConfig(client=ClientTLSConfig(force_tls=True)))
    )
    assert forced.internode is not None and forced.internode.root_ca_pem is None
    # A server name with TLS off would silently mean plaintext: refused.
    named = TLSConfig(internode=GroupTLSConfig(client=ClientTLSConfig(server_name="x.test")))
    _expect_error(
        lambda: load_tls_materials(named), "tls.internode.client.serverName", "not enabled"
    )


# --- the frontend listener over real sockets -------------------------------------------------


async def test_client_identity_reaches_the_handler(pki: Pki) -> None:
    creds = FrontendCredentials(load_server_material(pki.server_cfg(), FRONTEND))
    async with serving(creds.credentials) as port:
        identity = await call(port, client_creds(pki, pki.client))
    assert identity is not None
    assert identity["common_name"] == "dev-client"
    assert identity["dns_names"] == ["dev-client.test"]
    assert identity["uris"] == [SPIFFE_DEV_CLIENT]
    assert identity["spiffe_id"] == SPIFFE_DEV_CLIENT
    assert identity["organizational_units"] == ["workers"]
    assert identity["subject"].startswith("CN=dev-client,OU=workers")


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
async def test_clients_without_a_trusted_cert_are_refused(pki: Pki, who: str) -> None:
    creds = FrontendCredentials(load_server_material(pki.server_cfg(), FRONTEND))
    cert = None if who == "no certificate" else pki.stranger
    async with serving(creds.credentials) as port:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(port, client_creds(pki, cert))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_without_require_client_auth_no_cert_is_requested(pki: Pki) -> None:
    material = load_server_material(pki.server_cfg(require_client_auth=False), FRONTEND)
    creds = FrontendCredentials(material)
    async with serving(creds.credentials) as port:
        assert await call(port, client_creds(pki, pki.client)) is None
        assert await call(port, client_creds(pki, None)) is None


def test_peer_identity_without_certificate() -> None:
    assert peer_identity({}) is None
    assert peer_identity({"transport_security_type": [b"ssl"]}) is None


def test_peer_identity_spiffe_needs_exactly_one(pki: Pki) -> None:
    two = pki.ca.issue("x", uris=("spiffe://a/x", "spiffe://b/y"), client=True)
    identity = peer_identity({"x509_pem_cert": [two.cert_pem]})
    assert identity is not None
    assert identity.spiffe_id == "" and len(identity.uris) == 2
    plain = pki.ca.issue("y", uris=("https://example.test/y",), client=True)
    identity = peer_identity({"x509_pem_cert": [plain.cert_pem]})
    assert identity is not None and identity.spiffe_id == ""


def test_peer_identity_is_memoized(pki: Pki) -> None:
    context: Mapping[str, list[bytes]] = {"x509_pem_cert": [pki.client.cert_pem]}
    first = peer_identity(context)
    second = peer_identity({"x509_pem_cert": [bytes(pki.client.cert_pem)]})
    assert first is second


# --- reload ----------------------------------------------------------------------------------


def _mount(pki: Pki, cert: IssuedCert) -> SecretMount:
    return SecretMount(
        pki.dir / "secret",
        {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem, "ca.crt": pki.ca.cert_pem},
    )


def _mounted_cfg(mount: SecretMount) -> ServerTLSConfig:
    return ServerTLSConfig(
        cert_file=mount.path("tls.crt"),
        key_file=mount.path("tls.key"),
        client_ca_files=(mount.path("ca.crt"),),
        require_client_auth=True,
    )


async def _served_serial(pki: Pki, port: int) -> int:
    cert_file = pki.write("probe.pem", pki.client.cert_pem)
    key_file = pki.write("probe.key", pki.client.key_pem)
    served = await asyncio.to_thread(
        served_certificate, port, ca_pem=pki.ca.cert_pem, client_cert=cert_file, client_key=key_file
    )
    return served.serial_number


async def test_reload_after_secret_swap(pki: Pki) -> None:
    mount = _mount(pki, pki.server)
    cfg = TLSConfig(frontend=GroupTLSConfig(server=_mounted_cfg(mount)))
    materials = load_tls_materials(cfg)
    assert materials.frontend is not None
    creds = FrontendCredentials(materials.frontend)
    reloads: list[bool] = []
    gauges: list[Mapping[str, float]] = []
    with capture_logs() as logs:
        reloader = TLSReloader(
            cfg,
            materials,
            frontend=creds,
            on_reload=reloads.append,
            on_material=gauges.append,
            logger=structlog.get_logger(),
        )
        assert gauges == [expiry_timestamps(materials)]
        assert set(gauges[0]) == {"frontend", "frontend_client_ca"}

        async with serving(creds.credentials) as port:
            assert await _served_serial(pki, port) == pki.server.serial
            channel = grpc.aio.secure_channel(
                f"127.0.0.1:{port}",
                client_creds(pki, pki.client),
                options=[("grpc.ssl_target_name_override", "localhost")],
            )
            echo = channel.unary_unary(ECHO)
            await echo(b"", timeout=5)

            # Nothing changed: no swap, no callback.
            unchanged = await asyncio.to_thread(reloader.reload)
            assert unchanged.success and unchanged.changed == ()
            assert reloads == []

            rotated = pki.new_server_cert()
            mount.update(
                {"tls.crt": rotated.cert_pem, "tls.key": rotated.key_pem, "ca.crt": pki.ca.cert_pem}
            )
            result = await asyncio.to_thread(reloader.reload)
            assert result.success and result.changed == ("frontend",)
            assert reloads == [True]
            assert len(gauges) == 2
            assert reloader.materials.frontend is not None
            assert reloader.materials.frontend.serial == rotated.serial

            # A new connection gets the new certificate; the open channel keeps working.
            assert await _served_serial(pki, port) == rotated.serial
            await echo(b"", timeout=5)
            assert await call(port, client_creds(pki, pki.client)) is not None

            # A broken update is refused and the last good certificate stays in service.
            mount.update(
                {"tls.crt": b"garbage", "tls.key": rotated.key_pem, "ca.crt": pki.ca.cert_pem}
            )
            failed = await asyncio.to_thread(reloader.reload)
            assert not failed.success and failed.failed == (f"{FRONTEND}.certFile",)
            assert reloads == [True, False]
            assert await _served_serial(pki, port) == rotated.serial
            await echo(b"", timeout=5)

            # A key that belongs to another certificate is refused too.
            other = pki.new_server_cert()
            mount.update(
                {"tls.crt": other.cert_pem, "tls.key": rotated.key_pem, "ca.crt": pki.ca.cert_pem}
            )
            mismatch = await asyncio.to_thread(reloader.reload)
            assert mismatch.failed == (f"{FRONTEND}.keyFile",)
            assert await _served_serial(pki, port) == rotated.serial
            await channel.close()

    events = [entry["event"] for entry in logs]
    assert events == ["tls_reloaded", "tls_reload_failed", "tls_reload_failed"]
    failure = logs[1]
    assert failure["path"] == f"{FRONTEND}.certFile" and failure["log_level"] == "error"
    for entry in logs:
        rendered = json.dumps(entry, default=str)
        assert "PRIVATE KEY" not in rendered


async def test_reload_rotates_client_cas(pki: Pki) -> None:
    mount = _mount(pki, pki.server)
    cfg = TLSConfig(frontend=GroupTLSConfig(server=_mounted_cfg(mount)))
    materials = load_tls_materials(cfg)
    assert materials.frontend is not None
    creds = FrontendCredentials(materials.frontend)
    reloader = TLSReloader(cfg, materials, frontend=creds)
    async with serving(creds.credentials) as port:
        with pytest.raises(grpc.aio.AioRpcError):
            await call(port, client_creds(pki, pki.stranger))
        both = pki.ca.cert_pem + pki.other_ca.cert_pem
        mount.update(
            {"tls.crt": pki.server.cert_pem, "tls.key": pki.server.key_pem, "ca.crt": both}
        )
        assert reloader.reload().changed == ("frontend",)
        identity = await call(port, client_creds(pki, pki.stranger))
        assert identity is not None and identity["common_name"] == "dev-client"


# --- the internode (upstream) channel --------------------------------------------------------


@pytest.fixture
def upstream(pki: Pki) -> IssuedCert:
    return pki.ca.issue(
        "temporal-frontend.test",
        dns_names=("temporal-frontend.test",),
        server=True,
    )


def _upstream_credentials(pki: Pki, upstream: IssuedCert) -> Any:
    return grpc.ssl_server_credentials(
        [(upstream.key_pem, upstream.cert_pem)],
        root_certificates=pki.ca.cert_pem,
        require_client_auth=True,
    )


def _internode_cfg(pki: Pki, server_name: str, mount: SecretMount | None = None) -> GroupTLSConfig:
    internode = pki.ca.issue("temporal-auth-proxy", client=True)
    return GroupTLSConfig(
        server=ServerTLSConfig(
            cert_file=mount.path("tls.crt") if mount else pki.write("in.pem", internode.cert_pem),
            key_file=mount.path("tls.key") if mount else pki.write("in.key", internode.key_pem),
        ),
        client=ClientTLSConfig(
            server_name=server_name, root_ca_files=(pki.write("roots.pem", pki.ca.cert_pem),)
        ),
    )


async def test_channel_credentials_verify_the_server_name(pki: Pki, upstream: IssuedCert) -> None:
    async with serving(_upstream_credentials(pki, upstream)) as port:
        right = _internode_cfg(pki, "temporal-frontend.test")
        material = load_client_material(right.client, right.server, "tls.internode")
        creds, options = channel_credentials(material)
        assert ("grpc.ssl_target_name_override", "temporal-frontend.test") in options
        identity = await call(port, creds, options)
        assert identity is not None and identity["common_name"] == "temporal-auth-proxy"

        wrong = _internode_cfg(pki, "wrong.test")
        material = load_client_material(wrong.client, wrong.server, "tls.internode")
        creds, options = channel_credentials(material)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(port, creds, options)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_internode_reload_bumps_generation(pki: Pki, upstream: IssuedCert) -> None:
    first = pki.ca.issue("temporal-auth-proxy", client=True)
    mount = SecretMount(
        pki.dir / "internode", {"tls.crt": first.cert_pem, "tls.key": first.key_pem}
    )
    cfg = TLSConfig(internode=_internode_cfg(pki, "temporal-frontend.test", mount))
    materials = load_tls_materials(cfg)
    gauges: list[Mapping[str, float]] = []
    reloader = TLSReloader(cfg, materials, on_material=gauges.append)
    assert set(gauges[0]) == {"internode", "internode_root_ca"}
    assert reloader.generation == 0
    assert reloader.internode_material is not None
    assert reloader.internode_material.serial == first.serial

    second = pki.ca.issue("temporal-auth-proxy-2", client=True)
    mount.update({"tls.crt": second.cert_pem, "tls.key": second.key_pem})
    result = reloader.reload()
    assert result.success and result.changed == ("internode",) and result.generation == 1
    material = reloader.internode_material
    assert material is not None and material.serial == second.serial

    async with serving(_upstream_credentials(pki, upstream)) as port:
        identity = await call(port, *channel_credentials(material))
    assert identity is not None and identity["common_name"] == "temporal-auth-proxy-2"

    mount.update({"tls.crt": second.cert_pem, "tls.key": first.key_pem})
    failed = reloader.reload()
    assert not failed.success and failed.failed == ("tls.internode.server.keyFile",)
    assert reloader.generation == 1 and reloader.internode_material is material


# --- expiry ----------------------------------------------------------------------------------

DAY = 86400.0


def _materials_expiring(pki: Pki, now: dt.datetime, **days: float) -> TLSMaterials:
    """Server leaf, client CA and internode leaf with the given lifetimes left (in days)."""
    start = now - dt.timedelta(days=400)
    ca = CertificateAuthority.create(
        "expiring CA", not_before=start, not_after=now + dt.timedelta(days=days["ca"])
    )
    leaf = ca.issue(
        "leaf", server=True, not_before=start, not_after=now + dt.timedelta(days=days["leaf"])
    )
    client = ca.issue(
        "client", client=True, not_before=start, not_after=now + dt.timedelta(days=days["client"])
    )
    server_cfg = ServerTLSConfig(
        cert_data=leaf.cert_pem.decode(),
        key_data=leaf.key_pem.decode(),
        client_ca_data=(ca.cert_pem.decode(),),
        require_client_auth=True,
    )
    client_cfg = ServerTLSConfig(
        cert_data=client.cert_pem.decode(), key_data=client.key_pem.decode()
    )
    return TLSMaterials(
        frontend=load_server_material(server_cfg, FRONTEND),
        internode=load_client_material(
            ClientTLSConfig(force_tls=True), client_cfg, "tls.internode"
        ),
    )


def test_expiry_windows_follow_temporal(pki: Pki) -> None:
    now_dt = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    now = now_dt.timestamp()
    materials = _materials_expiring(pki, now_dt, leaf=20, ca=3, client=-1)

    findings = {f.label: f for f in expiring_certificates(materials, now, 30 * DAY, 7 * DAY)}
    assert set(findings) == {"frontend", "frontend_client_ca", "internode"}
    assert (findings["frontend"].level, findings["frontend"].expired) == ("warning", False)
    assert (findings["frontend_client_ca"].level, findings["frontend_client_ca"].expired) == (
        "error",
        False,
    )
    assert (findings["internode"].level, findings["internode"].expired) == ("error", True)
    assert findings["frontend_client_ca"].is_ca

    # Outside a 10-day window only the CA and the expired cert show up.
    labels = {f.label for f in expiring_certificates(materials, now, 10 * DAY, 7 * DAY)}
    assert labels == {"frontend_client_ca", "internode"}
    # Only errorWindow set: it is also the window, and everything in it is an error.
    only_error = expiring_certificates(materials, now, 0, 7 * DAY)
    assert {f.label for f in only_error} == {"frontend_client_ca", "internode"}
    assert {f.level for f in only_error} == {"error"}
    # errorWindow 0 means ten years: every finding is an error.
    assert {f.level for f in expiring_certificates(materials, now, 30 * DAY, 0)} == {"error"}
    # Both windows 0: Temporal does not check at all.
    assert expiring_certificates(materials, now, 0, 0) == []


def test_expiry_timestamps_and_check_logs(pki: Pki) -> None:
    now_dt = dt.datetime.now(dt.UTC)
    materials = _materials_expiring(pki, now_dt, leaf=20, ca=300, client=100)
    stamps = expiry_timestamps(materials)
    assert set(stamps) == {"frontend", "frontend_client_ca", "internode"}
    assert stamps["frontend"] == pytest.approx(now_dt.timestamp() + 20 * DAY, abs=1)
    with capture_logs() as logs:
        reloader = TLSReloader(
            TLSConfig(),
            dataclasses.replace(materials, frontend=None),
            logger=structlog.get_logger(),
        )
        findings = reloader.check_expiration(200 * DAY, 7 * DAY)
    assert [f.label for f in findings] == ["internode"]
    assert [(e["event"], e["log_level"], e["cert"]) for e in logs] == [
        ("certificate_expiring", "warning", "internode")
    ]


def test_frontend_credentials_fetcher_hands_out_each_update_once(pki: Pki) -> None:
    material = load_server_material(pki.server_cfg(), FRONTEND)
    creds = FrontendCredentials(material)
    fetch = creds._fetch  # what grpc core calls per handshake
    assert fetch() is None
    creds.update(load_server_material(pki.server_cfg(), FRONTEND))
    assert fetch() is not None
    assert fetch() is None
    with pytest.raises(ValueError, match="requireClientAuth"):
        creds.update(load_server_material(pki.server_cfg(require_client_auth=False), FRONTEND))


def test_file_mode_does_not_matter_to_change_detection(pki: Pki) -> None:
    # Content, not mtime: touching a file without changing it is not a reload.
    cfg = TLSConfig(frontend=GroupTLSConfig(server=pki.server_cfg()))
    materials = load_tls_materials(cfg)
    assert materials.frontend is not None
    reloader = TLSReloader(cfg, materials, frontend=FrontendCredentials(materials.frontend))
    os.utime(cfg.frontend.server.cert_file, (1, 1))
    assert reloader.reload().changed == ()


async def test_app_reload_loop_reloads_every_refresh_interval(pki: Pki) -> None:
    # The App's loop is what `serve` runs (and what SIGHUP calls one step of).
    first = pki.ca.issue("temporal-auth-proxy", client=True)
    mount = SecretMount(
        pki.dir / "internode", {"tls.crt": first.cert_pem, "tls.key": first.key_pem}
    )
    group = _internode_cfg(pki, "temporal-frontend.test", mount)
    idle = _app(TLSConfig(internode=group))
    try:
        await asyncio.wait_for(idle._reload_loop(), timeout=1)  # refreshInterval 0: never reload
    finally:
        await idle.pool.close(0)

    app = _app(TLSConfig(internode=group, refresh_interval=0.02))
    first_channel = app.pool.channel
    task = asyncio.create_task(app._reload_loop())  # noqa: TID251 - the test owns and cancels it
    try:
        second = pki.ca.issue("temporal-auth-proxy-2", client=True)
        mount.update({"tls.crt": second.cert_pem, "tls.key": second.key_pem})
        async with asyncio.timeout(5):
            # The swap of the upstream channels is the last step of a reload.
            while app.pool.channel is first_channel:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app.pool.close(0)
    reloads = {
        result: app.registry.get_sample_value(
            "temporal_auth_proxy_tls_reload_total", {"result": result}
        )
        for result in ("success", "failure")
    }
    assert reloads == {"success": 1.0, "failure": 0.0}
    assert app.reloader.generation == 1
    assert app.reloader.internode_material is not None
    assert app.reloader.internode_material.serial == second.serial


def _app(tls: TLSConfig) -> App:
    raw = {
        "upstream": {"address": "127.0.0.1:7233"},
        "authorization": {"claimMapper": "noop", "authorizer": "noop"},
    }
    cfg = dataclasses.replace(parse_config(raw, {}), tls=tls)
    return build(cfg, logger=structlog.get_logger())


def test_peer_identity_falls_back_to_grpc_fields() -> None:
    # A certificate grpc accepted but cryptography cannot parse: use what grpc extracted.
    context = {
        "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
        "x509_subject": [b"CN=legacy,O=x"],
        "x509_common_name": [b"legacy"],
        "peer_dns": [b"legacy.test"],
        "peer_uri": [b"spiffe://td/legacy"],
    }
    identity = peer_identity(context)
    assert identity is not None
    assert (identity.subject, identity.common_name) == ("CN=legacy,O=x", "legacy")
    assert identity.dns_names == ("legacy.test",) and identity.spiffe_id == "spiffe://td/legacy"
