"""The Codec Server's codec behind one swappable reference, so SIGHUP can rotate its keys.

`codec.keys`, `codec.encryptKeyId` and `codec.namespaceKeys` are re-read on SIGHUP together
with `encryption` (one key ring for both): a new `PayloadCodec` is built and validated, then
`swap` replaces the reference. Each call reads the reference once, so a request on a worker
thread uses one consistent codec even while a swap happens.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.codec.payload import KeyRing, Payload, PayloadCodec

__all__ = ["ReloadableCodec"]


class ReloadableCodec(PayloadCodec):
    """A PayloadCodec that delegates every public method to the current one.

    The base class's own state is never set: a base method not delegated here raises
    AttributeError rather than run without keys (fail closed)."""

    __slots__ = ("current",)

    def __init__(self, codec: PayloadCodec) -> None:  # no super().__init__: see class doc
        self.current = codec

    def swap(self, codec: PayloadCodec) -> None:
        self.current = codec

    @property
    def keys(self) -> KeyRing:
        return self.current.keys

    @property
    def isolated(self) -> bool:
        return self.current.isolated

    def key_ids_for(self, namespace: str = "") -> tuple[str, ...]:
        return self.current.key_ids_for(namespace)

    def key_id_for(self, namespace: str = "") -> str:
        return self.current.key_id_for(namespace)

    def encode(self, payloads: Sequence[Payload], namespace: str = "") -> list[Payload]:
        return self.current.encode(payloads, namespace)

    def decode(self, payloads: Sequence[Payload], namespace: str = "") -> list[Payload]:
        return self.current.decode(payloads, namespace)

    def encrypt_payload_bytes(self, payload: bytes, namespace: str = "") -> bytes:
        return self.current.encrypt_payload_bytes(payload, namespace)

    def decrypt_payload_bytes(self, payload: bytes, namespace: str = "") -> bytes:
        return self.current.decrypt_payload_bytes(payload, namespace)
