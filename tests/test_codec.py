"""proxy.codec: the AES-256-GCM payload codec and its key ring, checked against the format."""

from __future__ import annotations

import base64
import os
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload as TemporalPayload

from proxy.codec import (
    COMPRESSION_KEY,
    CodecError,
    KeyRing,
    Payload,
    PayloadCodec,
)
from proxy.config import CodecConfig, parse_config
from proxy.errors import ConfigError, ProxyError

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_C = os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def plain(data: bytes = b'{"hello":"world"}', encoding: bytes = b"json/plain") -> Payload:
    return Payload(metadata={"encoding": encoding}, data=data)


def codec(
    keys: dict[str, bytes] | None = None,
    current: str = "a",
    *,
    namespace_keys: dict[str, str] | None = None,
    compress: bool = False,
) -> PayloadCodec:
    return PayloadCodec(
        KeyRing(keys or {"a": KEY_A}),
        encrypt_key_id=current,
        namespace_keys=namespace_keys,
        compress=compress,
    )


def independent_decrypt(outer: Payload | TemporalPayload, key: bytes) -> TemporalPayload:
    """The format, written out from its description, using temporalio's own Payload class."""
    assert outer.metadata["encoding"] == b"binary/encrypted"
    nonce, sealed = outer.data[:12], outer.data[12:]
    plaintext = AESGCM(key).decrypt(nonce, sealed, None)
    return TemporalPayload.FromString(plaintext)


def test_round_trip_preserves_every_field() -> None:
    c = codec()
    original = plain()
    original.external_payloads.add(size_bytes=12345)
    original.metadata["messageType"] = b"\x00\xffbinary"
    [encoded] = c.encode([original])
    assert encoded != original
    [decoded] = c.decode([encoded])
    assert decoded == original
    assert decoded.SerializeToString(deterministic=True) == original.SerializeToString(
        deterministic=True
    )


def test_encrypted_bytes_follow_the_sample_format() -> None:
    c = codec()
    original = plain(b"secret input")
    [encoded] = c.encode([original])
    assert dict(encoded.metadata) == {
        "encoding": b"binary/encrypted",
        "encryption-key-id": b"a",
    }
    assert not encoded.external_payloads
    # 12-byte nonce + ciphertext of the whole serialized payload + 16-byte tag.
    assert len(encoded.data) == 12 + len(original.SerializeToString()) + 16
    assert b"secret input" not in encoded.data
    inner = independent_decrypt(encoded, KEY_A)
    assert inner.metadata["encoding"] == b"json/plain"
    assert inner.data == b"secret input"


def test_nonce_is_random_per_payload() -> None:
    c = codec()
    first, second = c.encode([plain(), plain()])
    assert first.data[:12] != second.data[:12]
    assert first.data != second.data


def test_decodes_what_an_independent_encryptor_wrote() -> None:
    inner = TemporalPayload(metadata={"encoding": b"json/plain"}, data=b'"from a worker"')
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(KEY_A).encrypt(nonce, inner.SerializeToString(), None)
    outer = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"a"}, data=sealed
    )
    [decoded] = codec().decode([outer])
    assert decoded.SerializeToString() == inner.SerializeToString()


def test_non_encrypted_payloads_pass_through() -> None:
    c = codec()
    items = [plain(), plain(b"", b"binary/null"), Payload()]
    assert c.decode(items) == items
    raw = items[0].SerializeToString()
    assert c.decrypt_payload_bytes(raw) == raw


def test_unknown_key_id_fails_clearly() -> None:
    [encoded] = codec({"old": KEY_A}, "old").encode([plain()])
    with pytest.raises(CodecError, match="unknown encryption key id 'old'") as info:
        codec({"new": KEY_B}, "new").decode([encoded])
    assert isinstance(info.value, ProxyError)


