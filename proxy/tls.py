"""TLS: load and validate material, server/channel credentials, reload, peer identity, expiry.

Semantics follow Temporal's `global.tls` (spec/temporal-semantics.md 6.1), with these
deliberate, fail-closed differences (README):

- a server certificate without a key, or any other server TLS setting without a key, is an
  error (Temporal silently serves plaintext);
- `requireClientAuth: true` without client CAs is an error (Go would trust the system roots);
- `disableHostVerification: true` is an error: grpcio has no way to skip verification;
- `serverName` on an internode client without TLS enabled is an error.

Material is validated here in Python because grpc core silently keeps its old configuration
when handed a bad one (environment-facts 2b): the proxy would otherwise never know.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from proxy.config import ClientTLSConfig, ServerTLSConfig, TLSConfig
from proxy.errors import ConfigError
from proxy.model import PeerIdentity

# Labels of the certificate expiry gauge (DESIGN: closed set).
FRONTEND = "frontend"
FRONTEND_CLIENT_CA = "frontend_client_ca"
INTERNODE = "internode"
INTERNODE_ROOT_CA = "internode_root_ca"

# Temporal treats errorWindow 0 as "now + 10 years": every finding is an error.
_TEN_YEARS = 10 * 365.25 * 24 * 3600.0


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CertSummary:
    """What expiry checks and metrics need to know about one loaded certificate."""

    label: str
    subject: str
    serial: int
    not_after: float
    is_ca: bool
    dns_names: tuple[str, ...]
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerMaterial:
    """Validated material for the frontend listener. PEM bytes are normalized (re-encoded)."""

    cert_chain_pem: bytes
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None
    require_client_auth: bool
    not_after: float
    serial: int
    client_ca_not_afters: tuple[float, ...]
    certificates: tuple[CertSummary, ...]
    digest: str  # of the raw inputs: a reload compares this before parsing anything


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientMaterial:
    """Validated material for the upstream (internode) channel.

    `root_ca_pem` None means the system roots. The client certificate is optional.
    """

    root_ca_pem: bytes | None
    cert_chain_pem: bytes | None
    key_pem: bytes | None = field(repr=False)
    server_name: str
    not_after: float | None
    serial: int | None
    root_ca_not_afters: tuple[float, ...]
    certificates: tuple[CertSummary, ...]
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSMaterials:
    """None means plaintext for that leg."""

    frontend: ServerMaterial | None = None
    internode: ClientMaterial | None = None

    def certificates(self) -> tuple[CertSummary, ...]:
        found: tuple[CertSummary, ...] = ()
        if self.frontend is not None:
            found += self.frontend.certificates
        if self.internode is not None:
            found += self.internode.certificates
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiryFinding:
    label: str
    not_after: float
    level: Literal["warning", "error"]
    expired: bool
    subject: str
    serial: int
    is_ca: bool
    dns_names: tuple[str, ...]
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    success: bool
    changed: tuple[str, ...] = ()  # groups swapped in: "frontend", "internode"
    failed: tuple[str, ...] = ()  # key paths of the errors, in order
    errors: tuple[str, ...] = ()
    generation: int = 0  # internode generation after this reload


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    path: str  # config key path, e.g. tls.frontend.server.certFile or ...clientCaFiles[0]
    data: bytes


def _read_file(name: str, path: str) -> bytes:
    try:
        # read_bytes follows symlinks, so a Kubernetes `..data` swap is seen as new content.
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, f"file not found: {name}") from None
    except IsADirectoryError:
        raise ConfigError(path, f"is a directory, not a file: {name}") from None
    except PermissionError:
        raise ConfigError(path, f"permission denied reading {name}") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read {name}: {exc.strerror or exc}") from None


def _read_single(
    prefix: str, file_key: str, file_name: str, data_key: str, data: str
) -> _Source | None:
    if file_name and data:
        raise ConfigError(f"{prefix}.{file_key}", f"{file_key} and {data_key} are both set")
    if file_name:
        return _Source(f"{prefix}.{file_key}", _read_file(file_name, f"{prefix}.{file_key}"))
    if data:
        return _Source(f"{prefix}.{data_key}", data.encode("utf-8"))
    return None


def _read_list(
    prefix: str, file_key: str, files: Sequence[str], data_key: str, data: Sequence[str]
) -> tuple[_Source, ...]:
    if files and data:
        raise ConfigError(f"{prefix}.{file_key}", f"{file_key} and {data_key} are both set")
    key, values = (file_key, files) if files else (data_key, data)
    sources = []
    for index, value in enumerate(values):
        path = f"{prefix}.{key}[{index}]"
        if not value.strip():
            raise ConfigError(path, "CA cannot be empty string")
        raw = _read_file(value, path) if files else value.encode("utf-8")
        sources.append(_Source(path, raw))
    return tuple(sources)


def _digest(sources: Sequence[_Source | None], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for source in sources:
        if source is None:
            h.update(b"\0none")
            continue
        h.update(source.path.encode())
        h.update(len(source.data).to_bytes(8, "big"))
        h.update(source.data)
    return h.hexdigest()


# --- parsing ---------------------------------------------------------------------------------


def _parse_certs(source: _Source) -> list[x509.Certificate]:
    if not source.data.strip():
        raise ConfigError(source.path, "no PEM certificate found (empty)")
    try:
        certs = x509.load_pem_x509_certificates(source.data)
    except ValueError as exc:
        raise ConfigError(source.path, f"not a PEM certificate: {exc}") from None
    if not certs:
        raise ConfigError(source.path, "no PEM certificate found")
    return certs


def _parse_key(source: _Source) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(source.data, password=None)
    except TypeError:
        raise ConfigError(source.path, "encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        # The library's message can quote the input; keep key bytes out of every message.
        raise ConfigError(source.path, "not a PEM private key") from None


def _spki(key: Any) -> bytes:
    data: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _summary(label: str, cert: x509.Certificate) -> CertSummary:
    return CertSummary(
        label=label,
        subject=cert.subject.rfc4514_string(),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc.timestamp(),
        is_ca=_is_ca(cert),
        dns_names=_dns_names(cert),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _load_pair(cert: _Source, key: _Source) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    chain = _parse_certs(cert)
    private_key = _parse_key(key)
    if _spki(chain[0].public_key()) != _spki(private_key.public_key()):
        raise ConfigError(
            key.path,
            f"private key does not match the certificate in {cert.path.rsplit('.', 1)[-1]}",
        )
    return chain, private_key


def _load_cas(sources: Sequence[_Source]) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for source in sources:
        cas.extend(_parse_certs(source))
    return cas


def _read_pair(cfg: ServerTLSConfig, prefix: str) -> tuple[_Source | None, _Source | None]:
    cert = _read_single(prefix, "certFile", cfg.cert_file, "certData", cfg.cert_data)
    key = _read_single(prefix, "keyFile", cfg.key_file, "keyData", cfg.key_data)
    if cert is not None and key is None:
        raise ConfigError(
            f"{prefix}.keyFile",
            "a certificate is set but no keyFile/keyData: Temporal would silently serve "
            "plaintext here, the proxy refuses",
        )
    if key is not None and cert is None:
        raise ConfigError(f"{prefix}.certFile", "a private key is set but no certFile/certData")
    return cert, key


# --- server (frontend) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ServerSources:
    cert: _Source
    key: _Source
    cas: tuple[_Source, ...]
    digest: str


def _read_server(cfg: ServerTLSConfig, path: str) -> _ServerSources:
    cert, key = _read_pair(cfg, path)
    if cert is None or key is None:
        raise ConfigError(f"{path}.keyFile", "server TLS needs a certificate and a private key")
    cas = _read_list(path, "clientCaFiles", cfg.client_ca_files, "clientCaData", cfg.client_ca_data)
    if cfg.require_client_auth and not cas:
        raise ConfigError(
            f"{path}.clientCaFiles",
            "requireClientAuth is true but no clientCaFiles/clientCaData are set "
            "(the proxy does not fall back to the system roots for client certificates)",
        )
    digest = _digest((cert, key, *cas), extra=f"require={cfg.require_client_auth}")
    return _ServerSources(cert, key, cas, digest)


def _build_server(sources: _ServerSources, require_client_auth: bool) -> ServerMaterial:
    chain, key = _load_pair(sources.cert, sources.key)
    cas = _load_cas(sources.cas)
    leaf = chain[0]
    return ServerMaterial(
        cert_chain_pem=_pem(chain),
        key_pem=_key_pem(key),
        client_ca_pem=_pem(cas) if cas else None,
        require_client_auth=require_client_auth,
        not_after=leaf.not_valid_after_utc.timestamp(),
        serial=leaf.serial_number,
        client_ca_not_afters=tuple(ca.not_valid_after_utc.timestamp() for ca in cas),
        certificates=(
            _summary(FRONTEND, leaf),
            *(_summary(FRONTEND_CLIENT_CA, ca) for ca in cas),
        ),
        digest=sources.digest,
    )


def load_server_material(cfg: ServerTLSConfig, path: str) -> ServerMaterial:
    """Read and validate a ServerTLS block; `path` is its key path (`tls.frontend.server`)."""
    return _build_server(_read_server(cfg, path), cfg.require_client_auth)


def server_tls_configured(cfg: ServerTLSConfig) -> bool:
    """Any server TLS setting at all (load_server_material then insists on cert and key)."""
    return bool(
        cfg.cert_file
        or cfg.cert_data
        or cfg.key_file
        or cfg.key_data
        or cfg.client_ca_files
        or cfg.client_ca_data
        or cfg.require_client_auth
    )


# --- client (internode) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ClientSources:
    cert: _Source | None
    key: _Source | None
    roots: tuple[_Source, ...]
    digest: str


def _read_client(
    client: ClientTLSConfig, server: ServerTLSConfig | None, path: str
) -> _ClientSources:
    if client.disable_host_verification:
        raise ConfigError(
            f"{path}.client.disableHostVerification",
            "grpcio cannot skip server certificate verification; trust the upstream's CA "
            "with rootCaFiles/rootCaData instead (the proxy fails closed here)",
        )
    roots = _read_list(
        f"{path}.client", "rootCaFiles", client.root_ca_files, "rootCaData", client.root_ca_data
    )
    cert, key = _read_pair(server, f"{path}.server") if server is not None else (None, None)
    digest = _digest((cert, key, *roots), extra=f"name={client.server_name}")
    return _ClientSources(cert, key, roots, digest)


def _build_client(sources: _ClientSources, server_name: str) -> ClientMaterial:
    roots = _load_cas(sources.roots)
    summaries = [_summary(INTERNODE_ROOT_CA, ca) for ca in roots]
    chain_pem = key_pem = None
    not_after: float | None = None
    serial: int | None = None
    if sources.cert is not None and sources.key is not None:
        chain, key = _load_pair(sources.cert, sources.key)
        chain_pem, key_pem = _pem(chain), _key_pem(key)
        not_after = chain[0].not_valid_after_utc.timestamp()
        serial = chain[0].serial_number
        summaries.insert(0, _summary(INTERNODE, chain[0]))
    return ClientMaterial(
        root_ca_pem=_pem(roots) if roots else None,
        cert_chain_pem=chain_pem,
        key_pem=key_pem,
        server_name=server_name,
        not_after=not_after,
        serial=serial,
        root_ca_not_afters=tuple(ca.not_valid_after_utc.timestamp() for ca in roots),
        certificates=tuple(summaries),
        digest=sources.digest,
    )


def load_client_material(
    client: ClientTLSConfig, server: ServerTLSConfig | None, path: str
) -> ClientMaterial:
    """Read and validate the upstream leg; `path` is the group's key path (`tls.internode`).

    `server` is the group's `server` block, which for the proxy holds the client certificate
    it presents upstream (its requireClientAuth and client CA keys do not apply and are ignored).
    """
    return _build_client(_read_client(client, server, path), client.server_name)


def load_tls_materials(cfg: TLSConfig, path: str = "tls") -> TLSMaterials:
    """Everything `serve` needs, validated; a ConfigError names the first bad key."""
    frontend = None
    if server_tls_configured(cfg.frontend.server):
        frontend = load_server_material(cfg.frontend.server, f"{path}.frontend.server")
    internode = None
    group = cfg.internode
    if group is not None:
        # Temporal: internode client TLS is on when the client block enables it or the group
        # has a server key (then TLS is used with the system roots).
        if group.client.enabled or server_tls_configured(group.server):
            internode = load_client_material(group.client, group.server, f"{path}.internode")
        elif group.client.server_name or group.client.disable_host_verification:
            raise ConfigError(
                f"{path}.internode.client.serverName",
                "set, but internode TLS is not enabled (set rootCaFiles/rootCaData or forceTLS)",
            )
    return TLSMaterials(frontend=frontend, internode=internode)


# --- credentials -----------------------------------------------------------------------------


def _server_certificate_configuration(material: ServerMaterial) -> Any:
    # Without requireClientAuth grpc does not request a client certificate at all (like
    # Temporal's NoClientCert), so the CAs would be unused; pass none.
    roots = material.client_ca_pem if material.require_client_auth else None
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_chain_pem)], root_certificates=roots
    )


class FrontendCredentials:
    """grpc server credentials whose certificate and client CAs can be swapped at runtime.

    grpc core asks `_fetch` on every new handshake, from one of its own threads; existing
    connections keep the material they were set up with.
    """

    def __init__(self, material: ServerMaterial) -> None:
        self._lock = threading.Lock()
        self._pending: Any = None
        self._material = material
        self.require_client_auth = material.require_client_auth
        self.credentials: grpc.ServerCredentials = grpc.dynamic_ssl_server_credentials(
            _server_certificate_configuration(material),
            self._fetch,
            require_client_authentication=material.require_client_auth,
        )

    @property
    def material(self) -> ServerMaterial:
        return self._material

    def update(self, material: ServerMaterial) -> None:
        """Serve `material` on new handshakes. It must already be validated."""
        if material.require_client_auth != self.require_client_auth:
            # Fixed when the credentials were created; a reload re-reads files, not config.
            raise ValueError("requireClientAuth cannot change on reload")
        config = _server_certificate_configuration(material)
        with self._lock:
            self._pending = config
            self._material = material

    def _fetch(self) -> Any:
        # Hot: runs per handshake on a grpc thread holding the GIL. Unlocked check first.
        if self._pending is None:
            return None
        with self._lock:
            config, self._pending = self._pending, None
        return config


def channel_credentials(material: ClientMaterial) -> tuple[Any, list[tuple[str, str]]]:
    """Credentials and options for the upstream channel (rebuild the channel to rotate)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.root_ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_chain_pem,
    )
    options: list[tuple[str, str]] = []
    if material.server_name:
        # Used for SNI and for verifying the upstream certificate instead of the dial host.
        options.append(("grpc.ssl_target_name_override", material.server_name))
    return credentials, options


