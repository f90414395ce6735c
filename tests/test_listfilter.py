"""Issue 8: `authorization.filterListNamespaces` (proxy/listfilter.py and the Gate's opt-in)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry
from temporalio.api.namespace.v1 import NamespaceConfig, NamespaceInfo
from temporalio.api.replication.v1 import NamespaceReplicationConfig
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceResponse,
    ListNamespacesRequest,
    ListNamespacesResponse,
)

from proxy import methods
from proxy.authz import DefaultAuthorizer
from proxy.listfilter import (
    LIST_NAMESPACES,
    can_list_some,
    filter_namespaces,
    namespace_name,
    readable_by,
)
from proxy.metrics import ProxyMetrics
from proxy.model import AuthInfo, Claims, Decision, MethodInfo, Reason, Role
from proxy.pipeline import Gate, Mode
from proxy.protowalk import iter_fields

R, W, A, WK = Role.READER, Role.WRITER, Role.ADMIN, Role.WORKER


def entry(
    name: str, *, description: str = "", retention_days: int = 3
) -> DescribeNamespaceResponse:
    return DescribeNamespaceResponse(
        namespace_info=NamespaceInfo(
            name=name, id=f"id-{name}", description=description, data={"team": name}
        ),
        config=NamespaceConfig(
            workflow_execution_retention_ttl=Duration(seconds=retention_days * 86400)
        ),
        replication_config=NamespaceReplicationConfig(active_cluster_name="active"),
        failover_version=7,
    )


NAMES = ("default", "other", "temporal-system", "default2", "payments")


def response(token: bytes = b"page-2") -> bytes:
    msg = ListNamespacesResponse(
        namespaces=[entry(n, description=f"the {n} namespace") for n in NAMES],
        next_page_token=token,
    )
    return msg.SerializeToString()


def raw_entries(data: bytes) -> dict[str, bytes]:
    """name -> the entry's complete field bytes (tag, length and value) in `data`."""
    out = {}
    for number, wire, start, value_start, end in iter_fields(data):
        if number == 1 and wire == 2:
            out[namespace_name(data[value_start:end])] = data[start:end]
    return out


# ----------------------------------------------------------------------- filter_namespaces


@pytest.mark.parametrize(
    "keep",
    [
        {"default"},
        {"default", "other"},
        {"temporal-system", "payments"},
        set(),
        set(NAMES),
    ],
)
def test_filter_keeps_chosen_entries_byte_identical(keep: set[str]) -> None:
    original = response()
    filtered = filter_namespaces(original, lambda name: name in keep)
    parsed = ListNamespacesResponse.FromString(filtered)
    assert [ns.namespace_info.name for ns in parsed.namespaces] == [n for n in NAMES if n in keep]
    assert parsed.next_page_token == b"page-2"
    before, after = raw_entries(original), raw_entries(filtered)
    assert set(after) == keep
    for name in keep:
        assert after[name] == before[name]
    # Nothing but the dropped entries changed: the rest of the message is byte-identical.
    expected = b"".join(
        original[start:end]
        for number, _wire, start, value_start, end in iter_fields(original)
        if not (number == 1 and namespace_name(original[value_start:end]) not in keep)
    )
    assert filtered == expected
    # The kept entries parse to exactly what the server sent.
    by_name = {
        ns.namespace_info.name: ns for ns in ListNamespacesResponse.FromString(original).namespaces
    }
    for ns in parsed.namespaces:
        assert ns == by_name[ns.namespace_info.name]


def test_filter_keeps_next_page_token_and_unknown_fields_in_place() -> None:
    # A token before the entries and an unknown field (a newer server) both survive.
    token = ListNamespacesResponse(next_page_token=b"\x00\xfftok").SerializeToString()
    unknown = bytes([15 << 3 | 0, 42])  # field 15, varint 42
    data = token + response(b"") + unknown
    filtered = filter_namespaces(data, lambda name: name == "other")
    assert filtered.startswith(token)
    assert filtered.endswith(unknown)
    parsed = ListNamespacesResponse.FromString(filtered)
    assert parsed.next_page_token == b"\x00\xfftok"
    assert [ns.namespace_info.name for ns in parsed.namespaces] == ["other"]


def test_filter_of_an_empty_page_keeps_the_token() -> None:
    data = ListNamespacesResponse(next_page_token=b"more").SerializeToString()
    assert filter_namespaces(data, lambda name: False) == data
    assert filter_namespaces(b"", lambda name: True) == b""


def test_namespace_name() -> None:
    assert namespace_name(entry("payments").SerializeToString()) == "payments"
    assert namespace_name(DescribeNamespaceResponse().SerializeToString()) == ""
    no_name = DescribeNamespaceResponse(namespace_info=NamespaceInfo(id="x"))
    assert namespace_name(no_name.SerializeToString()) == ""
    # Last occurrence of namespace_info.name wins, as the parser merges.
    twice = entry("first").SerializeToString() + entry("second").SerializeToString()
    assert DescribeNamespaceResponse.FromString(twice).namespace_info.name == "second"
    assert namespace_name(twice) == "second"


# ----------------------------------------------------------------- readable_by, can_list_some


