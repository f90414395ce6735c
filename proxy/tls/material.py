"""TLS material: read, parse and validate certificate, key and CA inputs into frozen values.

Semantics follow Temporal's `global.tls` (spec/temporal-semantics.md 6.1), with these
deliberate, fail-closed differences (README):

- a server certificate without a key, or any other server TLS setting without a key, is an
  error (Temporal silently serves plaintext);
- `requireClientAuth: true` without client CAs is an error (Go would trust the system roots);
- `disableHostVerification: true` is an error: grpcio has no way to skip verification;
- `serverName` on an internode client without TLS enabled is an error.

Material is validated here in Python because grpc core silently keeps its old configuration
when handed a bad one (environment-facts 2b): the proxy would otherwise never know. Each value
carries a digest of its raw inputs, so a reload (proxy.tls.reload) can tell "unchanged" before
parsing anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from proxy.config.files import read_file
from proxy.config.schema import ClientTLSConfig, ServerTLSConfig, TLSConfig
from proxy.errors import ConfigError

# Labels of the certificate expiry gauge (DESIGN: closed set).
FRONTEND = "frontend"
FRONTEND_CLIENT_CA = "frontend_client_ca"
INTERNODE = "internode"
INTERNODE_ROOT_CA = "internode_root_ca"

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


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    path: str  # config key path, e.g. tls.frontend.server.certFile or ...clientCaFiles[0]
    data: bytes


def _read_single(
    prefix: str, file_key: str, file_name: str, data_key: str, data: str
) -> _Source | None:
    if file_name and data:
        raise ConfigError(f"{prefix}.{file_key}", f"{file_key} and {data_key} are both set")
    if file_name:
        return _Source(f"{prefix}.{file_key}", read_file(file_name, f"{prefix}.{file_key}"))
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
        raw = read_file(value, path) if files else value.encode("utf-8")
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
class ServerSources:
    """The frontend's raw inputs as read, not yet parsed; `digest` is what a reload compares."""

    cert: _Source
    key: _Source
    cas: tuple[_Source, ...]
    digest: str


def read_server_sources(cfg: ServerTLSConfig, path: str) -> ServerSources:
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
    return ServerSources(cert, key, cas, digest)


def build_server_material(sources: ServerSources, require_client_auth: bool) -> ServerMaterial:
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
    return build_server_material(read_server_sources(cfg, path), cfg.require_client_auth)


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
class ClientSources:
    """The internode leg's raw inputs as read, not yet parsed; `digest` as for ServerSources."""

    cert: _Source | None
    key: _Source | None
    roots: tuple[_Source, ...]
    digest: str


def read_client_sources(
    client: ClientTLSConfig, server: ServerTLSConfig | None, path: str
) -> ClientSources:
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
    return ClientSources(cert, key, roots, digest)


def build_client_material(sources: ClientSources, server_name: str) -> ClientMaterial:
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
    return build_client_material(read_client_sources(client, server, path), client.server_name)


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