# --- reload ----------------------------------------------------------------------------------


class _Sources(Protocol):
    @property
    def digest(self) -> str: ...


_SourcesT = TypeVar("_SourcesT", bound=_Sources)
_MaterialT = TypeVar("_MaterialT")


def _rebuild_if_changed(
    read: Callable[[], _SourcesT],
    build: Callable[[_SourcesT], _MaterialT],
    loaded_digest: str,
) -> _MaterialT | None:
    """New validated material when the inputs changed, None when they did not."""
    sources = read()
    if sources.digest == loaded_digest:
        return None
    try:
        return build(sources)
    except ConfigError:
        # Certificate and key are read one after the other; a secret update landing in
        # between looks like a mismatch. Read once more before calling it a failure.
        again = read()
        if again.digest == sources.digest:
            raise
        if again.digest == loaded_digest:
            return None
        return build(again)


def expiry_timestamps(materials: TLSMaterials) -> dict[str, float]:
    """not_after per gauge label; for a CA bundle the earliest one."""
    out: dict[str, float] = {}
    for cert in materials.certificates():
        current = out.get(cert.label)
        out[cert.label] = cert.not_after if current is None else min(current, cert.not_after)
    return out


class TLSReloader:
    """Re-reads the frontend and internode files; build, validate, swap; keep old on failure.

    Frontend changes reach new handshakes through `FrontendCredentials`. Internode changes are
    exposed as `internode_material` and a bumped `generation`: grpcio channel credentials
    cannot be swapped, so the forwarding layer rebuilds its channel when the generation moves.
    """

    def __init__(
        self,
        cfg: TLSConfig,
        materials: TLSMaterials,
        *,
        frontend: FrontendCredentials | None = None,
        on_reload: Callable[[bool], None] | None = None,
        on_material: Callable[[Mapping[str, float]], None] | None = None,
        logger: Any = None,
        path: str = "tls",
    ) -> None:
        if (materials.frontend is None) != (frontend is None):
            raise ValueError("frontend credentials and frontend material go together")
        self._cfg = cfg
        self._materials = materials
        self._frontend = frontend
        self._on_reload = on_reload
        self._on_material = on_material
        self._log = logger if logger is not None else structlog.get_logger("proxy.tls")
        self._path = path
        self._generation = 0
        self._lock = threading.Lock()  # reload() may run in a worker thread
        self._publish()

    @property
    def materials(self) -> TLSMaterials:
        return self._materials

    @property
    def internode_material(self) -> ClientMaterial | None:
        return self._materials.internode

    @property
    def generation(self) -> int:
        return self._generation

    def reload(self) -> ReloadResult:
        """Re-read every file; swap what changed and validates. Never raises ConfigError.

        `on_reload` is called when something changed or failed, not on a no-op.
        """
        with self._lock:
            result = self._reload()
        if result.changed or result.failed:
            if self._on_reload is not None:
                self._on_reload(result.success)
            if result.changed:
                self._publish()
        return result

    def _reload(self) -> ReloadResult:
        changed: list[str] = []
        failed: list[ConfigError] = []
        frontend = self._materials.frontend
        internode = self._materials.internode

        if frontend is not None and self._frontend is not None:
            server_cfg = self._cfg.frontend.server
            server_path = f"{self._path}.frontend.server"
            try:
                new = _rebuild_if_changed(
                    lambda: _read_server(server_cfg, server_path),
                    lambda src: _build_server(src, server_cfg.require_client_auth),
                    frontend.digest,
                )
                if new is not None:
                    self._frontend.update(new)
                    frontend = new
                    changed.append("frontend")
            except ConfigError as exc:
                failed.append(exc)

        group = self._cfg.internode
        if internode is not None and group is not None:
            client_cfg, client_path = group, f"{self._path}.internode"
            try:
                new_client = _rebuild_if_changed(
                    lambda: _read_client(client_cfg.client, client_cfg.server, client_path),
                    lambda src: _build_client(src, client_cfg.client.server_name),
                    internode.digest,
                )
                if new_client is not None:
                    internode = new_client
                    changed.append("internode")
            except ConfigError as exc:
                failed.append(exc)

        if changed:
            if "internode" in changed:
                self._generation += 1
            # One reference swap: readers see either the old or the new pair, never a mix.
            self._materials = TLSMaterials(frontend=frontend, internode=internode)
            self._log.info(
                "tls_reloaded",
                changed=changed,
                frontend_serial=_hex(frontend.serial if frontend else None),
                internode_serial=_hex(internode.serial if internode else None),
                generation=self._generation,
            )
        for error in failed:
            self._log.error("tls_reload_failed", path=error.path, error=error.message)
        return ReloadResult(
            success=not failed,
            changed=tuple(changed),
            failed=tuple(error.path for error in failed),
            errors=tuple(str(error) for error in failed),
            generation=self._generation,
        )

    def _publish(self) -> None:
        if self._on_material is not None:
            self._on_material(expiry_timestamps(self._materials))

    def check_expiration(
        self, warning_window: float, error_window: float, now: float | None = None
    ) -> list[ExpiryFinding]:
        """Temporal's expiration check over the current material; logs `certificate_expiring`."""
        findings = expiring_certificates(
            self._materials, time.time() if now is None else now, warning_window, error_window
        )
        for finding in findings:
            log = self._log.error if finding.level == "error" else self._log.warning
            log(
                "certificate_expiring",
                cert=finding.label,
                expired=finding.expired,
                not_after=finding.not_after,
                subject=finding.subject,
                serial=_hex(finding.serial),
                is_ca=finding.is_ca,
                dns_names=list(finding.dns_names),
                sha256=finding.sha256,
            )
        return findings

    async def run(self) -> None:
        """Reload every `refreshInterval` until cancelled (0: return at once, like Temporal)."""
        interval = self._cfg.refresh_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            # File reads and parsing stay off the event loop.
            await asyncio.to_thread(self.reload)

    async def run_expiration_checks(self) -> None:
        """Check every `expirationChecks.checkInterval` (0: disabled), first check at once."""
        checks = self._cfg.expiration_checks
        if checks.check_interval <= 0:
            return
        while True:
            self.check_expiration(checks.warning_window, checks.error_window)
            await asyncio.sleep(checks.check_interval)


