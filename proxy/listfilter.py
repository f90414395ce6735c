"""`authorization.filterListNamespaces`: a ListNamespaces answer cut down to the caller's
namespaces, so the Web UI and the CLI work with namespace-scoped credentials.

Nothing about a hidden namespace may show: not its name, not its id, not how many there are.
The frontend's `next_page_token` is its persistence cursor (with SQL, the id of the last row it
read, hidden or not) and its page sizes count hidden rows, so neither is handed out. Instead
the proxy pages upstream itself (`UPSTREAM_PAGE_SIZE` entries a page, at most
`MAX_UPSTREAM_PAGES` pages a call, else the call fails), keeps the readable entries in the
frontend's order, and answers one page of those with a token of its own that holds only what
the caller has already seen: how many readable namespaces it was given and the name of the
last one. The answer is a function of the readable set alone.

ListNamespacesRequest{page_size = 1 (int32), next_page_token = 2, namespace_filter = 3};
ListNamespacesResponse{namespaces = 1 (DescribeNamespaceResponse{namespace_info = 1
(NamespaceInfo{name = 1})}), next_page_token = 2}. Kept entries are the frontend's bytes,
unchanged; anything else in a response (unknown fields of a newer server) is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import MalformedRequestError
from proxy.methods import LIST_NAMESPACES
from proxy.model import Claims, Role
from proxy.wire.read import peek_bytes, read_top_fields, read_varint
from proxy.wire.walk import iter_fields
from proxy.wire.write import encode_len_field, encode_varint

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "LIST_NAMESPACES",
    "MAX_UPSTREAM_PAGES",
    "TOKEN_MAGIC",
    "UPSTREAM_PAGE_SIZE",
    "FilteredListing",
    "ListingError",
    "can_list_some",
    "decode_token",
    "encode_token",
    "namespace_name",
    "readable_by",
]

UPSTREAM_PAGE_SIZE = 1000
MAX_UPSTREAM_PAGES = 10  # so at most 10,000 namespaces in the cluster; more fails the call
DEFAULT_PAGE_SIZE = 100  # Temporal's, for page_size 0
TOKEN_MAGIC = b"tap-ns1\x00"
_MAX_NAME = 4096  # bytes of a namespace name inside a token we accept
# Top-level fields of one upstream page beyond its entries (token, a newer server's extras).
_SPARE_FIELDS = 64


class ListingError(Exception):
    """A filtered listing that cannot be answered; `status` is the gRPC status name."""

    def __init__(self, status: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status  # INVALID_ARGUMENT | RESOURCE_EXHAUSTED | INTERNAL
        self.reason = reason  # closed set: bad_request, bad_token, too_many, bad_response
        self.detail = detail

    @property
    def message(self) -> str:
        return {
            "bad_request": "temporal-auth-proxy: malformed ListNamespaces request",
            "bad_token": "temporal-auth-proxy: invalid next_page_token",
            "too_many": "temporal-auth-proxy: too many namespaces to filter",
        }.get(self.reason, "temporal-auth-proxy: cannot filter the namespace list")


def namespace_name(describe_response: bytes) -> str:
    """`namespace_info.name` as a client's parser reads it (C speed; "" when odd)."""
    try:
        name = peek_bytes(describe_response, (1, 1))
    except MalformedRequestError:
        return ""
    return name.decode("utf-8", "replace")


def encode_token(offset: int, after: str) -> bytes:
    """The proxy's page token: readable namespaces handed out so far, and the last one's name."""
    return TOKEN_MAGIC + encode_varint(offset) + after.encode("utf-8")


def decode_token(token: bytes) -> tuple[int, str]:
    """(offset, name) from `encode_token`; ListingError for anything else."""
    if not token.startswith(TOKEN_MAGIC):
        raise ListingError("INVALID_ARGUMENT", "bad_token", "not a token of this proxy")
    try:
        offset, pos = read_varint(token, len(TOKEN_MAGIC))
        name = token[pos:].decode("utf-8")
    except (MalformedRequestError, UnicodeDecodeError) as exc:
        raise ListingError("INVALID_ARGUMENT", "bad_token", "malformed token") from exc
    if offset > 1 << 31 or not name or len(token) - pos > _MAX_NAME:
        raise ListingError("INVALID_ARGUMENT", "bad_token", "malformed token")
    return offset, name


