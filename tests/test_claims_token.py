"""The JWS core both token mappers use: each rejection once, both JSON dialects, every signature
family, and the verified-token cache. The mappers' policies are tested in test_claims_jwt/idp."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from proxy.claims.token import (
    JsonDialect,
    TokenCache,
    Verified,
    decode_jws,
    key_fits,
    key_type_fits,
    parse_authorization_header,
    signature_valid,
)
from proxy.errors import CredentialError
from proxy.model import Claims, Reason
from tests.jwt_helpers import (
    b64url,
    ec_key,
    rsa_key,
    sign_es256_der,
    sign_es256_raw,
    sign_rs256,
    small_rsa_key,
)

GO, STRICT = JsonDialect.GO, JsonDialect.STRICT
HEAD = b64url(b'{"alg":"RS256"}')
BODY = b64url(b'{"sub":"a"}')


def bearer(payload: bytes, header: str = HEAD) -> str:
    return f"Bearer {header}.{b64url(payload)}."


def refused(authorization: str, dialect: JsonDialect = STRICT) -> CredentialError:
    with pytest.raises(CredentialError) as caught:
        decode_jws(authorization, dialect)
    assert caught.value.reason is Reason.BAD_TOKEN_FORMAT
    return caught.value


# ------------------------------------------------------------------------ Bearer header


def test_bearer_scheme_is_case_insensitive_and_the_token_is_not_trimmed() -> None:
    assert parse_authorization_header("bEaReR abc") == "abc"
    assert parse_authorization_header("Bearer  abc") == " abc"


@pytest.mark.parametrize("value", ["Bearer", "Basic abc", "Bearerabc"])
def test_a_header_that_is_not_bearer_is_refused(value: str) -> None:
    with pytest.raises(CredentialError) as caught:
        parse_authorization_header(value)
    assert caught.value.reason is Reason.BAD_TOKEN_FORMAT


# ------------------------------------------------------------------------ segments and base64url


def test_a_well_formed_token_decodes_and_keeps_its_signing_input() -> None:
    jws = decode_jws(f"Bearer {HEAD}.{BODY}.{b64url(b'sig')}", STRICT)
    assert jws.header == {"alg": "RS256"} and jws.payload == {"sub": "a"}
    assert jws.signing_input == f"{HEAD}.{BODY}".encode()
    assert jws.signature() == b"sig"


@pytest.mark.parametrize("token", [f"{HEAD}.{BODY}", f"{HEAD}.{BODY}.x.y", ""])
def test_not_three_segments_is_refused(token: str) -> None:
    assert "3 segments" in refused("Bearer " + token).detail


@pytest.mark.parametrize("segment", [HEAD + "=", HEAD[:-1] + "+", HEAD[:-1] + "/", "abcde"])
def test_a_segment_that_is_not_unpadded_base64url_is_refused(segment: str) -> None:
    assert "base64url" in refused(f"Bearer {segment}.{BODY}.").detail


def test_a_bad_signature_segment_is_refused_only_when_read() -> None:
    jws = decode_jws(f"Bearer {HEAD}.{BODY}.a=", GO)  # the mapper decides when to read it
    with pytest.raises(CredentialError) as caught:
        jws.signature()
    assert caught.value.reason is Reason.BAD_TOKEN_FORMAT


# ------------------------------------------------------------------------ JSON


@pytest.mark.parametrize("dialect", [GO, STRICT])
@pytest.mark.parametrize(
    "raw", [b"{", b"NaN", b'{"a": Infinity}', b'{"a": -Infinity}', b"[" * 100_000]
)
def test_invalid_json_and_non_json_constants_are_refused(raw: bytes, dialect: JsonDialect) -> None:
    assert "not valid JSON" in refused(f"Bearer {b64url(raw)}.{BODY}.", dialect).detail


@pytest.mark.parametrize("dialect", [GO, STRICT])
@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1", b"null"])
def test_a_header_that_is_not_an_object_is_refused(raw: bytes, dialect: JsonDialect) -> None:
    assert "not a JSON object" in refused(f"Bearer {b64url(raw)}.{BODY}.", dialect).detail


@pytest.mark.parametrize("dialect", [GO, STRICT])
def test_a_payload_that_is_not_an_object_is_refused(dialect: JsonDialect) -> None:
    error = refused(bearer(b"[1]"), dialect)
    assert "payload is not a JSON object" in error.detail


def test_go_dialect_reads_the_payload_as_golang_jwt_does() -> None:
    # The stream decoder: the first value counts, trailing bytes are ignored, null is {}.
    assert decode_jws(bearer(b"{} junk"), GO).payload == {}
    assert decode_jws(bearer(b"null"), GO).payload == {}
    # Invalid UTF-8 is replaced, not refused.
    assert decode_jws(bearer(b'{"sub":"a\xff"}'), GO).payload == {"sub": "a\ufffd"}
    # The header is read whole: trailing bytes are refused there.
    refused(f"Bearer {b64url(b'{} junk')}.{BODY}.", GO)


def test_go_dialect_refuses_a_number_that_overflows_float64() -> None:
    refused(bearer(b'{"exp":1e999}'), GO)
    # The strict dialect reads it (as inf); the idp mapper's claim checks refuse a non-finite time.
    assert decode_jws(bearer(b'{"n":1e999}'), STRICT).payload["n"] == float("inf")


@pytest.mark.parametrize("payload", [b"{} junk", b"null", b'{"sub":"a\xff"}'])
def test_strict_dialect_refuses_what_go_tolerates(payload: bytes) -> None:
    refused(bearer(payload), STRICT)


def test_no_detail_echoes_the_token() -> None:
    secret = b64url(b'{"sub":"SECRET-VALUE"')  # invalid JSON carrying a recognisable value
    error = refused(f"Bearer {HEAD}.{secret}.{b64url(b'sig')}")
    assert secret not in error.detail and "SECRET" not in error.detail


# ------------------------------------------------------------------------ signatures

DATA = b"header.payload"


def ps256(data: bytes) -> bytes:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return rsa_key().sign(data, pss, hashes.SHA256())


def es384(data: bytes) -> bytes:
    r, s = decode_dss_signature(ec_key("ec", "P-384").sign(data, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_each_signature_family_verifies_and_a_tampered_input_does_not() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed4 = ed448.Ed448PrivateKey.generate()
    cases: list[tuple[str, PublicKeyTypes, bytes]] = [
        ("RS256", rsa_key().public_key(), sign_rs256(rsa_key(), DATA)),
        ("PS256", rsa_key().public_key(), ps256(DATA)),
        ("ES256", ec_key().public_key(), sign_es256_raw(ec_key(), DATA)),
        ("ES384", ec_key("ec", "P-384").public_key(), es384(DATA)),
        ("EdDSA", ed.public_key(), ed.sign(DATA)),
        ("EdDSA", ed4.public_key(), ed4.sign(DATA)),
    ]
    for alg, key, sig in cases:
        assert signature_valid(alg, key, DATA, sig), alg
        assert not signature_valid(alg, key, DATA + b"x", sig), alg


def test_signature_length_encoding_and_key_type_must_match_the_algorithm() -> None:
    rsa_sig = sign_rs256(rsa_key(), DATA)
    # RSA: exactly the modulus length (a leading zero byte is not tolerated).
    assert not signature_valid("RS256", rsa_key().public_key(), DATA, b"\x00" + rsa_sig)
    # ECDSA: raw R||S of exactly the curve's size (a zero-padded S is the same number), never DER.
    raw = sign_es256_raw(ec_key(), DATA)
    assert not signature_valid("ES256", ec_key().public_key(), DATA, raw[:32] + b"\x00" + raw[32:])
    assert not signature_valid("ES256", ec_key().public_key(), DATA, sign_es256_der(ec_key(), DATA))
    # A valid signature under a key of the wrong type, or an algorithm we do not know.
    assert not signature_valid("ES256", rsa_key().public_key(), DATA, rsa_sig)
    assert not signature_valid("HS256", rsa_key().public_key(), DATA, rsa_sig)
    assert not signature_valid("RS384", rsa_key().public_key(), DATA, rsa_sig)  # other hash


def test_key_fit_checks_type_curve_and_rsa_size() -> None:
    small = small_rsa_key(1024).public_key()
    assert key_type_fits("RS256", small) and not key_fits("RS256", small, min_rsa_bits=2048)
    assert key_fits("PS512", rsa_key().public_key(), min_rsa_bits=2048)
    p384 = ec_key("ec", "P-384").public_key()
    assert key_type_fits("ES256", p384) and not key_fits("ES256", p384, min_rsa_bits=0)
    assert key_fits("ES384", p384, min_rsa_bits=0)
    assert key_fits("EdDSA", ed25519.Ed25519PrivateKey.generate().public_key(), min_rsa_bits=0)
    assert not key_type_fits("EdDSA", ec_key().public_key())
    assert not key_type_fits("HS256", rsa_key().public_key())


# ------------------------------------------------------------------------ verified-token cache


@dataclass
class KeySetStub:
    generation: int = 1


def verified(keys: KeySetStub, deadline: float = 100.0, subject: str = "a") -> Verified:
    return Verified(
        claims=Claims(subject=subject), deadline=deadline, keys=keys, generation=keys.generation
    )


def test_cache_serves_until_the_deadline_per_audience() -> None:
    cache, keys = TokenCache(10), KeySetStub()
    claims = cache.store("Bearer t", "aud", verified(keys, deadline=100.0))
    assert cache.lookup("Bearer t", "aud", 99.9) is claims
    assert cache.lookup("Bearer t", "other", 50.0) is None
    assert cache.lookup("Bearer t", "aud", 100.0) is None  # at the deadline: verify again
    assert len(cache) == 0  # and the stale entry is gone


def test_cache_forgets_a_token_when_its_key_set_changes() -> None:
    cache, keys = TokenCache(10), KeySetStub()
    cache.store("Bearer t", "", verified(keys))
    keys.generation += 1
    assert cache.lookup("Bearer t", "", 0.0) is None


def test_cache_evicts_the_least_recently_used() -> None:
    cache, keys = TokenCache(2), KeySetStub()
    cache.store("a", "", verified(keys))
    cache.store("b", "", verified(keys))
    assert cache.lookup("a", "", 0.0) is not None  # a is now the most recent
    cache.store("c", "", verified(keys))
    assert cache.lookup("b", "", 0.0) is None
    assert cache.lookup("a", "", 0.0) is not None and cache.lookup("c", "", 0.0) is not None


def test_cache_size_zero_stores_nothing_and_negative_is_refused() -> None:
    cache = TokenCache(0)
    assert cache.store("a", "", verified(KeySetStub())).subject == "a"
    assert len(cache) == 0
    with pytest.raises(ValueError):
        TokenCache(-1)
