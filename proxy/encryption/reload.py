"""SIGHUP for payload keys: re-read the config's `encryption` and codec keys, build, swap."""

from __future__ import annotations

import asyncio
from dataclasses import fields, replace

from proxy.codec.payload import PayloadCodec
from proxy.codec.reload import ReloadableCodec
from proxy.config.parse import load_config
from proxy.config.schema import Config
from proxy.encryption.service import PayloadEncryption
from proxy.errors import ConfigError
from proxy.interfaces import Logger
from proxy.metrics import EncryptionMetrics


def restart_sections(running: Config, new: Config) -> list[str]:
    """Top-level sections of `new` that differ from what runs (SIGHUP does not apply them)."""
    return [f.name for f in fields(Config) if getattr(running, f.name) != getattr(new, f.name)]


async def reload_payload_keys(
    config_path: str,
    running: Config,
    *,
    encryption: PayloadEncryption,
    codec: ReloadableCodec | None,
    metrics: EncryptionMetrics | None,
    log: Logger,
) -> Config | None:
    """Apply the file's `encryption` and `codec.keys`/`encryptKeyId`/`namespaceKeys` to payload
    encryption and the Codec Server: both are built and validated before either is swapped.
    Returns the config now in force, or None when the file is refused (the old keys stay)."""
    try:
        new = await asyncio.to_thread(load_config, config_path)
        settings = await asyncio.to_thread(encryption.settings_for, new)
        fresh = (
            await asyncio.to_thread(PayloadCodec.from_config, new.codec)
            if codec is not None and new.codec.enabled
            else None
        )
    except ConfigError as exc:
        log.error("encryption_reload_failed", error=str(exc), path=exc.path)
        if metrics is not None:
            metrics.reload_total.labels(result="failure").inc()
        return None
    applied = replace(
        running,
        encryption=new.encryption,
        codec=replace(
            running.codec,
            keys=new.codec.keys,
            encrypt_key_id=new.codec.encrypt_key_id,
            namespace_keys=new.codec.namespace_keys,
        ),
    )
    restart = restart_sections(applied, new)
    if restart:
        log.warning("restart_required", sections=restart)
    encryption.swap(settings)
    if fresh is not None and codec is not None:
        codec.swap(fresh)
    if metrics is not None:
        metrics.reload_total.labels(result="success").inc()
    log.info(
        "encryption_reloaded",
        namespaces={ns: c.key_id for ns, c in sorted(new.encryption.namespaces.items())},
    )
    return applied
