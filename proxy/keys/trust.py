"""The private CA a key source's https fetches trust (`rootCaFiles` / `rootCaData`).

An in-cluster identity provider (Keycloak behind cert-manager, say) usually has a certificate
from a private CA. When a source names its CAs, those CAs replace the system roots for that
source only, as Temporal's `rootCaFiles` do for a TLS client; hostname verification stays on.
The files are re-read before every fetch and the context is rebuilt only when their bytes
changed, so a rotated CA (a Kubernetes secret swap) is used from the next refresh on; a rotated
file that does not parse keeps the previous CAs (build, validate, swap).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Sequence

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.config.files import read_file
from proxy.errors import ConfigError
from proxy.interfaces import Logger


def _certificates(data: bytes, path: str) -> list[x509.Certificate]:
    if not data.strip():
        raise ConfigError(path, "no PEM certificate found (empty)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(path, f"not a PEM certificate: {exc}") from None
    if not certs:
        raise ConfigError(path, "no PEM certificate found")
    return certs


class CaTrust:
    """The CAs one key source trusts; `context()` gives the SSLContext for its next fetch.

    Owned by one source, whose refresh lock serializes the calls. `files` and `data` are the
    config values (paths; decoded PEM text), `path` the config key path they sit under.
    """

    def __init__(
        self,
        *,
        files: Sequence[str] = (),
        data: Sequence[str] = (),
        path: str,
        logger: Logger | None = None,
    ) -> None:
        if files and data:
            raise ConfigError(
                f"{path}.rootCaFiles", "cannot specify both rootCaFiles and rootCaData"
            )
        if not files and not data:
            raise ConfigError(f"{path}.rootCaFiles", "no CA configured")
        self._files = tuple(files)
        self._data = tuple(d.encode("utf-8") for d in data)
        self._path = path
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._digest = ""
        self._context: ssl.SSLContext | None = None
        self.context()  # validate now: a bad file fails startup with its key path

    def _sources(self) -> list[tuple[str, bytes]]:
        if self._files:
            return [
                (
                    f"{self._path}.rootCaFiles[{i}]",
                    read_file(name, f"{self._path}.rootCaFiles[{i}]"),
                )
                for i, name in enumerate(self._files)
            ]
        return [(f"{self._path}.rootCaData[{i}]", raw) for i, raw in enumerate(self._data)]

    def _build(self) -> ssl.SSLContext:
        sources = self._sources()
        digest = hashlib.sha256(b"".join(raw + b"\0" for _, raw in sources)).hexdigest()
        if self._context is not None and digest == self._digest:
            return self._context
        pem = b"".join(
            cert.public_bytes(serialization.Encoding.PEM)
            for where, raw in sources
            for cert in _certificates(raw, where)
        )
        # Given CAs, create_default_context loads no system roots: the private CA replaces
        # them for this source. It verifies the chain and the hostname, TLS 1.2 at least.
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cadata=pem.decode("ascii")
            )
        except ssl.SSLError as exc:  # parsed by cryptography, refused by OpenSSL
            raise ConfigError(sources[0][0], f"OpenSSL refused the CA: {exc.reason}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context, self._digest = context, digest
        return context

    def context(self) -> ssl.SSLContext:
        """The context for the next fetch, rebuilt when the CA files changed.

        Blocking (reads files): call it in the fetch thread. Raises ConfigError only while no
        context was ever built; later a bad file keeps the previous CAs and logs a warning."""
        if self._context is None:
            return self._build()
        try:
            return self._build()
        except ConfigError as exc:
            self._log.warning("key_source_ca_reload_failed", path=exc.path, error=exc.message)
            return self._context