class FilteredListing:
    """One filtered ListNamespaces call: `next_request()` for upstream, `feed()` each answer
    until it returns None, then `result()` is the caller's answer."""

    def __init__(
        self,
        request: bytes,
        keep: Callable[[str], bool],
        *,
        upstream_page_size: int = UPSTREAM_PAGE_SIZE,
        max_pages: int = MAX_UPSTREAM_PAGES,
    ) -> None:
        self._keep = keep
        self._upstream_page_size = upstream_page_size
        self._max_pages = max_pages
        try:
            # The caller's bytes (up to gRPC's receive limit): read at C speed, never walked in
            # Python. namespace_filter and anything else go upstream as sent.
            fields, rest = read_top_fields(request, {1: 0, 2: 2})
        except MalformedRequestError as exc:
            raise ListingError("INVALID_ARGUMENT", "bad_request", str(exc)) from exc
        page_size = fields.get(1, 0)
        token = fields.get(2, b"")
        assert isinstance(page_size, int) and isinstance(token, bytes)
        page_size &= 0xFFFFFFFF  # int32 on the wire: negative values are 10-byte varints
        if page_size == 0 or page_size >= 1 << 31:
            page_size = DEFAULT_PAGE_SIZE
        self.page_size = page_size
        self._offset, self._after = decode_token(token) if token else (0, "")
        self._base = rest
        self._visible: list[tuple[str, bytes]] = []  # readable entries in the frontend's order
        self._index: dict[str, int] = {}
        self._cursor = b""
        self._pages = 0

    def next_request(self) -> bytes:
        body = self._base + encode_varint(1 << 3) + encode_varint(self._upstream_page_size)
        if self._cursor:
            body += encode_len_field(2, self._cursor)
        return body

    def feed(self, response: bytes) -> bytes | None:
        """Take one upstream answer; the next upstream request, or None when done."""
        self._pages += 1
        cursor = b""
        try:
            # The frontend's answer, walked in Python: trusted to be well formed, but the walk
            # is bounded anyway (gRPC's receive limit, and a field count a page cannot need).
            fields = iter_fields(response, max_fields=self._upstream_page_size + _SPARE_FIELDS)
            for number, wire, start, value_start, end in fields:
                if number == 1 and wire == 2:
                    name = namespace_name(response[value_start:end])
                    if name and name not in self._index and self._keep(name):
                        self._index[name] = len(self._visible)
                        self._visible.append((name, response[start:end]))
                elif number == 2 and wire == 2:
                    cursor = response[value_start:end]
        except MalformedRequestError as exc:
            raise ListingError("INTERNAL", "bad_response", str(exc)) from exc
        if not cursor or self._enough():
            return None
        if cursor == self._cursor:
            raise ListingError("INTERNAL", "bad_response", "the frontend repeated its page token")
        if self._pages >= self._max_pages:
            raise ListingError(
                "RESOURCE_EXHAUSTED",
                "too_many",
                f"more than {self._max_pages} pages of {self._upstream_page_size} namespaces",
            )
        self._cursor = cursor
        return self.next_request()

    def _start(self) -> int | None:
        """Where the caller's page starts in the readable list; None while that is unknown."""
        if not self._after:
            return 0
        found = self._index.get(self._after)
        return None if found is None else found + 1

    def _enough(self) -> bool:
        # One more than a page: then the caller is told, truthfully, that there is more.
        start = self._start()
        return start is not None and len(self._visible) > start + self.page_size

    def result(self) -> bytes:
        start = self._start()
        if start is None:
            # The last namespace it saw is gone (or the token is made up): fall back to the
            # count, which is all the caller knows. Either way only readable entries count.
            start = min(self._offset, len(self._visible))
        page = self._visible[start : start + self.page_size]
        out = b"".join(raw for _, raw in page)
        if len(self._visible) > start + len(page):
            out += encode_len_field(2, encode_token(start + len(page), page[-1][0]))
        return out


def readable_by(claims: Claims) -> Callable[[str], bool]:
    """A namespace is listed when the caller could at least read it (numeric, as Temporal)."""
    return lambda name: claims.role_in(name) >= Role.READER


def can_list_some(claims: Claims | None) -> bool:
    return claims is not None and any(r >= Role.READER for ns, r in claims.namespaces.items() if ns)
