"""TLS reload: re-read the files, rebuild what changed, swap one reference, keep old on failure.

Also runs Temporal's periodic expiration check over the current material. The periodic reload
itself is driven by the app (`App._reload_loop`, SIGHUP), which also rebuilds the upstream
channels when the internode generation moves.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog

from proxy.config.schema import TLSConfig
from proxy.errors import ConfigError
from proxy.interfaces import Logger
from proxy.tls.expiry import ExpiryFinding, expiring_certificates, expiry_timestamps
from proxy.tls.material import (
    ClientMaterial,
    TLSMaterials,
    build_client_material,
    build_server_material,
    read_client_sources,
    read_server_sources,
)

if TYPE_CHECKING:  # only the type: this module needs no grpc at import
    from proxy.tls.credentials import FrontendCredentials


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    success: bool
    changed: tuple[str, ...] = ()  # groups swapped in: "frontend", "internode"
    failed: tuple[str, ...] = ()  # key paths of the errors, in order
    errors: tuple[str, ...] = ()
    generation: int = 0  # internode generation after this reload


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
        logger: Logger | None = None,
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
                    lambda: read_server_sources(server_cfg, server_path),
                    lambda src: build_server_material(src, server_cfg.require_client_auth),
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
                    lambda: read_client_sources(client_cfg.client, client_cfg.server, client_path),
                    lambda src: build_client_material(src, client_cfg.client.server_name),
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
