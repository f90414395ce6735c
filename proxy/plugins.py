"""Load `module.path:Factory` plugins and check them against a protocol at startup."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Protocol

from proxy.errors import ConfigError

_SPEC = re.compile(
    r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
)
# Attributes every class has; never protocol members.
_IGNORED = frozenset({"__annotations__", "__dict__", "__doc__", "__module__", "__weakref__"})


def protocol_members(protocol: type) -> dict[str, bool]:
    """Public member names of a protocol, each mapped to whether it is an async method."""
    members: dict[str, bool] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        for name in (*vars(cls), *getattr(cls, "__annotations__", {})):
            if name.startswith("_") or name in _IGNORED:
                continue
            members[name] = inspect.iscoroutinefunction(vars(cls).get(name))
    return members


def _is_async_callable(value: object) -> bool:
    return inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 (an object with an async __call__)
    )


def _accepted_kwargs(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: call it bare
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return {k: v for k, v in kwargs.items() if k in names}


def load_plugin(spec: str, protocol: type, key_path: str, **kwargs: Any) -> object:
    """Import `module.path:Factory`, call it with the kwargs it accepts, check the result.

    The result must satisfy the runtime-checkable `protocol`, and every method that is async in
    the protocol must be a coroutine function on the result. Any failure: ConfigError(key_path).
    """
    if not getattr(protocol, "_is_runtime_protocol", False):
        raise TypeError(f"{protocol!r} is not a runtime_checkable Protocol")
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(key_path, f"{spec!r} is not of the form module.path:Factory")
    module_name, attr_path = match["module"], match["attr"]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise ConfigError(
            key_path, f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    factory: Any = module
    for part in attr_path.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError as exc:
            raise ConfigError(
                key_path, f"module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(factory):
        raise ConfigError(key_path, f"{spec!r} is not callable")
    try:
        plugin = factory(**_accepted_kwargs(factory, kwargs))
    except Exception as exc:
        raise ConfigError(key_path, f"factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if inspect.isawaitable(plugin):
        close = getattr(plugin, "close", None)
        if callable(close):
            close()  # no "never awaited" warning
        raise ConfigError(
            key_path, f"factory {spec!r} must be synchronous, it returned an awaitable"
        )
    name = protocol.__name__
    if not isinstance(plugin, protocol):
        missing = [m for m in protocol_members(protocol) if not hasattr(plugin, m)]
        raise ConfigError(
            key_path,
            f"{spec!r} returned {type(plugin).__name__}, which does not implement {name}"
            + (f" (missing: {', '.join(missing)})" if missing else ""),
        )
    for member, is_async in protocol_members(protocol).items():
        if is_async and not _is_async_callable(getattr(plugin, member)):
            raise ConfigError(
                key_path,
                f"{type(plugin).__name__}.{member} must be an async method ({name} requires it)",
            )
    return plugin
