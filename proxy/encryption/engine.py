"""Encrypt a request's payloads and decrypt a response's, bytes in and bytes out, for one call.

The wiring calls these only for namespaces with encryption on, after authorization:

    plan = EncryptionPlan.load()                                   # once, at startup
    keys = NamespaceKeys.for_ring(ring, "2026-11")                 # per namespace, per config
    sealed = encrypt_request(plan, method, body, keys, reject_unknown=True)
    opened = decrypt_response(plan, method, response_body, keys)
    details = decrypt_status_details(plan, method, grpc_status_details_bin, keys)

Requests: every plaintext payload is sealed with the namespace's current key; payloads already
`binary/encrypted` (an SDK codec) pass unchanged; Temporal system Nexus envelopes (metadata
`__temporal_system_payload`) are read by the server, so they are opened and only the payloads
inside are sealed. Responses: every `binary/encrypted` payload is opened with a key the namespace
may use; anything else raises `DecryptionError` (never passed on as if it were plaintext).
A response that cannot hold an encrypted payload is returned as the same bytes object, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message

from proxy.codec.payload import ENCODING_ENCRYPTED, ENCODING_KEY
from proxy.encryption.errors import (
    DecryptFailure,
    DecryptionError,
    LimitExceededError,
    UnknownFieldError,
    UnsupportedMethodError,
)
from proxy.encryption.keys import NamespaceKeys, PayloadOpenError
from proxy.encryption.plan import MAX_NESTING, EncryptionPlan, MethodPlan, TypePlan, walk_nested
from proxy.encryption.unknown import (
    DEFAULT_MAX_NODES,
    TooManyNodes,
    discard_if_clean,
    unknown_paths,
)

__all__ = [
    "Decrypted",
    "Encrypted",
    "decrypt_message",
    "decrypt_response",
    "decrypt_status_details",
    "encrypt_message",
    "encrypt_request",
    "find_unknown_fields",
]

# A bound on the payloads one request may make us seal (~5 us each: ~0.5 s of CPU). Empty
# payloads cost 2 bytes on the wire, so without it a 128 MiB request would be minutes of AES.
DEFAULT_MAX_PAYLOADS = 100_000
# Temporal system Nexus envelopes (api-go proxy/system_nexus.go, temporalio.nexus.system).
SYSTEM_PAYLOAD_KEY = "__temporal_system_payload"
SYSTEM_MESSAGE_TYPE_KEY = "messageType"
SYSTEM_PAYLOAD_TRUE = b"true"
ENCODING_PROTOBUF = b"binary/protobuf"


@dataclass(frozen=True, slots=True, kw_only=True)
class Encrypted:
    """The request to forward and what happened to it (for metrics and logs)."""

    body: bytes
    encrypted: int  # payloads sealed here
    passed: int  # payloads that arrived already encrypted
    unknown_fields: tuple[str, ...]  # only with reject_unknown=False: counted, forwarded


@dataclass(frozen=True, slots=True, kw_only=True)
class Decrypted:
    body: bytes
    decrypted: int


def _method(plan: EncryptionPlan, method: str) -> MethodPlan:
    mp = plan.methods.get(method)
    if mp is None:
        # Fail closed: a namespace call the shipped API does not define cannot be inspected.
        raise UnsupportedMethodError(f"{method}: not in the shipped Temporal API descriptors")
    return mp


def _parse(cls: type[Message], body: bytes, what: str) -> Any:
    try:
        return cls.FromString(body)
    except DecodeError as exc:
        raise UnsupportedMethodError(f"{what}: body is not a valid {cls.__name__}") from exc


class _Sealer:
    """Visitor for requests: seal plaintext payloads, collect opaque places."""

    __slots__ = (
        "_keys",
        "_label",
        "_left",
        "_limit",
        "_plan",
        "changed",
        "nesting",
        "opaque",
        "passed",
    )

    def __init__(
        self, plan: EncryptionPlan, keys: NamespaceKeys, label: str, max_payloads: int
    ) -> None:
        self._plan = plan
        self._keys = keys
        self._label = label
        self._limit = self._left = max_payloads
        self.changed = 0
        self.nesting = 0
        self.passed = 0
        self.opaque: list[str] = []

    def payload(self, payload: Any, /) -> None:
        self._left -= 1
        if self._left < 0:
            raise LimitExceededError(self._label, "payloads", self._limit)
        metadata = payload.metadata
        if metadata.get(ENCODING_KEY) == ENCODING_ENCRYPTED:
            self.passed += 1
        elif not (SYSTEM_PAYLOAD_KEY in metadata and _visit_envelope(self._plan, payload, self)):
            self._keys.seal_into(payload)
            self.changed += 1

    def opaque_any(self, type_name: str, /) -> None:
        self.opaque.append(f"Any<{type_name}>")

    def any_body(self, body: Message, raw: bytes, /) -> None:
        self.opaque.extend(_any_body_unknowns(body, raw, self._label))

    def too_deep(self, what: str, /) -> None:
        # Refused in both unknown-field modes: what lies below would be forwarded unsealed.
        raise LimitExceededError(self._label, f"nested levels ({what})", MAX_NESTING)


class _Opener:
    """Visitor for responses: open every encrypted payload or fail the call."""

    __slots__ = ("_keys", "_method", "_plan", "changed", "nesting", "opaque")

    def __init__(self, plan: EncryptionPlan, keys: NamespaceKeys, method: str) -> None:
        self._plan = plan
        self._keys = keys
        self._method = method
        self.changed = 0
        self.nesting = 0
        self.opaque: list[str] = []

    def payload(self, payload: Any, /) -> None:
        metadata = payload.metadata
        if metadata.get(ENCODING_KEY) == ENCODING_ENCRYPTED:
            try:
                self._keys.open_into(payload)
            except PayloadOpenError as exc:
                raise DecryptionError(exc.reason, self._method, exc.detail) from None
            except DecodeError:
                raise DecryptionError(
                    DecryptFailure.MALFORMED, self._method, "decrypted bytes are not a Payload"
                ) from None
            self.changed += 1
        elif SYSTEM_PAYLOAD_KEY in metadata:
            _visit_envelope(self._plan, payload, self)

    def opaque_any(self, type_name: str, /) -> None:
        # Unknown types in responses pass as they are: an encrypted payload inside stays sealed.
        self.opaque.append(type_name)

    def any_body(self, body: Message, raw: bytes, /) -> None:
        return None

    def too_deep(self, what: str, /) -> None:
        # The server wrote it; payloads below stay encrypted (the caller sees ciphertext).
        self.opaque.append(what)


def _visit_envelope(plan: EncryptionPlan, payload: Any, v: _Sealer | _Opener) -> bool:
    """A system Nexus envelope: the server reads it, so only the payloads inside are visited.

    False when the payload is not a well-formed envelope of an API message (flag `true`,
    `binary/protobuf`, a `messageType` of the shipped API, parseable data): a request's payload
    is then sealed whole, so the flag cannot be used to keep arbitrary data in plaintext.
    """
    metadata = payload.metadata
    if (
        metadata.get(SYSTEM_PAYLOAD_KEY) != SYSTEM_PAYLOAD_TRUE
        or metadata.get(ENCODING_KEY) != ENCODING_PROTOBUF
    ):
        return False
    type_name = metadata.get(SYSTEM_MESSAGE_TYPE_KEY, b"").decode("utf-8", "replace")
    desc = plan.api.find_message(type_name)
    if desc is None:
        return False
    try:
        body = plan.api.message_class(desc).FromString(payload.data)
    except DecodeError:
        return False
    inner = plan.types.get(type_name)
    if inner is not None and walk_nested(inner, body, v, f"envelope<{type_name}>"):
        payload.data = body.SerializeToString()
    return True


def encrypt_request(
    plan: EncryptionPlan,
    method: str,
    body: bytes,
    keys: NamespaceKeys,
    *,
    reject_unknown: bool = True,
    max_payloads: int = DEFAULT_MAX_PAYLOADS,
) -> Encrypted:
    """Seal every plaintext payload of a request. Raises `UnknownFieldError` (reject_unknown),
    `LimitExceededError` (more than `max_payloads` payloads, or an unknown-field walk past its
    bound) or `UnsupportedMethodError` (method not in the API, body not parseable)."""
    mp = _method(plan, method)
    return _seal(
        plan, mp.request_class, mp.request, body, keys, reject_unknown, method, max_payloads
    )


def encrypt_message(
    plan: EncryptionPlan, type_name: str, body: bytes, keys: NamespaceKeys
) -> Encrypted:
    """Seal every payload of any API message by its full type name (tests, benchmarks, and
    re-encrypting stored data); unknown fields are reported, not refused."""
    tp = plan.types.get(type_name)
    desc = plan.api.find_message(type_name)
    if desc is None:
        raise UnsupportedMethodError(f"{type_name}: not in the shipped Temporal API descriptors")
    cls = plan.api.message_class(desc)
    return _seal(plan, cls, tp, body, keys, False, type_name, DEFAULT_MAX_PAYLOADS)


def _seal(
    plan: EncryptionPlan,
    cls: type[Message],
    tp: TypePlan | None,
    body: bytes,
    keys: NamespaceKeys,
    reject_unknown: bool,
    label: str,
    max_payloads: int,
) -> Encrypted:
    msg = _parse(cls, body, label)
    unknown: tuple[str, ...] = ()
    if not discard_if_clean(msg):
        msg = cls.FromString(body)  # restore what the check dropped
        unknown = _paths(msg, label)
    sealer = _Sealer(plan, keys, label, max_payloads)
    if tp is not None:
        tp.walk(msg, sealer)
    unknown = (*unknown, *sealer.opaque)
    if unknown and reject_unknown:
        raise UnknownFieldError(label, unknown)
    out = msg.SerializeToString() if sealer.changed else body
    return Encrypted(
        body=out, encrypted=sealer.changed, passed=sealer.passed, unknown_fields=unknown
    )


def _open(tp: TypePlan | None, body: bytes, v: _Opener) -> bytes:
    # Cheap precheck in C: no encrypted payload can be inside bytes that never spell it.
    if tp is None or ENCODING_ENCRYPTED not in body:
        return body
    msg = _parse(tp.message_class, body, tp.full_name)
    tp.walk(msg, v)
    return msg.SerializeToString() if v.changed else body


def decrypt_response(
    plan: EncryptionPlan, method: str, body: bytes, keys: NamespaceKeys
) -> Decrypted:
    """Open every encrypted payload of a response; `DecryptionError` when one cannot be."""
    mp = _method(plan, method)
    opener = _Opener(plan, keys, method)
    out = _open(mp.response, body, opener)
    return Decrypted(body=out, decrypted=opener.changed)


def decrypt_message(
    plan: EncryptionPlan, type_name: str, body: bytes, keys: NamespaceKeys
) -> Decrypted:
    """Open every encrypted payload of any API message by its full type name."""
    if plan.api.find_message(type_name) is None:
        raise UnsupportedMethodError(f"{type_name}: not in the shipped Temporal API descriptors")
    opener = _Opener(plan, keys, type_name)
    out = _open(plan.types.get(type_name), body, opener)
    return Decrypted(body=out, decrypted=opener.changed)


def decrypt_status_details(
    plan: EncryptionPlan, method: str, details: bytes, keys: NamespaceKeys
) -> Decrypted:
    """Open payloads in `grpc-status-details-bin` (a google.rpc.Status whose details are Any:
    QueryFailedFailure, MultiOperationExecutionFailure carry failures with payloads)."""
    opener = _Opener(plan, keys, method)
    out = _open(plan.status, details, opener)
    return Decrypted(body=out, decrypted=opener.changed)


def find_unknown_fields(plan: EncryptionPlan, method: str, body: bytes) -> tuple[str, ...]:
    """The request's unknown LEN/group field paths (see `proxy.encryption.unknown`), without
    encrypting anything (for `explain` and tests)."""
    mp = _method(plan, method)
    msg = _parse(mp.request_class, body, method)
    found: tuple[str, ...] = ()
    if not discard_if_clean(msg):
        msg = mp.request_class.FromString(body)
        found = _paths(msg, method)
    if mp.request is None:
        return found
    probe = _Probe(method)
    mp.request.walk(msg, probe)
    return (*found, *probe.opaque)


def _paths(msg: Message, label: str) -> tuple[str, ...]:
    try:
        return unknown_paths(msg)
    except TooManyNodes:
        raise LimitExceededError(label, "messages to check", DEFAULT_MAX_NODES) from None


def _any_body_unknowns(body: Message, raw: bytes, label: str) -> list[str]:
    """Unknown fields inside an opened Any body (the root check cannot see into its bytes)."""
    if discard_if_clean(body):
        return []
    body.ParseFromString(raw)  # restore what the check dropped
    name = body.DESCRIPTOR.full_name
    return [f"Any<{name}>.{p}" for p in _paths(body, label)]


class _Probe:
    """A visitor that changes nothing: finds unknown Any types and unknown fields in Any bodies."""

    __slots__ = ("_label", "changed", "nesting", "opaque")

    def __init__(self, label: str) -> None:
        self._label = label
        self.changed = 0
        self.nesting = 0
        self.opaque: list[str] = []

    def payload(self, payload: Any, /) -> None:
        return None

    def opaque_any(self, type_name: str, /) -> None:
        self.opaque.append(f"Any<{type_name}>")

    def any_body(self, body: Message, raw: bytes, /) -> None:
        self.opaque.extend(_any_body_unknowns(body, raw, self._label))

    def too_deep(self, what: str, /) -> None:
        self.opaque.append(f"{what} (nested too deep)")