def _hex(serial: int | None) -> str | None:
    return None if serial is None else format(serial, "x")


# --- expiry ----------------------------------------------------------------------------------


def expiring_certificates(
    materials: TLSMaterials, now: float, warning_window: float, error_window: float
) -> list[ExpiryFinding]:
    """Temporal's rules: the window is warningWindow, or errorWindow when that is 0 (both 0:
    no check). A certificate ending before now+window is reported; it is an error when expired
    or ending before now+errorWindow (errorWindow 0: always an error), else a warning.
    """
    window = warning_window or error_window
    if window <= 0:
        return []
    error_until = now + (error_window if error_window > 0 else _TEN_YEARS)
    findings = []
    for cert in materials.certificates():
        if cert.not_after >= now + window:
            continue
        expired = cert.not_after < now
        findings.append(
            ExpiryFinding(
                label=cert.label,
                not_after=cert.not_after,
                level="error" if expired or cert.not_after < error_until else "warning",
                expired=expired,
                subject=cert.subject,
                serial=cert.serial,
                is_ca=cert.is_ca,
                dns_names=cert.dns_names,
                sha256=cert.sha256,
            )
        )
    return findings


# --- peer identity ---------------------------------------------------------------------------


def _first(values: Sequence[bytes] | None) -> str:
    return values[0].decode("utf-8", "replace") if values else ""


