"""The per-call side of payload encryption: which calls are sealed/opened, with what, and what a
refusal looks like. Built from config by the composition root, swapped whole on SIGHUP.

The forwarder asks `call(info, namespace)` after the gate's ALLOW: None (the common case, one
dict look-up) leaves the call untouched; a `CallCrypto` seals the request and opens the response
(and `grpc-status-details-bin`) with that namespace's keys. Every failure is an
`EncryptionRefused` carrying the gRPC status name and message the caller gets; it is counted
and logged here. No grpc import: the forwarder maps the status name.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from time import thread_time
from types import MappingProxyType
from typing import Any

from proxy.codec.payload import KeyRing
from proxy.config.schema import Config
from proxy.encryption.descriptors import DATA_PACKAGE, VERSION_FILE, ApiVersion
from proxy.encryption.engine import decrypt_response, decrypt_status_details, encrypt_request
from proxy.encryption.errors import (
    DecryptionError,
    LimitExceededError,
    UnknownFieldError,
    UnsupportedMethodError,
)
from proxy.encryption.keys import NamespaceKeys
from proxy.encryption.plan import EncryptionPlan
from proxy.errors import ProxyError
from proxy.interfaces import Logger
from proxy.methods import ADMIN_SERVICE_PREFIX
from proxy.metrics import EncryptionMetrics
from proxy.model import Access, MethodInfo, Scope

__all__ = [
    "DECRYPT_FAILED_CODE",
    "CallCrypto",
    "EncryptionRefused",
    "EncryptionSettings",
    "PayloadEncryption",
    "method_class",
    "shipped_api_version",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
MESSAGE_PREFIX = "temporal-auth-proxy: "
# A response payload that cannot be decrypted: the data is there but unreadable to us.
DECRYPT_FAILED_CODE = "DATA_LOSS"
# Field paths named in one refusal message / log line (a hostile request may carry thousands).
MAX_PATHS_SHOWN = 8
# Bodies from this size are sealed/opened on a worker thread: AES-GCM releases the GIL (a
# 64 MiB payload stalls the event loop ~60 ms instead of ~300 ms), and a body of thousands of
# tiny payloads (Python work) yields the GIL to the loop every 5 ms instead of holding it.
OFFLOAD_BYTES = 16 * 1024
# Payloads one request may make us seal (~5 us each): real requests carry a few hundred at
# most (a workflow task completing with many commands); 2 bytes each on the wire, so without
# this bound a 200 KB request would cost half a second of CPU.
MAX_PAYLOADS_PER_REQUEST = 10_000


def shipped_api_version() -> ApiVersion:
    """The shipped descriptors' provenance from their JSON record alone (no descriptor load):
    for the build-info gauge and the startup line, also when no namespace is encrypted."""
    info = json.loads((resources.files(DATA_PACKAGE) / VERSION_FILE).read_text(encoding="utf-8"))
    return ApiVersion(
        temporalio=str(info["temporalio"]),
        api_commit=info.get("api_commit"),
        sha256=str(info["sha256"]),
        files=int(info.get("files", 0)),
    )


def method_class(info: MethodInfo) -> str:
    """`poll`, `read`, `write` or `admin`: the CPU histogram's closed label set."""
    if info.polling:
        return "poll"
    return {Access.READ: "read", Access.WRITE: "write"}.get(info.access, "admin")


