"""proxy.codec: the AES-256-GCM payload codec and its key ring, checked against the format."""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload as TemporalPayload

from proxy.codec.payload import (
    COMPRESSION_KEY,
    CodecError,
    KeyNotAllowedError,
    KeyRing,
    NoNamespaceKeysError,
    Payload,
    PayloadCodec,
)
from proxy.config.parse import parse_config
from proxy.config.schema import CodecConfig
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
    namespace_keys: Mapping[str, str | Sequence[str]] | None = None,
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
    c = codec({"a": KEY_A, "b": KEY_B}, "a", namespace_keys={"billing": "b", "*": "a"})
    [billing] = c.encode([plain()], namespace="billing")
    [other] = c.encode([plain()], namespace="orders")
    [default] = c.encode([plain()])
    assert billing.metadata["encryption-key-id"] == b"b"
    assert other.metadata["encryption-key-id"] == b"a"
    assert default.metadata["encryption-key-id"] == b"a"
    independent_decrypt(billing, KEY_B)
    assert c.key_id_for("billing") == "b"
    assert c.decode([billing], namespace="billing") == [plain()]
    assert c.decode([other, default], namespace="orders") == [plain(), plain()]


def test_without_namespace_keys_every_namespace_shares_the_ring() -> None:
    c = codec({"a": KEY_A, "b": KEY_B}, "b")
    assert not c.isolated
    [old] = codec({"a": KEY_A}, "a").encode([plain(b"old")])
    [new] = c.encode([plain(b"new")], namespace="payments")
    assert new.metadata["encryption-key-id"] == b"b"
    for ns in ("", "default", "payments"):
        assert [p.data for p in c.decode([old, new], namespace=ns)] == [b"old", b"new"]
    assert c.key_ids_for("anything") == ("b", "a")


def test_namespace_keys_isolate_namespaces() -> None:
    """A reader of `default` cannot have `payments`' payloads decrypted at /default/decode."""
    keys = {"pay-new": KEY_A, "pay-old": KEY_B, "dflt": KEY_C}
    c = codec(keys, "", namespace_keys={"payments": ["pay-new", "pay-old"], "default": "dflt"})
    assert c.isolated
    [pay_new] = c.encode([plain(b"p2")], namespace="payments")
    [pay_old] = codec(keys, "pay-old").encode([plain(b"p1")])
    [dflt] = c.encode([plain(b"d")], namespace="default")
    assert pay_new.metadata["encryption-key-id"] == b"pay-new"
    assert dflt.metadata["encryption-key-id"] == b"dflt"
    # Its own namespace decodes with the current and the previous key.
    assert [p.data for p in c.decode([pay_new, pay_old], namespace="payments")] == [b"p2", b"p1"]
    assert c.decode([dflt], namespace="default") == [plain(b"d")]
    # Another namespace's payload is refused by key id, before any decryption, both ways.
    for payload, ns in ((pay_new, "default"), (pay_old, "default"), (dflt, "payments")):
        with pytest.raises(KeyNotAllowedError, match="not a key of namespace"):
            c.decode([payload], namespace=ns)
        with pytest.raises(KeyNotAllowedError):
            c.decrypt_payload_bytes(payload.SerializeToString(), ns)
    # Relabelling the ciphertext with the namespace's own key id fails authentication.
    forged = Payload()
    forged.CopyFrom(pay_new)
    forged.metadata["encryption-key-id"] = b"dflt"
    with pytest.raises(CodecError, match="failed authentication"):
        c.decode([forged], namespace="default")
    # Plaintext payloads pass through for a namespace that has keys.
    assert c.decode([plain()], namespace="default") == [plain()]


def test_unlisted_namespaces_have_no_keys_unless_a_wildcard_is_set() -> None:
    keys = {"pay": KEY_A, "shared": KEY_B}
    strict = codec(keys, "shared", namespace_keys={"payments": "pay"})
    [shared] = codec(keys, "shared").encode([plain()])
    for ns in ("", "orders"):
        with pytest.raises(NoNamespaceKeysError, match=f"namespace {ns!r} has no codec keys"):
            strict.encode([plain()], namespace=ns)
        with pytest.raises(NoNamespaceKeysError):
            strict.decode([shared], namespace=ns)
        with pytest.raises(NoNamespaceKeysError):
            strict.decode([plain()], namespace=ns)
    # `*` gives every other namespace its keys, still not the listed namespaces' keys.
    wild = codec(keys, "", namespace_keys={"payments": "pay", "*": ["shared"]})
    [pay] = wild.encode([plain()], namespace="payments")
    [orders] = wild.encode([plain()], namespace="orders")
    assert orders.metadata["encryption-key-id"] == b"shared"
    assert wild.decode([shared, orders], namespace="orders") == [plain(), plain()]
    with pytest.raises(KeyNotAllowedError):
        wild.decode([pay], namespace="orders")
    with pytest.raises(KeyNotAllowedError):
        wild.decode([shared], namespace="payments")


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
    assert c.decrypt_payload_bytes(wrapped, "ns") == raw
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
    ring = KeyRing({"a": KEY_A, "b": KEY_B})
    for spec, path in (
        (["a", "zz"], "codec.namespaceKeys.ns[1]"),
        (["a", "a"], "codec.namespaceKeys.ns[1]"),
        ([], "codec.namespaceKeys.ns"),
    ):
        with pytest.raises(ConfigError) as info:
            PayloadCodec(ring, namespace_keys={"ns": spec})
        assert info.value.path == path, spec
    # With namespaceKeys the shared current key may be left out; without, it is required.
    assert PayloadCodec(ring, namespace_keys={"ns": ["b", "a"]}).key_id_for("ns") == "b"
    with pytest.raises(ConfigError, match="must name one of"):
        PayloadCodec(ring)