@pytest.mark.parametrize(
    ("system", "namespaces", "visible"),
    [
        (Role.UNDEFINED, {"default": R}, {"default"}),
        (Role.UNDEFINED, {"default": W, "other": A}, {"default", "other"}),
        (Role.UNDEFINED, {"default": WK}, set()),  # worker alone is below reader (numeric)
        (Role.UNDEFINED, {"default": WK | R}, {"default"}),
        (Role.WORKER, {"other": R}, {"other"}),
        (Role.READER, {}, set(NAMES)),  # a system role reaches every namespace
        (Role.ADMIN, {"default": WK}, set(NAMES)),
        (Role.UNDEFINED, {}, set()),
    ],
)
def test_readable_by(system: Role, namespaces: dict[str, Role], visible: set[str]) -> None:
    claims = Claims.build(subject="s", system=system, namespaces=namespaces)
    keep = readable_by(claims)
    assert {n for n in NAMES if keep(n)} == visible


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (None, False),
        (Claims.build(), False),
        (Claims.build(namespaces={"default": WK}), False),
        (Claims.build(namespaces={"default": WK, "other": R}), True),
        (Claims.build(namespaces={"default": W}), True),
        (Claims.build(system=Role.WORKER, namespaces={"default": WK}), False),
    ],
)
def test_can_list_some(claims: Claims | None, expected: bool) -> None:
    assert can_list_some(claims) is expected


# ------------------------------------------------------------------------------ the Gate


class FixedClaims:
    def __init__(self, claims: Claims) -> None:
        self.claims = claims

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        return self.claims


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _log(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    debug = info = warning = error = _log


def gate(claims: Claims, *, filter_on: bool, mode: Mode = "enforce") -> tuple[Gate, Events]:
    log = Events()
    return (
        Gate(
            claim_mapper=FixedClaims(claims),
            authorizer=DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS),
            metrics=ProxyMetrics(CollectorRegistry(), method_names=()),
            logger=log,
            peer_always_verified=True,
            mode=mode,
            filter_list_namespaces=filter_on,
        ),
        log,
    )


def info(full: str) -> MethodInfo:
    found = methods.lookup(full)
    assert found is not None
    return found


LIST = info(LIST_NAMESPACES)
LIST_REQUEST = ListNamespacesRequest(page_size=10).SerializeToString()


async def test_namespace_reader_lists_with_filter_on() -> None:
    g, log = gate(Claims.build(subject="s", namespaces={"default": R}), filter_on=True)
    verdict = await g.check(LIST, LIST_REQUEST, token="Bearer x")
    assert verdict.allowed
    assert verdict.filter_namespaces is True
    assert verdict.would_deny is False
    assert verdict.result.reason is Reason.ALLOWED
    assert not [e for e, _ in log.events if e == "authz_denied"]


async def test_namespace_reader_denied_with_filter_off() -> None:
    g, log = gate(Claims.build(subject="s", namespaces={"default": R}), filter_on=False)
    verdict = await g.check(LIST, LIST_REQUEST, token="Bearer x")
    assert not verdict.allowed
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert verdict.filter_namespaces is False
    assert [e for e, _ in log.events] == ["authz_denied"]


@pytest.mark.parametrize("system", [Role.READER, Role.WRITER, Role.ADMIN])
async def test_system_roles_list_everything_unfiltered(system: Role) -> None:
    g, _ = gate(Claims.build(subject="s", system=system, namespaces={"default": R}), filter_on=True)
    verdict = await g.check(LIST, LIST_REQUEST, token="Bearer x")
    assert verdict.allowed
    assert verdict.filter_namespaces is False


@pytest.mark.parametrize(
    "claims",
    [
        Claims.build(subject="s"),
        Claims.build(subject="s", namespaces={"default": WK}),
        Claims.build(subject="s", system=Role.WORKER),
    ],
)
async def test_callers_without_a_readable_namespace_stay_denied(claims: Claims) -> None:
    g, _ = gate(claims, filter_on=True)
    verdict = await g.check(LIST, LIST_REQUEST, token="Bearer x")
    assert not verdict.allowed
    assert verdict.result.reason is Reason.INSUFFICIENT_ROLE
    assert verdict.filter_namespaces is False


@pytest.mark.parametrize(
    "full",
    [
        methods.WORKFLOW_SERVICE_PREFIX + "GetClusterInfo",
        methods.OPERATOR_SERVICE_PREFIX + "ListClusters",
        methods.WORKFLOW_SERVICE_PREFIX + "RegisterNamespace",
    ],
)
async def test_the_opt_in_covers_list_namespaces_only(full: str) -> None:
    g, _ = gate(Claims.build(subject="s", namespaces={"default": A}), filter_on=True)
    verdict = await g.check(info(full), b"", token="Bearer x")
    assert not verdict.allowed
    assert verdict.filter_namespaces is False


async def test_filter_with_shadow_mode() -> None:
    reader = Claims.build(subject="s", namespaces={"default": R})
    g, log = gate(reader, filter_on=True, mode="shadow")
    verdict = await g.check(LIST, LIST_REQUEST, token="Bearer x")
    assert verdict.allowed and verdict.filter_namespaces and not verdict.would_deny
    g, log = gate(reader, filter_on=False, mode="shadow")
    verdict = await g.check(LIST, LIST_REQUEST, token="Bearer x")
    assert verdict.allowed and verdict.would_deny and not verdict.filter_namespaces
    assert verdict.result.decision is Decision.ALLOW
    assert [e for e, _ in log.events] == ["authz_would_deny"]
