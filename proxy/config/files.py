"""Read a file a config key names; every failure is a `ConfigError` naming that key path."""

from __future__ import annotations

from pathlib import Path

from proxy.errors import ConfigError


def read_file(name: str, path: str) -> bytes:
    """The bytes of `name` (config key `path`), read now.

    `read_bytes` follows symlinks, so a Kubernetes secret volume's `..data` swap is seen as new
    content on the next read.
    """
    try:
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, f"file not found: {name}") from None
    except IsADirectoryError:
        raise ConfigError(path, f"is a directory, not a file: {name}") from None
    except PermissionError:
        raise ConfigError(path, f"permission denied reading {name}") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read {name}: {exc.strerror or exc}") from None