def test_from_config_end_to_end(tmp_path: Path) -> None:
    key_file = tmp_path / "current.key"
    key_file.write_text(b64(KEY_C))
    cfg = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "admin": {"address": "127.0.0.1:9090"},  # unauthenticated codec: loopback only
            "authorization": {"claimMapper": "noop"},
            "codec": {
                "enabled": True,
                "keys": {"old": b64(KEY_A), "current": f"file:{key_file}"},
                "encryptKeyId": "current",
                "namespaceKeys": {"legacy": "old", "*": ["current", "old"]},
                "compress": True,
            },
        },
        env={},
    )
    assert cfg.codec.namespace_keys == {"legacy": ("old",), "*": ("current", "old")}
    c = PayloadCodec.from_config(cfg.codec)
    assert c.key_id_for() == "current" and c.key_id_for("legacy") == "old"
    [encoded] = c.encode([plain(b"z" * 500)])
    assert encoded.metadata["encryption-key-id"] == b"current"
    assert encoded.metadata[COMPRESSION_KEY] == b"zlib"
    assert c.decode([encoded]) == [plain(b"z" * 500)]
    with pytest.raises(ConfigError, match=r"codec\.keys\.bad"):
        PayloadCodec.from_config(CodecConfig(keys={"bad": b64(b"x" * 8)}, encrypt_key_id="bad"))


# ------------------------------------------------------------------------- config keys


def _codec_cfg(**codec_over: object) -> CodecConfig:
    raw = {
        "upstream": {"address": "127.0.0.1:7233"},
        "admin": {"address": "127.0.0.1:9090"},  # unauthenticated codec: loopback only
        "authorization": {"claimMapper": "noop"},
        "codec": {"enabled": True, "keys": {"a": b64(KEY_A), "b": b64(KEY_B)}, **codec_over},
    }
    return parse_config(raw, env={}).codec


def test_codec_limits_have_documented_defaults() -> None:
    cfg = _codec_cfg(encryptKeyId="a")
    assert (cfg.max_body_bytes, cfg.max_payloads, cfg.max_json_depth) == (8 << 20, 1000, 16)
    assert cfg.max_concurrent_requests == 2
    tuned = _codec_cfg(
        encryptKeyId="a",
        maxBodyBytes=65536,
        maxPayloads=10,
        maxJsonDepth=8,
        maxConcurrentRequests=4,
    )
    assert (tuned.max_body_bytes, tuned.max_payloads, tuned.max_json_depth) == (65536, 10, 8)
    assert tuned.max_concurrent_requests == 4
    for key, value in (
        ("maxBodyBytes", 10),
        ("maxPayloads", 0),
        ("maxJsonDepth", 3),
        ("maxConcurrentRequests", 0),
    ):
        with pytest.raises(ConfigError) as info:
            _codec_cfg(encryptKeyId="a", **{key: value})
        assert info.value.path == f"codec.{key}"


def test_namespace_keys_take_one_id_or_a_list() -> None:
    cfg = _codec_cfg(namespaceKeys={"payments": ["b", "a"], "default": "a"})
    assert cfg.namespace_keys == {"payments": ("b", "a"), "default": ("a",)}
    assert cfg.encrypt_key_id == ""  # optional once every namespace's key is listed
    for spec, path in (
        ({"payments": ["b", "zz"]}, "codec.namespaceKeys.payments[1]"),
        ({"payments": "zz"}, "codec.namespaceKeys.payments"),
        ({"payments": []}, "codec.namespaceKeys.payments"),
        ({"payments": [["a"]]}, "codec.namespaceKeys.payments[0]"),
    ):
        with pytest.raises(ConfigError) as info:
            _codec_cfg(encryptKeyId="a", namespaceKeys=spec)
        assert info.value.path == path, spec
    with pytest.raises(ConfigError) as info:
        _codec_cfg()
    assert info.value.path == "codec.encryptKeyId"
