"""Issue 8: `authorization.filterListNamespaces` (proxy/listfilter.py and the Gate's opt-in)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry
from temporalio.api.namespace.v1 import NamespaceConfig, NamespaceFilter, NamespaceInfo
from temporalio.api.replication.v1 import NamespaceReplicationConfig
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceResponse,
    ListNamespacesRequest,
    ListNamespacesResponse,
)

from proxy import methods
from proxy.authz import DefaultAuthorizer
from proxy.gate import Gate, Mode
from proxy.listfilter import (
    DEFAULT_PAGE_SIZE,
    LIST_NAMESPACES,
    TOKEN_MAGIC,
    FilteredListing,
    ListingError,
    can_list_some,
    decode_token,
    encode_token,
    namespace_name,
    readable_by,
)
from proxy.metrics import ProxyMetrics
from proxy.model import AuthInfo, Claims, Decision, MethodInfo, Reason, Role
from proxy.wire.walk import iter_fields

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


# ------------------------------------------------------------------ FilteredListing


class Frontend:
    """A frontend that pages ListNamespaces as Temporal's SQL store does: ordered by id, the
    next_page_token is the id of the last row of a full page (hidden or not)."""

    def __init__(self, names: list[str], *, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.rows = sorted(
            ((f"{rng.getrandbits(64):016x}", n) for n in names), key=lambda row: row[0]
        )
        self.requests: list[ListNamespacesRequest] = []

    def entry(self, ns_id: str, name: str) -> DescribeNamespaceResponse:
        return DescribeNamespaceResponse(
            namespace_info=NamespaceInfo(name=name, id=ns_id, description=f"the {name} namespace")
        )

    def __call__(self, request: bytes) -> bytes:
        req = ListNamespacesRequest.FromString(request)
        self.requests.append(req)
        after = req.next_page_token.decode()
        rows = [r for r in self.rows if r[0] > after][: req.page_size or 100]
        token = rows[-1][0].encode() if len(rows) == (req.page_size or 100) else b""
        return ListNamespacesResponse(
            namespaces=[self.entry(*r) for r in rows], next_page_token=token
        ).SerializeToString()


def answer(frontend: Frontend, request: bytes, keep: set[str], **kw: Any) -> bytes:
    listing = FilteredListing(request, lambda name: name in keep, **kw)
    follow: bytes | None = listing.next_request()
    while follow is not None:
        follow = listing.feed(frontend(follow))
    return listing.result()


def page_through(
    frontend: Frontend, keep: set[str], page_size: int, **kw: Any
) -> tuple[list[str], list[ListNamespacesResponse]]:
    seen: list[str] = []
    pages: list[ListNamespacesResponse] = []
    token = b""
    for _ in range(1000):
        request = ListNamespacesRequest(page_size=page_size, next_page_token=token)
        page = ListNamespacesResponse.FromString(
            answer(frontend, request.SerializeToString(), keep, **kw)
        )
        pages.append(page)
        seen += [ns.namespace_info.name for ns in page.namespaces]
        token = page.next_page_token
        if not token:
            return seen, pages
    raise AssertionError("paging did not end")


UNIVERSE = [f"ns-{i:02d}" for i in range(40)]


@pytest.mark.parametrize("page_size", [1, 2, 3, 10, 100])
@pytest.mark.parametrize("readable", [set(UNIVERSE[::3]), {"ns-07"}, set(), set(UNIVERSE)])
def test_pages_hold_exactly_the_readable_set(page_size: int, readable: set[str]) -> None:
    frontend = Frontend(UNIVERSE)
    seen, pages = page_through(frontend, readable, page_size, upstream_page_size=7)
    assert sorted(seen) == sorted(readable) and len(seen) == len(set(seen))
    # Every page but the last is full: page sizes say nothing about hidden namespaces.
    assert all(len(p.namespaces) == page_size for p in pages[:-1])
    assert 0 < len(pages[-1].namespaces) <= page_size or not readable
    hidden = [r for r in frontend.rows if r[1] not in readable]
    for page in pages:
        token = page.next_page_token
        if token:
            offset, after = decode_token(token)
            assert after in readable and 0 < offset <= len(readable)
            for ns_id, name in hidden:
                assert ns_id.encode() not in token and name.encode() not in token


@pytest.mark.parametrize("page_size", [1, 2, 5, 100])
def test_the_answer_depends_on_the_readable_set_alone(page_size: int) -> None:
    readable = {"ns-03", "ns-11", "ns-12", "ns-30"}
    # The same readable namespaces with their ids, among different hidden ones.
    small = Frontend(sorted(readable), seed=5)
    big = Frontend(UNIVERSE, seed=5)
    big.rows = sorted(
        [r for r in big.rows if r[1] not in readable] + small.rows, key=lambda row: row[0]
    )
    token = b""
    for _ in range(10):
        request = ListNamespacesRequest(page_size=page_size, next_page_token=token)
        a = answer(small, request.SerializeToString(), readable, upstream_page_size=5)
        b = answer(big, request.SerializeToString(), readable, upstream_page_size=5)
        assert a == b
        token = ListNamespacesResponse.FromString(a).next_page_token
        if not token:
            break


def test_kept_entries_are_the_frontends_bytes_and_unknown_fields_are_dropped() -> None:
    original = response()
    unknown = bytes([15 << 3 | 0, 42])  # field 15, varint 42: could describe hidden rows
    listing = FilteredListing(LIST_REQUEST, lambda name: name in {"other", "payments"})
    assert listing.feed(original + unknown) is not None  # upstream has more
    assert listing.feed(ListNamespacesResponse().SerializeToString()) is None
    out = listing.result()
    before = raw_entries(original)
    assert out == before["other"] + before["payments"]


def test_upstream_requests_keep_the_filter_and_use_the_proxys_page_size() -> None:
    frontend = Frontend(UNIVERSE)
    request = ListNamespacesRequest(
        page_size=2, namespace_filter=NamespaceFilter(include_deleted=True)
    )
    last_three = {name for _, name in frontend.rows[-3:]}
    answer(frontend, request.SerializeToString(), last_three, upstream_page_size=9)
    assert [r.page_size for r in frontend.requests] == [9] * len(frontend.requests)
    assert all(r.namespace_filter.include_deleted for r in frontend.requests)
    assert frontend.requests[0].next_page_token == b""
    assert len(frontend.requests) == 5  # 40 rows, 9 a page, the readable ones last by id


def test_it_stops_reading_upstream_once_a_page_and_one_more_are_found() -> None:
    frontend = Frontend(UNIVERSE)
    request = ListNamespacesRequest(page_size=2).SerializeToString()
    answer(frontend, request, set(UNIVERSE), upstream_page_size=1)
    assert len(frontend.requests) == 3


@pytest.mark.parametrize("page_size", [0, -1, -(2**31)])
def test_page_size_zero_or_negative_is_temporals_default(page_size: int) -> None:
    frontend = Frontend(UNIVERSE * 1 + [f"x-{i:03d}" for i in range(200)])
    request = ListNamespacesRequest(page_size=page_size).SerializeToString()
    everything = {n for _, n in frontend.rows}
    page = ListNamespacesResponse.FromString(answer(frontend, request, everything))
    assert len(page.namespaces) == DEFAULT_PAGE_SIZE == 100
    assert page.next_page_token


def test_too_many_upstream_pages_fail_closed() -> None:
    frontend = Frontend(UNIVERSE)
    request = ListNamespacesRequest(page_size=5).SerializeToString()
    with pytest.raises(ListingError) as exc:
        answer(frontend, request, {"ns-39"}, upstream_page_size=4, max_pages=3)
    assert (exc.value.status, exc.value.reason) == ("RESOURCE_EXHAUSTED", "too_many")
    assert len(frontend.requests) == 3
    # Within the bound the same call succeeds.
    assert names_of(answer(frontend, request, {"ns-39"}, upstream_page_size=5)) == ["ns-39"]


def names_of(data: bytes) -> list[str]:
    return [ns.namespace_info.name for ns in ListNamespacesResponse.FromString(data).namespaces]


def test_a_repeated_upstream_token_fails_closed() -> None:
    listing = FilteredListing(LIST_REQUEST, lambda name: False)
    page = ListNamespacesResponse(next_page_token=b"same").SerializeToString()
    assert listing.feed(page) is not None
    with pytest.raises(ListingError) as exc:
        listing.feed(page)
    assert exc.value.reason == "bad_response"


@pytest.mark.parametrize(
    "token",
    [
        b"0123456789abcdef",  # an upstream cursor (a namespace id) is not accepted back
        TOKEN_MAGIC,
        TOKEN_MAGIC + b"\x05",  # no name
        TOKEN_MAGIC + b"\xff",  # truncated varint
        TOKEN_MAGIC + b"\x01\xff\xfe",  # not UTF-8
        TOKEN_MAGIC + b"\x01" + b"n" * 5000,
    ],
)
def test_a_token_the_proxy_did_not_make_is_refused(token: bytes) -> None:
    request = ListNamespacesRequest(page_size=1, next_page_token=token).SerializeToString()
    with pytest.raises(ListingError) as exc:
        FilteredListing(request, lambda name: True)
    assert (exc.value.status, exc.value.reason) == ("INVALID_ARGUMENT", "bad_token")


@pytest.mark.parametrize(
    "request_bytes",
    [b"\x08", bytes([1 << 3 | 2, 1, 0]), bytes([2 << 3 | 0, 1]), b"\x1a\x05ab"],
)
def test_a_malformed_request_is_refused(request_bytes: bytes) -> None:
    with pytest.raises(ListingError) as exc:
        FilteredListing(request_bytes, lambda name: True)
    assert (exc.value.status, exc.value.reason) == ("INVALID_ARGUMENT", "bad_request")


def test_a_malformed_upstream_answer_fails_closed() -> None:
    listing = FilteredListing(LIST_REQUEST, lambda name: True)
    with pytest.raises(ListingError) as exc:
        listing.feed(b"\x0a\x05ab")
    assert (exc.value.status, exc.value.reason) == ("INTERNAL", "bad_response")


def test_a_made_up_or_stale_name_falls_back_to_the_count() -> None:
    frontend = Frontend(UNIVERSE)
    readable = set(UNIVERSE[:6])
    order = [n for _, n in frontend.rows if n in readable]
    # A hidden name in a forged token is never looked up among hidden rows: only the count
    # counts, so the answer is the same as for any other unknown name.
    for name in ("ns-39", "no-such-namespace"):
        request = ListNamespacesRequest(page_size=2, next_page_token=encode_token(2, name))
        got = names_of(answer(frontend, request.SerializeToString(), readable))
        assert got == order[2:4]
    # A real token resumes after the name it carries, even if namespaces came and went.
    request = ListNamespacesRequest(page_size=2, next_page_token=encode_token(5, order[1]))
    assert names_of(answer(frontend, request.SerializeToString(), readable)) == order[2:4]


def test_the_empty_name_is_never_listed() -> None:
    data = ListNamespacesResponse(
        namespaces=[entry(""), entry("default")], next_page_token=b""
    ).SerializeToString()
    claims = Claims.build(subject="s", system=Role.UNDEFINED, namespaces={"": R, "default": R})
    listing = FilteredListing(LIST_REQUEST, readable_by(claims))
    assert listing.feed(data) is None
    assert names_of(listing.result()) == ["default"]


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
