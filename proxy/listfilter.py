"""`authorization.filterListNamespaces`: a ListNamespaces answer cut down to the caller's
namespaces, so the Web UI and the CLI work with namespace-scoped credentials.

ListNamespacesResponse{namespaces = 1 (DescribeNamespaceResponse{namespace_info = 1
(NamespaceInfo{name = 1})}), next_page_token = 2}. Entries are kept or dropped as raw bytes:
what is kept is byte-identical to what the frontend sent.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import MalformedRequestError
from proxy.model import Claims, Role
from proxy.protowalk import iter_fields
from proxy.wire import peek_bytes

LIST_NAMESPACES = "/temporal.api.workflowservice.v1.WorkflowService/ListNamespaces"


def namespace_name(describe_response: bytes) -> str:
    """`namespace_info.name` as a client's parser reads it (C speed; "" when odd)."""
    try:
        name = peek_bytes(describe_response, (1, 1))
    except MalformedRequestError:
        return ""
    return name.decode("utf-8", "replace")


def filter_namespaces(response: bytes, keep: Callable[[str], bool]) -> bytes:
    """Drop `namespaces` entries whose name `keep` refuses; everything else is untouched."""
    out = bytearray()
    for number, wire, start, value_start, end in iter_fields(response):
        if number == 1 and wire == 2 and not keep(namespace_name(response[value_start:end])):
            continue
        out += response[start:end]
    return bytes(out)


def readable_by(claims: Claims) -> Callable[[str], bool]:
    """A namespace is listed when the caller could at least read it (numeric, as Temporal)."""
    return lambda name: claims.role_in(name) >= Role.READER


def can_list_some(claims: Claims | None) -> bool:
    return claims is not None and any(r >= Role.READER for r in claims.namespaces.values())
