"""`EncryptionCodec`: the proxy's payload codec as a `temporalio` PayloadCodec for SDK workers.

Needs the optional `worker` extra (`pip install temporal-auth-proxy[worker]`). It runs the same
`proxy.codec.payload.PayloadCodec` as the Codec Server, handing it each payload as serialized
bytes, so what a worker writes is byte-for-byte the format the server decodes, and the other
way round::

    codec = EncryptionCodec({"2024-01": key_bytes}, encrypt_key_id="2024-01")
    client = await Client.connect(
        "proxy:7233",
        data_converter=dataclasses.replace(DataConverter.default, payload_codec=codec),
    )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec as _SDKPayloadCodec

from proxy.codec.payload import ENCODING_ENCRYPTED, ENCODING_KEY, KeyRing, PayloadCodec

__all__ = ["EncryptionCodec"]


class EncryptionCodec(_SDKPayloadCodec):
    """AES-256-GCM in Temporal's encryption-sample format; decrypts with any of `keys`."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        encrypt_key_id: str,
        *,
        compress: bool = False,
    ) -> None:
        self._codec = PayloadCodec(KeyRing(keys), encrypt_key_id=encrypt_key_id, compress=compress)
        self._namespace = ""

    @classmethod
    def from_codec(cls, codec: PayloadCodec, *, namespace: str = "") -> EncryptionCodec:
        """Wrap a core codec (e.g. built from the proxy's config); `namespace` picks its keys:
        with `namespaceKeys` it encrypts with the namespace's current key and decrypts only
        with the namespace's keys."""
        self = cls.__new__(cls)
        self._codec = codec
        self._namespace = namespace
        return self

    @property
    def codec(self) -> PayloadCodec:
        return self._codec

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        encrypt = self._codec.encrypt_payload_bytes
        ns = self._namespace
        return [Payload.FromString(encrypt(p.SerializeToString(), ns)) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decrypt = self._codec.decrypt_payload_bytes
        ns = self._namespace
        return [
            Payload.FromString(decrypt(p.SerializeToString(), ns))
            if p.metadata.get(ENCODING_KEY) == ENCODING_ENCRYPTED
            else p
            for p in payloads
        ]
