"""AES-256-GCM payload codec and key ring: the Codec Server's core, also used by SDK workers.

The format is the one Temporal's encryption samples use, so payloads written by their workers
decode here and the other way round:

* plaintext = the whole serialized `temporal.api.common.v1.Payload`;
* ciphertext = AES-256-GCM(key, nonce, plaintext, associated data = none), with a random
  12-byte nonce written before it (`data = nonce || ciphertext || 16-byte tag`);
* the result is a new Payload with `data` as above and metadata
  `encoding: binary/encrypted` and `encryption-key-id: <key id>`.

Our one extension, off unless `codec.compress` is set: the serialized Payload is zlib-compressed
before encryption, and the outer Payload then carries `encryption-compression: zlib`. It is only
applied when it makes the plaintext smaller. Payloads compressed this way decode only with this
codec (the server side or `proxy.sdk_codec`), not with Temporal's samples.

Decoding passes through payloads whose encoding is not `binary/encrypted`, decrypts with any key
of the ring (the current key for new data, older ones for rotation), and raises `CodecError` on an
unknown key id or a failed authentication. This module imports neither temporalio nor aiohttp.

Per-namespace keys (`namespace_keys`, the config's `codec.namespaceKeys`) isolate namespaces:
each listed namespace gets an ordered list of key ids, `[current, previous...]`; it encrypts with
the first and decrypts only with those listed. `*` lists the keys of every namespace not named.
A namespace that is neither named nor covered by `*` has no keys at all (fail closed). Without
`namespace_keys` every namespace shares the whole ring and encrypts with `encrypt_key_id`.
"""

from __future__ import annotations

import base64
import binascii
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from proxy._pb.temporal_auth_proxy.v1.payload_pb2 import Payload, Payloads
from proxy.config.schema import CodecConfig
from proxy.errors import ConfigError, ProxyError

__all__ = [
    "COMPRESSION_KEY",
    "COMPRESSION_ZLIB",
    "ENCODING_ENCRYPTED",
    "ENCODING_KEY",
    "KEY_ID_KEY",
    "KEY_SIZE",
    "NONCE_SIZE",
    "WILDCARD_NAMESPACE",
    "CodecError",
    "KeyNotAllowedError",
    "KeyRing",
    "NoNamespaceKeysError",
    "Payload",
    "PayloadCodec",
    "Payloads",
]

ENCODING_KEY = "encoding"
ENCODING_ENCRYPTED = b"binary/encrypted"
KEY_ID_KEY = "encryption-key-id"
# Our extension: present (value `zlib`) only when the plaintext was compressed before encryption.
COMPRESSION_KEY = "encryption-compression"
COMPRESSION_ZLIB = b"zlib"

_V = TypeVar("_V")

KEY_SIZE = 32  # AES-256
NONCE_SIZE = 12
TAG_SIZE = 16
# A decompressed payload larger than a gRPC message could be never came from a worker.
MAX_DECOMPRESSED_SIZE = 128 * 1024 * 1024
# In `namespace_keys`: the keys of every namespace not listed by name. Temporal namespace names
# cannot contain `*`, so it never collides with a real one.
WILDCARD_NAMESPACE = "*"


class CodecError(ProxyError):
    """A payload that cannot be encoded or decoded. The message names no key material."""


class KeyNotAllowedError(CodecError):
    """An encrypted payload under a key the request's namespace may not use (`namespaceKeys`)."""


class NoNamespaceKeysError(CodecError):
    """`namespaceKeys` is set and assigns the namespace no keys (and there is no `*` entry)."""