class EncryptionRefused(ProxyError):
    """The call fails with `code` (a grpc.StatusCode name) and `message`; `reason` is the
    metric label (metrics.ENCRYPTION_FAILURE_REASONS)."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = MESSAGE_PREFIX + message


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptionSettings:
    """One consistent set of encryption settings (what SIGHUP swaps as a whole)."""

    keys: Mapping[str, NamespaceKeys]  # encrypted namespace -> its keys
    reject_unknown: bool
    # Namespace-scoped methods that must name their namespace while any namespace is encrypted:
    # their request or response can hold payloads (or the API does not know them).
    need_namespace: frozenset[str]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


DISABLED = EncryptionSettings(
    keys=MappingProxyType({}), reject_unknown=True, need_namespace=frozenset()
)


# AdminService calls that write a namespace's history (payloads included) into the store. The
# proxy ships no AdminService descriptors, so while any namespace is encrypted they are refused
# rather than let plaintext history in (operators run them against the frontend directly).
UNSEALABLE_ADMIN_WRITES: frozenset[str] = frozenset(
    ADMIN_SERVICE_PREFIX + name for name in ("ImportWorkflowExecution", "ReapplyEvents")
)


class PayloadEncryption:
    """Holds the plan (loaded once, only when a namespace is encrypted), the current settings
    and the metrics; `call` is on every call's path."""

    __slots__ = ("_log", "_metrics", "_plan", "settings")

    def __init__(self, *, metrics: EncryptionMetrics, logger: Logger) -> None:
        self._metrics = metrics
        self._log = logger
        self._plan: EncryptionPlan | None = None
        self.settings = DISABLED

    @classmethod
    def build(cls, cfg: Config, *, metrics: EncryptionMetrics, logger: Logger) -> PayloadEncryption:
        """Validate and apply `cfg`'s encryption; raises ConfigError (key paths) at startup."""
        enc = cls(metrics=metrics, logger=logger)
        enc.swap(enc.settings_for(cfg))
        return enc

    @property
    def plan(self) -> EncryptionPlan:
        if self._plan is None:
            self._plan = EncryptionPlan.load()  # ~0.1 s, once
        return self._plan

    def settings_for(self, cfg: Config) -> EncryptionSettings:
        """Build (not apply) the settings `cfg` asks for. ConfigError names the key path."""
        namespaces = cfg.encryption.namespaces
        if not namespaces:
            return DISABLED
        codec = cfg.codec
        ring = KeyRing.from_config(codec.keys)
        by_ns: dict[str, NamespaceKeys] = {}
        for ns, nsc in namespaces.items():
            path = f"encryption.namespaces.{ns}"
            if codec.namespace_keys:
                # Same keys as the Codec Server would use for this namespace (config checked it).
                allowed: Sequence[str] = codec.namespace_keys.get(
                    ns, codec.namespace_keys.get("*", ())
                )
            else:
                allowed = ring.ids
            by_ns[ns] = NamespaceKeys(
                ring=ring,
                encrypt_key_id=nsc.key_id,
                decrypt_key_ids=frozenset(allowed),
                config_path=path,
            )
        plan = self.plan
        need = frozenset(
            name
            for name, mp in plan.methods.items()
            if mp.request is not None or mp.response is not None
        )
        return EncryptionSettings(
            keys=MappingProxyType(by_ns),
            reject_unknown=cfg.encryption.unknown_fields == "reject",
            need_namespace=need,
        )

    def swap(self, settings: EncryptionSettings) -> None:
        # One reference: a call in flight keeps the CallCrypto (keys) it started with.
        self.settings = settings

    def call(self, info: MethodInfo, namespace: str) -> CallCrypto | None:
        """None: forward untouched. Raises EncryptionRefused for a call that cannot be sealed."""
        settings = self.settings
        keys = settings.keys.get(namespace)
        if keys is None:
            if settings.keys and info.full_name in UNSEALABLE_ADMIN_WRITES:
                self._refused(namespace, "unknown_method", info.short_name)
                raise EncryptionRefused(
                    "FAILED_PRECONDITION",
                    "unknown_method",
                    f"{info.short_name} writes history the proxy cannot encrypt (AdminService "
                    "is not in the API it ships) while payload encryption is on",
                )
            if namespace or not settings.keys or info.scope is not Scope.NAMESPACE:
                return None
            self._check_no_namespace(info)
            return None
        plan = self.plan
        mp = plan.methods.get(info.full_name)
        if mp is None:
            self._refused(namespace, "unknown_method", info.short_name)
            raise EncryptionRefused(
                "FAILED_PRECONDITION",
                "unknown_method",
                f"{info.short_name} is not in the Temporal API this proxy ships, so its "
                f"payloads cannot be encrypted (namespace {namespace!r} has encryption on)",
            )
        return CallCrypto(
            plan=plan,
            keys=keys,
            info=info,
            namespace=namespace,
            reject_unknown=settings.reject_unknown,
            metrics=self._metrics,
            logger=self._log,
        )

    def describe(self, info: MethodInfo, namespace: str) -> str:
        """What `call` would do with this call's payloads, in words (for `explain`)."""
        settings = self.settings
        if not settings.enabled:
            return "not encrypted (encryption.namespaces is empty)"
        keys = settings.keys.get(namespace)
        if keys is None:
            if info.scope is not Scope.NAMESPACE:
                return "not encrypted (cluster-scoped call)"
            if namespace:
                return f"not encrypted (namespace {namespace!r} is not in encryption.namespaces)"
            if info.full_name in settings.need_namespace or info.full_name not in self.plan.methods:
                return "refused: FAILED_PRECONDITION (no namespace while encryption is on)"
            return "not encrypted (carries no payloads)"
        mp = self.plan.methods.get(info.full_name)
        if mp is None:
            return "refused: FAILED_PRECONDITION (method not in the shipped Temporal API)"
        unknown = "refused" if settings.reject_unknown else "forwarded and counted"
        if mp.request is None and mp.response is None:
            what = "no payloads in this method; the request is checked for unknown fields"
        else:
            what = "request payloads sealed, response payloads opened"
        return (
            f"encrypted with key id {keys.encrypt_key_id!r} ({what}; unknown request fields "
            f"{unknown}; encryption.namespaces.{namespace})"
        )

    def _check_no_namespace(self, info: MethodInfo) -> None:
        if (
            info.full_name not in self.settings.need_namespace
            and info.full_name in self.plan.methods
        ):
            return None
        self._refused("", "no_namespace", info.short_name)
        raise EncryptionRefused(
            "FAILED_PRECONDITION",
            "no_namespace",
            f"{info.short_name} without a namespace: payload encryption is on, and the proxy "
            "does not resolve task tokens; set the request's namespace (current SDKs do)",
        )

    def _refused(self, namespace: str, reason: str, method: str) -> None:
        self._metrics.failure(self._metrics.namespace_label(namespace), reason).inc()
        self._log.warning("encryption_refused", reason=reason, method=method, namespace=namespace)


