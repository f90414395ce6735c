"""load_plugin: import, call, and check `module.path:Factory` plugins against a protocol."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.interfaces import Authorizer, ClaimMapper, KeyProvider
from proxy.model import CallTarget, Decision
from proxy.plugins import load_plugin, protocol_members

_counter = itertools.count()

PLUGIN_SOURCE = """
from proxy.model import ALLOW, Claims, Role

class GoodAuthorizer:
    def __init__(self, logger=None):
        self.logger = logger
    async def authorize(self, claims, target):
        return ALLOW

class KwargsAuthorizer:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
    async def authorize(self, claims, target):
        return ALLOW

class SyncAuthorizer:
    def authorize(self, claims, target):
        return ALLOW

class NotAnAuthorizer:
    async def get_claims(self, auth_info):
        return Claims()

class CallableAuthorizer:
    class _Call:
        async def __call__(self, claims, target):
            return ALLOW
    authorize = _Call()

def make_authorizer():
    return GoodAuthorizer(logger="from-factory")

async def async_factory():
    return GoodAuthorizer()

def failing_factory():
    raise RuntimeError("boom")

class Keys:
    generation = 3
    def get_key(self, alg, kid):
        raise KeyError(kid)

class Namespace:
    Factory = GoodAuthorizer

NOT_CALLABLE = 5
"""


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"plugin_mod_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    (tmp_path / "broken_plugin_mod.py").write_text("raise ImportError('missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


async def test_good_factory_with_accepted_kwargs(plugin_module: str) -> None:
    plugin = load_plugin(
        f"{plugin_module}:GoodAuthorizer",
        Authorizer,
        "authorization.authorizer",
        logger="LOG",
        unused="ignored",
    )
    assert isinstance(plugin, Authorizer)
    assert plugin.logger == "LOG"  # type: ignore[attr-defined]
    result = await plugin.authorize(None, CallTarget(api_name="/x"))
    assert result.decision is Decision.ALLOW


def test_factory_function_and_var_kwargs(plugin_module: str) -> None:
    plugin = load_plugin(f"{plugin_module}:make_authorizer", Authorizer, "k")
    assert plugin.logger == "from-factory"  # type: ignore[attr-defined]
    plugin = load_plugin(f"{plugin_module}:KwargsAuthorizer", Authorizer, "k", a=1, b=2)
    assert plugin.kwargs == {"a": 1, "b": 2}  # type: ignore[attr-defined]


def test_dotted_attribute_and_async_callable_member(plugin_module: str) -> None:
    assert isinstance(
        load_plugin(f"{plugin_module}:Namespace.Factory", Authorizer, "k"), Authorizer
    )
    assert load_plugin(f"{plugin_module}:CallableAuthorizer", Authorizer, "k") is not None


def test_sync_protocol_members_need_not_be_async(plugin_module: str) -> None:
    keys = load_plugin(f"{plugin_module}:Keys", KeyProvider, "k")
    assert isinstance(keys, KeyProvider)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:Factory", "cannot import module 'no_such_module_xyz'"),
        ("broken_plugin_mod:Factory", "missing dependency"),
        ("{mod}:Missing", "has no attribute 'Missing'"),
        ("{mod}:NOT_CALLABLE", "is not callable"),
        ("{mod}:NotAnAuthorizer", "does not implement Authorizer (missing: authorize)"),
        ("{mod}:SyncAuthorizer", "SyncAuthorizer.authorize must be an async method"),
        ("{mod}:async_factory", "must be synchronous"),
        ("{mod}:failing_factory", "raised RuntimeError: boom"),
        ("{mod}", "is not of the form module.path:Factory"),
        ("{mod}:", "is not of the form"),
        (":Factory", "is not of the form"),
        ("a b:C", "is not of the form"),
    ],
)
def test_failures_are_config_errors(plugin_module: str, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_plugin(spec.format(mod=plugin_module), Authorizer, "authorization.authorizer")
    assert err.value.path == "authorization.authorizer"
    assert message in err.value.message
    assert str(err.value).startswith("authorization.authorizer: ")


def test_protocol_members() -> None:
    assert protocol_members(ClaimMapper) == {"get_claims": True}
    assert protocol_members(KeyProvider) == {"get_key": False, "generation": False}


def test_non_runtime_protocol_is_a_programming_error(plugin_module: str) -> None:
    with pytest.raises(TypeError):
        load_plugin(f"{plugin_module}:GoodAuthorizer", object, "k")