class KeyRing:
    """Key id -> 32-byte AES key. Immutable once built."""

    __slots__ = ("_aead", "_ids")

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        aead: dict[str, AESGCM] = {}
        for kid, key in keys.items():
            path = f"codec.keys.{kid}"
            if not kid:
                raise ConfigError("codec.keys", "a key id must not be empty")
            if len(key) != KEY_SIZE:
                raise ConfigError(path, f"must be {KEY_SIZE} bytes (AES-256), got {len(key)}")
            aead[kid] = AESGCM(bytes(key))
        if not aead:
            raise ConfigError("codec.keys", "at least one key is required")
        self._aead: Mapping[str, AESGCM] = MappingProxyType(aead)
        self._ids = tuple(sorted(aead))

    @classmethod
    def from_config(cls, keys: Mapping[str, str]) -> KeyRing:
        """Parse `codec.keys`: base64 of 32 bytes, or `file:/path` holding that base64 text."""
        return cls({kid: _load_key(kid, spec) for kid, spec in keys.items()})

    @property
    def ids(self) -> tuple[str, ...]:
        return self._ids

    def __contains__(self, kid: object) -> bool:
        return kid in self._aead

    def __repr__(self) -> str:
        return f"KeyRing(ids={self._ids!r})"

    def seal(self, kid: str, plaintext: bytes) -> bytes:
        """nonce || AES-256-GCM(plaintext), no associated data."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._get(kid).encrypt(nonce, plaintext, None)

    def unseal(self, kid: str, blob: bytes) -> bytes:
        """The inverse of `seal`; `CodecError` on an unknown key id or a failed tag check."""
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise CodecError(f"encrypted payload is too short ({len(blob)} bytes)")
        aead = self._get(kid)
        try:
            return aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], None)
        except InvalidTag as exc:
            raise CodecError(
                f"encrypted payload failed authentication with key id {kid!r}"
            ) from exc

    def _get(self, kid: str) -> AESGCM:
        try:
            return self._aead[kid]
        except KeyError:
            raise CodecError(f"unknown encryption key id {kid!r}") from None


def _load_key(kid: str, spec: str) -> bytes:
    path = f"codec.keys.{kid}"
    text = spec
    if spec.startswith("file:"):
        file = Path(spec.removeprefix("file:"))
        try:
            text = file.read_text(encoding="ascii")
        except OSError as exc:
            raise ConfigError(path, f"cannot read key file {file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(path, f"key file {file} must hold base64 text") from exc
    try:
        # Whitespace inside is tolerated: key files usually end with a newline.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(path, "is not valid base64 (expected base64 of a 32-byte key)") from exc


class PayloadCodec:
    """Encrypts payloads with the namespace's current key, decrypts with the namespace's keys."""

    __slots__ = ("_allowed", "_compress", "_encrypt_key_id", "_keys", "_namespace_keys")

    def __init__(
        self,
        keys: KeyRing,
        *,
        encrypt_key_id: str = "",
        namespace_keys: Mapping[str, str | Sequence[str]] | None = None,
        compress: bool = False,
    ) -> None:
        ns_keys = _namespace_keys(keys, namespace_keys or {})
        # With per-namespace keys the shared current key is optional (it is only the fallback
        # of a ring without namespaceKeys); when given it must still exist.
        if (encrypt_key_id or not ns_keys) and encrypt_key_id not in keys:
            raise ConfigError("codec.encryptKeyId", "must name one of codec.keys")
        self._keys = keys
        self._encrypt_key_id = encrypt_key_id
        self._namespace_keys: Mapping[str, tuple[str, ...]] = MappingProxyType(ns_keys)
        self._allowed: Mapping[str, frozenset[str]] = MappingProxyType(
            {ns: frozenset(ids) for ns, ids in ns_keys.items()}
        )
        self._compress = compress

    @classmethod
    def from_config(cls, cfg: CodecConfig) -> PayloadCodec:
        return cls(
            KeyRing.from_config(cfg.keys),
            encrypt_key_id=cfg.encrypt_key_id,
            namespace_keys=cfg.namespace_keys,
            compress=cfg.compress,
        )

    @property
    def keys(self) -> KeyRing:
        return self._keys

    @property
    def isolated(self) -> bool:
        """True when `namespace_keys` limits which keys each namespace may use."""
        return bool(self._namespace_keys)

    def key_ids_for(self, namespace: str = "") -> tuple[str, ...]:
        """The keys `namespace` may use, current first; `NoNamespaceKeysError` if none."""
        if not self._namespace_keys:
            others = tuple(k for k in self._keys.ids if k != self._encrypt_key_id)
            return (self._encrypt_key_id, *others)
        return _for_namespace(self._namespace_keys, namespace)

    def key_id_for(self, namespace: str = "") -> str:
        """The key new payloads of `namespace` are encrypted with."""
        return self.key_ids_for(namespace)[0]

    def _allowed_for(self, namespace: str) -> frozenset[str] | None:
        """Key ids that decrypt for `namespace`; None: the whole ring (no namespaceKeys)."""
        if not self._namespace_keys:
            return None
        return _for_namespace(self._allowed, namespace)

    # ------------------------------------------------------------------ message level

    def encode(self, payloads: Sequence[Payload], namespace: str = "") -> list[Payload]:
        kid = self.key_id_for(namespace)
        return [self._encrypt(p.SerializeToString(), kid) for p in payloads]

    def decode(self, payloads: Sequence[Payload], namespace: str = "") -> list[Payload]:
        """Decrypt with the keys of `namespace`: a payload under any other key is refused."""
        allowed = self._allowed_for(namespace)
        return [self._decrypt(p, namespace, allowed) for p in payloads]

    # -------------------------------------------------------------------- bytes level
    # Serialized Payload in, serialized Payload out, so other protobuf classes of the same
    # message (temporalio's) reuse the codec without a conversion that could lose fields.

    def encrypt_payload_bytes(self, payload: bytes, namespace: str = "") -> bytes:
        """A serialized Payload -> the serialized `binary/encrypted` Payload wrapping it."""
        return self._encrypt(payload, self.key_id_for(namespace)).SerializeToString()

    def decrypt_payload_bytes(self, payload: bytes, namespace: str = "") -> bytes:
        """A serialized Payload -> the serialized inner Payload; not encrypted: unchanged."""
        outer = _parse(payload, "payload")
        if not _is_encrypted(outer):
            return payload
        return self._open(outer, namespace, self._allowed_for(namespace))

    # ------------------------------------------------------------------------ helpers

    def _encrypt(self, plaintext: bytes, kid: str) -> Payload:
        metadata = {ENCODING_KEY: ENCODING_ENCRYPTED, KEY_ID_KEY: kid.encode()}
        if self._compress:
            packed = zlib.compress(plaintext)
            if len(packed) < len(plaintext):
                plaintext = packed
                metadata[COMPRESSION_KEY] = COMPRESSION_ZLIB
        return Payload(metadata=metadata, data=self._keys.seal(kid, plaintext))

    def _decrypt(self, payload: Payload, namespace: str, allowed: frozenset[str] | None) -> Payload:
        if not _is_encrypted(payload):
            return payload
        return _parse(self._open(payload, namespace, allowed), "decrypted payload")

    def _open(self, outer: Payload, namespace: str, allowed: frozenset[str] | None) -> bytes:
        raw_kid = outer.metadata.get(KEY_ID_KEY)
        if not raw_kid:
            raise CodecError(f"encrypted payload has no {KEY_ID_KEY} metadata")
        try:
            kid = raw_kid.decode()
        except UnicodeDecodeError:
            raise CodecError(f"encrypted payload has a malformed {KEY_ID_KEY}") from None
        if allowed is not None and kid not in allowed:
            # Checked before any decryption: the key id is the caller's claim, the key the
            # namespace's. Relabelling another namespace's ciphertext then fails the tag check.
            raise KeyNotAllowedError(
                f"encrypted payload uses key id {kid[:64]!r}, which is not a key of namespace "
                f"{namespace[:256]!r} (codec.namespaceKeys)"
            )
        plaintext = self._keys.unseal(kid, outer.data)
        compression = outer.metadata.get(COMPRESSION_KEY)
        if compression is None:
            return plaintext
        if compression != COMPRESSION_ZLIB:
            raise CodecError(f"unsupported {COMPRESSION_KEY} {compression!r}")
        return _inflate(plaintext)


def _namespace_keys(
    keys: KeyRing, spec: Mapping[str, str | Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """`namespaceKeys` values are one key id or a list `[current, previous...]`."""
    out: dict[str, tuple[str, ...]] = {}
    for ns, value in spec.items():
        path = f"codec.namespaceKeys.{ns}"
        if not ns:
            raise ConfigError("codec.namespaceKeys", "a namespace name must not be empty")
        ids = (value,) if isinstance(value, str) else tuple(value)
        if not ids:
            raise ConfigError(path, "needs at least one key id (the first is the current key)")
        for i, kid in enumerate(ids):
            where = path if isinstance(value, str) else f"{path}[{i}]"
            if kid not in keys:
                raise ConfigError(where, f"key id {kid!r} is not in codec.keys")
            if kid in ids[:i]:
                raise ConfigError(where, f"key id {kid!r} is listed twice")
        out[ns] = ids
    return out


def _is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get(ENCODING_KEY) == ENCODING_ENCRYPTED


def _parse(data: bytes, what: str) -> Payload:
    try:
        return Payload.FromString(data)
    except DecodeError as exc:
        raise CodecError(f"{what} is not a valid Payload message") from exc


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED_SIZE)
    except zlib.error as exc:
        raise CodecError("compressed payload is not valid zlib data") from exc
    if inflater.unconsumed_tail:
        raise CodecError("compressed payload is larger than the decompression limit")
    if not inflater.eof:
        raise CodecError("compressed payload is truncated")
    return out


def _for_namespace(table: Mapping[str, _V], namespace: str) -> _V:
    """`namespace`'s entry of a namespaceKeys-derived table, else the `*` entry, else none."""
    entry = table.get(namespace)
    if entry is None:
        entry = table.get(WILDCARD_NAMESPACE)
    if entry is None:
        raise NoNamespaceKeysError(
            f"namespace {namespace!r} has no codec keys (codec.namespaceKeys)"
        )
    return entry
