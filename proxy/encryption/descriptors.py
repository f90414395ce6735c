"""Load the shipped Temporal API descriptors into a private pool and build their message classes.

The data is `proxy/_pb/temporal_api.binpb` (a serialized `FileDescriptorSet`, dependencies first)
and `proxy/_pb/temporal_api.json` (its provenance), both written by `protos/generate.py` from the
installed temporalio package. A private `DescriptorPool` keeps these definitions apart from the
default pool, where temporalio (in tests or an SDK worker in the same process) registers the same
file names. Message classes come from protobuf's `message_factory` (upb, C speed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message

from proxy.encryption.errors import UnsupportedMethodError
from proxy.methods import OPERATOR_SERVICE, WORKFLOW_SERVICE

__all__ = [
    "SERVICES",
    "ApiDescriptors",
    "ApiVersion",
]

DATA_PACKAGE = "proxy._pb"
SET_FILE = "temporal_api.binpb"
VERSION_FILE = "temporal_api.json"
# The services whose calls carry a namespace's payloads (AdminService is not in temporalio).
SERVICES: tuple[str, ...] = (WORKFLOW_SERVICE, OPERATOR_SERVICE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiVersion:
    """Where the shipped descriptors came from: print at startup, export as a metric label."""

    temporalio: str
    api_commit: str | None
    sha256: str
    files: int

    def label(self) -> str:
        """A short stable label value, e.g. `temporalio-1.35.0+19cf69cf0b63`."""
        return f"temporalio-{self.temporalio}+{self.sha256[:12]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiDescriptors:
    """The pool, a class per message full name (built lazily, cached), and the API methods."""

    pool: descriptor_pool.DescriptorPool
    version: ApiVersion
    # full gRPC method name (`/pkg.Service/Method`) -> its descriptor
    methods: MappingProxyType[str, MethodDescriptor]
    files: tuple[str, ...]

    @classmethod
    def load(cls, data: bytes | None = None, record: str | None = None) -> ApiDescriptors:
        """Read the shipped set (or the given bytes and JSON record, for tests)."""
        files = resources.files(DATA_PACKAGE)
        if data is None:
            data = (files / SET_FILE).read_bytes()
        if record is None:
            record = (files / VERSION_FILE).read_text(encoding="utf-8")
        info = json.loads(record)
        digest = hashlib.sha256(data).hexdigest()
        if info.get("sha256") != digest:
            # A hand-edited or truncated file must not silently change what gets encrypted.
            raise UnsupportedMethodError(
                f"{SET_FILE} does not match the sha256 in {VERSION_FILE}: run `make protos`"
            )
        try:
            fds = descriptor_pb2.FileDescriptorSet.FromString(data)
        except DecodeError as exc:
            raise UnsupportedMethodError(f"{SET_FILE} is not a FileDescriptorSet") from exc
        pool = descriptor_pool.DescriptorPool()
        for file in fds.file:
            pool.Add(file)
        methods: dict[str, MethodDescriptor] = {}
        for service_name in SERVICES:
            service = pool.FindServiceByName(service_name)
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = method
        version = ApiVersion(
            temporalio=str(info["temporalio"]),
            api_commit=info.get("api_commit"),
            sha256=digest,
            files=len(fds.file),
        )
        return cls(
            pool=pool,
            version=version,
            methods=MappingProxyType(methods),
            files=tuple(f.name for f in fds.file),
        )

    def message_class(self, desc: Descriptor) -> type[Message]:
        """The generated (upb) class of a message of this pool."""
        return message_factory.GetMessageClass(desc)

    def all_messages(self) -> Iterator[Descriptor]:
        """Every message type of the set, nested ones included (map entries excluded)."""
        stack: list[Descriptor] = []
        for name in self.files:
            stack.extend(self.pool.FindFileByName(name).message_types_by_name.values())
        while stack:
            desc = stack.pop()
            if not desc.GetOptions().map_entry:
                yield desc
            stack.extend(desc.nested_types)

    def find_message(self, full_name: str) -> Descriptor | None:
        try:
            return self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return None
