"""YAML -> frozen config objects. Every error names its key path.

`tls` and `authorization` take exactly the keys of Temporal Server's `global.tls` and
`global.authorization`, so an operator can paste them from a Temporal config.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTLSConfig:
    """Temporal's ServerTLS. `*_data` hold the decoded PEM text (config carries base64 of PEM)."""

    cert_file: str = ""
    key_file: str = ""
    cert_data: str = ""
    key_data: str = ""
    client_ca_files: tuple[str, ...] = ()
    client_ca_data: tuple[str, ...] = ()
    require_client_auth: bool = False

    @property
    def enabled(self) -> bool:
        # Temporal: server TLS is on iff a key is configured.
        return bool(self.key_file or self.key_data)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTLSConfig:
    server_name: str = ""
    disable_host_verification: bool = False
    root_ca_files: tuple[str, ...] = ()
    root_ca_data: tuple[str, ...] = ()
    force_tls: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.root_ca_files or self.root_ca_data or self.force_tls)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupTLSConfig:
    server: ServerTLSConfig = field(default_factory=ServerTLSConfig)
    client: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpirationChecksConfig:
    warning_window: float = 0.0  # seconds
    error_window: float = 0.0
    check_interval: float = 0.0  # 0 = disabled


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    frontend: GroupTLSConfig = field(default_factory=GroupTLSConfig)
    internode: GroupTLSConfig | None = None  # None: the upstream leg is plaintext
    refresh_interval: float = 0.0  # seconds; 0 = never
    expiration_checks: ExpirationChecksConfig = field(default_factory=ExpirationChecksConfig)
