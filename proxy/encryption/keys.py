"""A namespace's keys, and encrypting/decrypting one parsed Payload in place in the codec's format.

The format is `proxy.codec`'s (and `proxy.sdk_codec`'s): the whole serialized Payload is
AES-256-GCM sealed by the codec's `KeyRing` (12-byte nonce first) into a Payload with metadata
`encoding: binary/encrypted` and `encryption-key-id`; payloads compressed by the codec's
`encryption-compression: zlib` extension are accepted on decryption. The payload objects here are
upb messages of the proxy's own descriptor pool, edited in place so the enclosing message is
re-serialized once.

Merge note: `open_sealed` mirrors `PayloadCodec._open` and `_inflate` in proxy/codec.py; once
the codec package exposes an equivalent public function, this module should call it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from proxy.codec.payload import (
    COMPRESSION_KEY,
    COMPRESSION_ZLIB,
    ENCODING_ENCRYPTED,
    ENCODING_KEY,
    KEY_ID_KEY,
    CodecError,
    KeyRing,
)
from proxy.encryption.errors import DecryptFailure
from proxy.errors import ConfigError

__all__ = [
    "NamespaceKeys",
    "PayloadOpenError",
    "is_encrypted",
    "open_sealed",
]

# Same bound as the codec: a decompressed payload larger than a gRPC message never came from us.
MAX_DECOMPRESSED_SIZE = 128 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceKeys:
    """The key new payloads of one namespace are sealed with, and the ids allowed to open them.

    Backed by the codec's key ring (`codec.keys`). `decrypt_key_ids` holds the current id and the
    ids of earlier rotations (the wiring passes the ring's ids, or `codec.namespaceKeys`' limit).
    """

    ring: KeyRing
    encrypt_key_id: str
    decrypt_key_ids: frozenset[str]
    config_path: str = "encryption.namespaces"

    def __post_init__(self) -> None:
        if self.encrypt_key_id not in self.ring:
            raise ConfigError(
                f"{self.config_path}.keyId", f"key id {self.encrypt_key_id!r} is not in codec.keys"
            )
        if self.encrypt_key_id not in self.decrypt_key_ids:
            raise ConfigError(f"{self.config_path}.keyId", "must also be allowed to decrypt")
        unknown = sorted(k for k in self.decrypt_key_ids if k not in self.ring)
        if unknown:
            raise ConfigError(self.config_path, f"key ids {unknown} are not in codec.keys")

    @classmethod
    def for_ring(cls, ring: KeyRing, encrypt_key_id: str, *, path: str = "") -> NamespaceKeys:
        """Encrypt with `encrypt_key_id`, decrypt with any key of the ring (rotation-friendly)."""
        return cls(
            ring=ring,
            encrypt_key_id=encrypt_key_id,
            decrypt_key_ids=frozenset(ring.ids),
            config_path=path or "encryption.namespaces",
        )

    def seal_into(self, payload: Any) -> None:
        """Replace a parsed Payload by its encrypted form (the caller checked it is plaintext)."""
        kid = self.encrypt_key_id
        sealed = self.ring.seal(kid, payload.SerializeToString())
        payload.Clear()
        metadata = payload.metadata
        metadata[ENCODING_KEY] = ENCODING_ENCRYPTED
        metadata[KEY_ID_KEY] = kid.encode()
        payload.data = sealed

    def open_into(self, payload: Any) -> None:
        """Replace an encrypted parsed Payload by the one inside; `PayloadOpenError` if it can't."""
        payload.ParseFromString(open_sealed(self, payload.metadata, payload.data))


class PayloadOpenError(Exception):
    """Internal: why one payload did not open (the caller adds the method)."""

    def __init__(self, reason: DecryptFailure, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_encrypted(payload: Any) -> bool:
    return bool(payload.metadata.get(ENCODING_KEY) == ENCODING_ENCRYPTED)


def open_sealed(keys: NamespaceKeys, metadata: Any, data: bytes) -> bytes:
    """The serialized inner Payload of an encrypted one (metadata map and data given)."""
    raw_kid = metadata.get(KEY_ID_KEY)
    if not raw_kid:
        raise PayloadOpenError(DecryptFailure.MALFORMED, f"no {KEY_ID_KEY} metadata")
    try:
        kid = raw_kid.decode()
    except UnicodeDecodeError:
        raise PayloadOpenError(DecryptFailure.MALFORMED, f"malformed {KEY_ID_KEY}") from None
    if kid not in keys.decrypt_key_ids:
        # Also a key the ring holds but this namespace may not use: never opened for it.
        raise PayloadOpenError(DecryptFailure.UNKNOWN_KEY, f"key id {kid!r} is not allowed")
    try:
        plaintext = keys.ring.unseal(kid, data)
    except CodecError as exc:
        # The id is in the ring (decrypt_key_ids is checked against it): only the tag can fail.
        raise PayloadOpenError(DecryptFailure.AUTHENTICATION, str(exc)) from None
    compression = metadata.get(COMPRESSION_KEY)
    if compression is None:
        return plaintext
    if compression != COMPRESSION_ZLIB:
        raise PayloadOpenError(DecryptFailure.MALFORMED, f"unsupported {COMPRESSION_KEY}")
    return _inflate(plaintext)


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED_SIZE)
    except zlib.error:
        raise PayloadOpenError(DecryptFailure.MALFORMED, "invalid zlib data") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise PayloadOpenError(DecryptFailure.MALFORMED, "compressed payload too large or cut")
    return out
