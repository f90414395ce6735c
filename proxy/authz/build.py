"""Config -> the authorizer: the one construction switch for `authorization.authorizer`."""

from __future__ import annotations

from collections.abc import Callable

from proxy import methods
from proxy.authz.default import DefaultAuthorizer, NoopAuthorizer
from proxy.authz.policy_build import build_cedar_authorizer
from proxy.config.schema import Config
from proxy.interfaces import Authorizer
from proxy.model import Result
from proxy.plugins import load_plugin


def build_authorizer(cfg: Config, *, observe: Callable[[Result], None] | None = None) -> Authorizer:
    """The authorizer `authorization.authorizer` names (config normalized the name).

    A built-in authorizer is its name in config's `AUTHORIZERS`, one branch here and its module
    beside this one."""
    name = cfg.authorization.authorizer
    if name == "default":
        return DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS)
    if name == "noop":
        return NoopAuthorizer()
    if name == "cedar":
        return build_cedar_authorizer(
            cfg,
            # With the codec's rows: its operations need reader/writer, as without Cedar.
            default=DefaultAuthorizer(methods.lookup_with_codec, methods.HEALTH_CHECK_APIS),
            observe=observe,
        )
    authorizer = load_plugin(name, Authorizer, "authorization.authorizer")
    return authorizer  # type: ignore[return-value]  # load_plugin checked the protocol
