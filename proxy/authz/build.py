"""Config -> the authorizer: the one construction switch for `authorization.authorizer`."""

from __future__ import annotations

from proxy import methods
from proxy.authz.default import DefaultAuthorizer, NoopAuthorizer
from proxy.config import Config
from proxy.interfaces import Authorizer
from proxy.plugins import load_plugin


def build_authorizer(cfg: Config) -> Authorizer:
    """The authorizer `authorization.authorizer` names (config normalized the name).

    A built-in authorizer is its name in config's `AUTHORIZERS`, one branch here and its module
    beside this one."""
    name = cfg.authorization.authorizer
    if name == "default":
        return DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS)
    if name == "noop":
        return NoopAuthorizer()
    # Policy engines (authz/cedar.py next) get their branch here, before the plugin fallback.
    authorizer = load_plugin(name, Authorizer, "authorization.authorizer")
    return authorizer  # type: ignore[return-value]  # load_plugin checked the protocol