class CallCrypto:
    """Seal one request, open its response, with one namespace's keys."""

    __slots__ = (
        "_info",
        "_keys",
        "_log",
        "_metrics",
        "_ns_label",
        "_plan",
        "_reject",
        "namespace",
    )

    def __init__(
        self,
        *,
        plan: EncryptionPlan,
        keys: NamespaceKeys,
        info: MethodInfo,
        namespace: str,
        reject_unknown: bool,
        metrics: EncryptionMetrics,
        logger: Logger,
    ) -> None:
        self._plan = plan
        self._keys = keys
        self._info = info
        self.namespace = namespace
        self._reject = reject_unknown
        self._metrics = metrics
        self._ns_label = metrics.namespace_label(namespace)
        self._log = logger

    @property
    def key_id(self) -> str:
        return self._keys.encrypt_key_id

    async def seal_async(self, body: bytes) -> bytes:
        """`seal`, on a worker thread for bodies of OFFLOAD_BYTES or more."""
        if len(body) < OFFLOAD_BYTES:
            return self.seal(body)
        return await asyncio.to_thread(self.seal, body)

    async def open_async(self, body: bytes) -> bytes:
        """`open`, on a worker thread for bodies of OFFLOAD_BYTES or more."""
        if len(body) < OFFLOAD_BYTES:
            return self.open(body)
        return await asyncio.to_thread(self.open, body)

    def seal(self, body: bytes) -> bytes:
        """The request to forward: every plaintext payload sealed with the current key."""
        m = self._metrics
        started = thread_time()
        try:
            sealed = encrypt_request(
                self._plan,
                self._info.full_name,
                body,
                self._keys,
                reject_unknown=self._reject,
                max_payloads=MAX_PAYLOADS_PER_REQUEST,
            )
        except UnknownFieldError as exc:
            m.unknown_fields(self._ns_label, "rejected").inc()
            shown = ", ".join(exc.paths[:MAX_PATHS_SHOWN])
            raise self._refuse(
                "FAILED_PRECONDITION",
                "unknown_field",
                f"{self._info.short_name} carries unknown length-delimited field(s) {shown} "
                "that could hold payloads; this proxy's Temporal API does not know them "
                "(encryption.unknownFields: reject)",
                fields=list(exc.paths[:MAX_PATHS_SHOWN]),
            ) from None
        except LimitExceededError as exc:
            raise self._refuse(
                "INVALID_ARGUMENT",
                "limit_exceeded",
                f"{self._info.short_name}: more than {exc.limit} {exc.what} to encrypt",
            ) from None
        except UnsupportedMethodError:
            raise self._refuse(
                "INVALID_ARGUMENT",
                "malformed_request",
                f"{self._info.short_name}: the request is not a valid API message",
            ) from None
        finally:
            m.cpu(method_class(self._info), "request").observe(thread_time() - started)
        if sealed.encrypted:
            m.payloads(self._ns_label, "encrypted").inc(sealed.encrypted)
        if sealed.passed:
            m.payloads(self._ns_label, "already_encrypted").inc(sealed.passed)
        if sealed.unknown_fields:
            m.unknown_fields(self._ns_label, "forwarded").inc()
        return sealed.body

    def open(self, body: bytes) -> bytes:
        """The response for the caller: every payload under the namespace's keys opened."""
        started = thread_time()
        try:
            opened = decrypt_response(self._plan, self._info.full_name, body, self._keys)
        except DecryptionError as exc:
            raise self._undecryptable(exc) from None
        except UnsupportedMethodError:
            raise self._refuse(
                "INTERNAL",
                "malformed_response",
                f"{self._info.short_name}: the upstream response is not a valid API message",
            ) from None
        finally:
            self._metrics.cpu(method_class(self._info), "response").observe(thread_time() - started)
        if opened.decrypted:
            self._metrics.payloads(self._ns_label, "decrypted").inc(opened.decrypted)
        return opened.body

    def open_trailers(
        self, trailing: Sequence[tuple[str, str | bytes]]
    ) -> tuple[tuple[str, str | bytes], ...]:
        """An upstream error's trailers with payloads in `grpc-status-details-bin` opened."""
        out: list[tuple[str, str | bytes]] = []
        for key, value in trailing:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                try:
                    opened = decrypt_status_details(
                        self._plan, self._info.full_name, value, self._keys
                    )
                except DecryptionError as exc:
                    raise self._undecryptable(exc) from None
                except UnsupportedMethodError:
                    raise self._refuse(
                        "INTERNAL",
                        "malformed_response",
                        f"{self._info.short_name}: the upstream error details do not parse",
                    ) from None
                if opened.decrypted:
                    self._metrics.payloads(self._ns_label, "decrypted").inc(opened.decrypted)
                value = opened.body
            out.append((key, value))
        return tuple(out)

    def _undecryptable(self, exc: DecryptionError) -> EncryptionRefused:
        return self._refuse(
            DECRYPT_FAILED_CODE,
            f"decrypt_{exc.reason.value}",
            f"payload cannot be decrypted ({exc.reason.value})",
            error=exc.detail,
        )

    def _refuse(self, code: str, reason: str, message: str, **extra: Any) -> EncryptionRefused:
        self._metrics.failure(self._ns_label, reason).inc()
        self._log.warning(
            "encryption_refused",
            reason=reason,
            method=self._info.short_name,
            namespace=self.namespace,
            code=code,
            **extra,
        )
        return EncryptionRefused(code, reason, message)
