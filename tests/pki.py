"""Test helpers around proxy.dev.pki: Kubernetes-style secret mounts and a raw TLS probe."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509


class SecretMount:
    """A directory laid out like a Kubernetes secret volume.

    dir/..<version>/<file> holds the data, dir/..data -> ..<version>, dir/<file> -> ..data/<file>.
    `update` writes a new version and repoints `..data` with one atomic rename, as the kubelet
    does; the visible file paths never change.
    """

    def __init__(self, directory: Path, files: Mapping[str, bytes]) -> None:
        self.directory = directory
        self._version = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._write_version(files)
        os.symlink(self._current, directory / "..data")
        for name in files:
            os.symlink(Path("..data") / name, directory / name)

    @property
    def _current(self) -> str:
        return f"..v{self._version}"

    def _write_version(self, files: Mapping[str, bytes]) -> None:
        self._version += 1
        version_dir = self.directory / self._current
        version_dir.mkdir()
        for name, data in files.items():
            (version_dir / name).write_bytes(data)

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def update(self, files: Mapping[str, bytes]) -> None:
        self._write_version(files)
        tmp = self.directory / "..data_tmp"
        os.symlink(self._current, tmp)
        os.replace(tmp, self.directory / "..data")


def served_certificate(
    port: int,
    *,
    ca_pem: bytes,
    client_cert: str | None = None,
    client_key: str | None = None,
    server_hostname: str = "localhost",
) -> x509.Certificate:
    """Open a fresh TLS connection (ALPN h2) to 127.0.0.1:port; return the server's leaf."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem.decode())
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