def test_missing_key_id_fails() -> None:
    [encoded] = codec().encode([plain()])
    del encoded.metadata["encryption-key-id"]
    with pytest.raises(CodecError, match="no encryption-key-id"):
        codec().decode([encoded])


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1])
def test_tampered_ciphertext_fails_authentication(position: int) -> None:
    [encoded] = codec().encode([plain()])
    data = bytearray(encoded.data)
    data[position] ^= 0x01
    encoded.data = bytes(data)
    with pytest.raises(CodecError, match="failed authentication"):
        codec().decode([encoded])


def test_wrong_key_under_the_right_id_fails_authentication() -> None:
    [encoded] = codec({"a": KEY_A}).encode([plain()])
    with pytest.raises(CodecError, match="failed authentication"):
        codec({"a": KEY_B}).decode([encoded])


def test_truncated_ciphertext_fails() -> None:
    [encoded] = codec().encode([plain()])
    encoded.data = encoded.data[:20]
    with pytest.raises(CodecError, match="too short"):
        codec().decode([encoded])


def test_rotation_old_key_still_decodes_and_new_payloads_use_the_new_id() -> None:
    before = codec({"k1": KEY_A}, "k1")
    [old] = before.encode([plain(b"old")])
    after = codec({"k1": KEY_A, "k2": KEY_B}, "k2")
    [new] = after.encode([plain(b"new")])
    assert old.metadata["encryption-key-id"] == b"k1"
    assert new.metadata["encryption-key-id"] == b"k2"
    assert independent_decrypt(new, KEY_B).data == b"new"
    assert [p.data for p in after.decode([old, new])] == [b"old", b"new"]
    # The retired codec cannot read what the new key wrote.
    with pytest.raises(CodecError, match="unknown encryption key id 'k2'"):
        before.decode([new])


def test_namespace_keys_choose_the_key() -> None:
    c = codec({"a": KEY_A, "b": KEY_B}, "a", namespace_keys={"billing": "b"})
    [billing] = c.encode([plain()], namespace="billing")
    [other] = c.encode([plain()], namespace="orders")
    [default] = c.encode([plain()])
    assert billing.metadata["encryption-key-id"] == b"b"
    assert other.metadata["encryption-key-id"] == b"a"
    assert default.metadata["encryption-key-id"] == b"a"
    independent_decrypt(billing, KEY_B)
    assert c.key_id_for("billing") == "b"
    # Decoding does not depend on the namespace: the key id travels with the payload.
    assert c.decode([billing, other]) == [plain(), plain()]


def test_compression_marks_and_round_trips() -> None:
    data = b'{"text": "' + b"abc" * 2000 + b'"}'
    c = codec(compress=True)
    [packed] = c.encode([plain(data)])
    assert packed.metadata[COMPRESSION_KEY] == b"zlib"
    assert len(packed.data) < len(data) // 10
    # The plaintext is the zlib stream of the serialized payload.
    nonce, sealed = packed.data[:12], packed.data[12:]
    inner = zlib.decompress(AESGCM(KEY_A).decrypt(nonce, sealed, None))
    assert TemporalPayload.FromString(inner).data == data
    assert c.decode([packed]) == [plain(data)]
    # A codec without compression still decodes it: the marker is what counts.
    assert codec().decode([packed]) == [plain(data)]


def test_compression_skipped_when_it_does_not_help() -> None:
    [encoded] = codec(compress=True).encode([plain(os.urandom(64))])
    assert COMPRESSION_KEY not in encoded.metadata
    assert independent_decrypt(encoded, KEY_A).metadata["encoding"] == b"json/plain"


def test_unknown_compression_fails() -> None:
    [encoded] = codec().encode([plain()])
    encoded.metadata[COMPRESSION_KEY] = b"brotli"
    with pytest.raises(CodecError, match="unsupported"):
        codec().decode([encoded])


