"""TLS credentials for grpc: the frontend's swappable server credentials, the upstream channel's.

The only part of `proxy.tls` that imports grpc. Material arrives validated (proxy.tls.material).
"""

from __future__ import annotations

import threading
from typing import Any

import grpc

from proxy.tls.material import ClientMaterial, ServerMaterial


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