def _spiffe_id(uris: Sequence[str]) -> str:
    spiffe = [uri for uri in uris if uri[:9].lower() == "spiffe://"]
    # An X.509-SVID carries exactly one SPIFFE ID; more than one is ambiguous, so none.
    return spiffe[0] if len(spiffe) == 1 else ""


def subject_rdns(name: x509.Name) -> tuple[tuple[tuple[str, str | None], ...], ...]:
    """The subject as parsed attributes, in RFC 4514 order (the reverse of the DER order)."""
    return tuple(
        tuple(
            (attr.oid.dotted_string, attr.value if isinstance(attr.value, str) else None)
            for attr in rdn
        )
        for rdn in reversed(name.rdns)
    )


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> PeerIdentity | None:
    # Memoized by the PEM bytes: a connection presents the same certificate on every call.
    # A pure function of its argument, so this cache is safe to share process-wide.
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, uris = (), ()
    except ValueError:
        return None
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    units = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = any(u in _CLIENT_USAGES for u in usages)
    except x509.ExtensionNotFound:
        client_auth = True  # no EKU extension: any usage (Go's rule)
    except ValueError:
        return None
    return PeerIdentity(
        subject=cert.subject.rfc4514_string(),
        subject_rdns=subject_rdns(cert.subject),
        common_name=str(common_names[0].value) if common_names else "",
        organizational_units=tuple(str(unit.value) for unit in units),
        dns_names=dns,
        uris=uris,
        spiffe_id=_spiffe_id(uris),
        client_auth=client_auth,
    )


_CLIENT_USAGES = frozenset(
    {x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
)


def peer_identity(auth_context: Mapping[str, Sequence[bytes]]) -> PeerIdentity | None:
    """The verified client certificate from grpc's `context.auth_context()`, or None."""
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        return None
    identity = identity_from_pem(pems[0])
    if identity is not None:
        return identity
    # grpc accepted a certificate cryptography cannot parse: fall back to what grpc extracted.
    uris = tuple(value.decode("utf-8", "replace") for value in auth_context.get("peer_uri", ()))
    return PeerIdentity(
        subject=_first(auth_context.get("x509_subject")),
        common_name=_first(auth_context.get("x509_common_name")),
        dns_names=tuple(v.decode("utf-8", "replace") for v in auth_context.get("peer_dns", ())),
        uris=uris,
        spiffe_id=_spiffe_id(uris),
        client_auth=False,  # its usage cannot be checked: fail closed
    )