def test_corrupt_compressed_plaintext_fails() -> None:
    # Authentic ciphertext whose plaintext claims to be zlib but is not.
    [encoded] = codec().encode([plain()])
    encoded.metadata[COMPRESSION_KEY] = b"zlib"
    with pytest.raises(CodecError, match="zlib"):
        codec().decode([encoded])


def test_bytes_api_matches_the_message_api() -> None:
    c = codec({"a": KEY_A, "b": KEY_B}, "a", namespace_keys={"ns": "b"})
    raw = plain(b"bytes").SerializeToString()
    wrapped = c.encrypt_payload_bytes(raw, "ns")
    outer = TemporalPayload.FromString(wrapped)
    assert outer.metadata["encryption-key-id"] == b"b"
    assert c.decrypt_payload_bytes(wrapped) == raw
    with pytest.raises(CodecError, match="not a valid Payload"):
        c.decrypt_payload_bytes(b"\xff\xff\xff")


# ---------------------------------------------------------------------------- key ring


def test_key_ring_from_config_base64_and_file(tmp_path: Path) -> None:
    key_file = tmp_path / "k2.key"
    key_file.write_text(b64(KEY_B) + "\n")
    ring = KeyRing.from_config({"k1": b64(KEY_A), "k2": f"file:{key_file}"})
    assert ring.ids == ("k1", "k2")
    assert "k2" in ring and "k3" not in ring
    sealed = ring.seal("k2", b"x")
    assert AESGCM(KEY_B).decrypt(sealed[:12], sealed[12:], None) == b"x"
    assert "k1" in repr(ring) and b64(KEY_A) not in repr(ring)


@pytest.mark.parametrize("size", [16, 24, 31, 33, 0])
def test_bad_key_length_is_a_config_error_with_the_path(size: int) -> None:
    secret = b64(b"\x01" * size)
    with pytest.raises(ConfigError) as info:
        KeyRing.from_config({"short": secret})
    assert info.value.path == "codec.keys.short"
    assert f"got {size}" in str(info.value)
    if secret:
        assert secret not in str(info.value)


def test_bad_base64_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.from_config({"k": "not*base64!"})
    assert info.value.path == "codec.keys.k"
    assert "not*base64!" not in str(info.value)


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.from_config({"k": f"file:{tmp_path / 'absent'}"})
    assert info.value.path == "codec.keys.k"
    assert "cannot read key file" in str(info.value)


def test_encrypt_key_id_must_be_in_the_ring() -> None:
    with pytest.raises(ConfigError) as info:
        PayloadCodec(KeyRing({"a": KEY_A}), encrypt_key_id="b")
    assert info.value.path == "codec.encryptKeyId"
    with pytest.raises(ConfigError) as info:
        PayloadCodec(KeyRing({"a": KEY_A}), encrypt_key_id="a", namespace_keys={"ns": "zz"})
    assert info.value.path == "codec.namespaceKeys.ns"


def test_from_config_end_to_end(tmp_path: Path) -> None:
    key_file = tmp_path / "current.key"
    key_file.write_text(b64(KEY_C))
    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {"claimMapper": "noop"},
            "codec": {
                "enabled": True,
                "keys": {"old": b64(KEY_A), "current": f"file:{key_file}"},
                "encryptKeyId": "current",
                "namespaceKeys": {"legacy": "old"},
                "compress": True,
            },
        },
        env={},
    )
    c = PayloadCodec.from_config(cfg.codec)
    assert c.key_id_for() == "current" and c.key_id_for("legacy") == "old"
    [encoded] = c.encode([plain(b"z" * 500)])
    assert encoded.metadata["encryption-key-id"] == b"current"
    assert encoded.metadata[COMPRESSION_KEY] == b"zlib"
    assert c.decode([encoded]) == [plain(b"z" * 500)]
    with pytest.raises(ConfigError, match=r"codec\.keys\.bad"):
        PayloadCodec.from_config(CodecConfig(keys={"bad": b64(b"x" * 8)}, encrypt_key_id="bad"))
