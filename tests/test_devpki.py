from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proxy.codec.payload import KeyRing
from proxy.dev.pki import (
    DEV_CODEC_KEY_ID,
    SPIFFE_DEV_CLIENT,
    CertificateAuthority,
    ensure_dev_bundle,
    jwk_from_public_key,
    jwk_thumbprint,
    mint_token,
    write_dev_bundle,
)


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _verify_rs256(
    token: str, public_key: rsa.RSAPublicKey
) -> tuple[dict[str, Any], dict[str, Any]]:
    header_b64, payload_b64, signature_b64 = token.split(".")
    public_key.verify(
        _b64url(signature_b64),
        f"{header_b64}.{payload_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    return json.loads(_b64url(header_b64)), json.loads(_b64url(payload_b64))


def test_ca_is_a_ca_and_signs_leaves() -> None:
    ca = CertificateAuthority.create("test CA", key_type="rsa")
    leaf = ca.issue("svc", dns_names=("svc.test",), server=True)
    basic = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    assert ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    leaf.certificate.verify_directly_issued_by(ca.certificate)
    other = CertificateAuthority.create("other CA")
    with pytest.raises((ValueError, InvalidSignature)):
        leaf.certificate.verify_directly_issued_by(other.certificate)


def test_leaf_extensions_follow_the_flags() -> None:
    ca = CertificateAuthority.create("test CA")
    leaf = ca.issue(
        "both",
        dns_names=("a.test",),
        ip_addresses=("127.0.0.1", "::1"),
        uris=("spiffe://td/x",),
        organizational_units=("ops", "dev"),
        server=True,
        client=True,
    )
    cert = leaf.certificate
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _san(cert)
    assert san.get_values_for_type(x509.DNSName) == ["a.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://td/x"]
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert ous == ["ops", "dev"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert leaf.serial == cert.serial_number

    client_only = ca.issue("c", client=True).certificate
    assert _eku(client_only) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_validity_can_be_chosen() -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2020, 2, 1, tzinfo=dt.UTC)
    ca = CertificateAuthority.create("old CA", not_before=start, not_after=end)
    leaf = ca.issue("old", not_before=start, not_after=end, key_type="rsa")
    assert leaf.certificate.not_valid_after_utc == end
    assert ca.certificate.not_valid_before_utc == start
    assert isinstance(leaf.private_key, rsa.RSAPrivateKey)


def test_issued_cert_write_protects_the_key(tmp_path: Path) -> None:
    leaf = CertificateAuthority.create("ca").issue("x", server=True)
    cert_path, key_path = leaf.write(tmp_path / "out", "srv")
    assert cert_path.read_bytes() == leaf.cert_pem
    assert key_path.read_bytes() == leaf.key_pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert "key_pem" not in repr(leaf)


def test_dev_bundle_contents(tmp_path: Path) -> None:
    bundle = write_dev_bundle(tmp_path)
    ca = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())

    server = x509.load_pem_x509_certificate(bundle.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = _san(server)
    assert {"localhost", "proxy.test"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}

    client = x509.load_pem_x509_certificate(bundle.client_cert.read_bytes())
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-client"
    assert _san(client).get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_DEV_CLIENT]
    assert _san(client).get_values_for_type(x509.DNSName) == ["dev-client.test"]
    assert _eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    upstream = x509.load_pem_x509_certificate(bundle.upstream_cert.read_bytes())
    assert "temporal-frontend.test" in _san(upstream).get_values_for_type(x509.DNSName)
    internode = x509.load_pem_x509_certificate(bundle.internode_cert.read_bytes())
    assert _eku(internode) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    for key in (bundle.server_key, bundle.client_key, bundle.upstream_key, bundle.internode_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.jwt_key.stat().st_mode) == 0o600

    jwks = json.loads(bundle.jwks.read_text())
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == bundle.kid and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert "d" not in jwk  # public only
    signing_key = serialization.load_pem_private_key(bundle.jwt_key.read_bytes(), None)
    assert isinstance(signing_key, rsa.RSAPrivateKey) and signing_key.key_size == 2048
    public = RSAAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == signing_key.public_key().public_numbers()


def test_dev_bundle_has_a_private_codec_key_the_key_ring_loads(tmp_path: Path) -> None:
    bundle = write_dev_bundle(tmp_path)
    assert bundle.codec_key in bundle.files()
    assert stat.S_IMODE(bundle.codec_key.stat().st_mode) == 0o600
    assert len(base64.b64decode(bundle.codec_key.read_text(), validate=False)) == 32
    # Exactly as deploy/dev/proxy.yaml names it (`file:` + base64 text).
    ring = KeyRing.from_config({DEV_CODEC_KEY_ID: f"file:{bundle.codec_key}"})
    assert ring.ids == (DEV_CODEC_KEY_ID,)
    again = write_dev_bundle(tmp_path / "again")
    assert again.codec_key.read_bytes() != bundle.codec_key.read_bytes()


def test_ensure_dev_bundle_generates_only_when_absent(tmp_path: Path) -> None:
    first = ensure_dev_bundle(tmp_path)
    before = {p: p.read_bytes() for p in first.files()}
    second = ensure_dev_bundle(tmp_path)
    assert second == first
    assert {p: p.read_bytes() for p in second.files()} == before

    first.client_key.unlink()
    third = ensure_dev_bundle(tmp_path)
    assert third.client_key.is_file()
    assert third.ca_cert.read_bytes() != before[first.ca_cert]  # regenerated as a set


def test_mint_token_is_signed_and_carries_claims(tmp_path: Path) -> None:
    bundle = write_dev_bundle(tmp_path)
    token = mint_token(
        bundle.jwt_key.read_bytes(),
        kid=bundle.kid,
        subject="alice",
        permissions=["default:admin", "temporal-system:read"],
        ttl_seconds=60,
        audience="temporal",
        extra_claims={"iss": "dev"},
        now=1_700_000_000,
    )
    public = RSAAlgorithm.from_jwk(json.dumps(json.loads(bundle.jwks.read_text())["keys"][0]))
    assert isinstance(public, rsa.RSAPublicKey)
    header, payload = _verify_rs256(token, public)
    assert header["kid"] == bundle.kid and header["alg"] == "RS256"
    assert payload == {
        "sub": "alice",
        "permissions": ["default:admin", "temporal-system:read"],
        "iat": 1_700_000_000,
        "exp": 1_700_000_060,
        "aud": "temporal",
        "iss": "dev",
    }
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidSignature):
        _verify_rs256(tampered, public)


def test_mint_token_es256() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = mint_token(pem, kid="k1", subject="s", permissions=[], alg="ES256")
    header = json.loads(_b64url(token.split(".")[0]))
    assert header == {"alg": "ES256", "kid": "k1", "typ": "JWT"}


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_ec_jwk_round_trips(curve: ec.EllipticCurve) -> None:
    public = ec.generate_private_key(curve).public_key()
    jwk = jwk_from_public_key(public, "kid-ec", "ES256")
    size = (curve.key_size + 7) // 8
    assert len(_b64url(jwk["x"])) == size and len(_b64url(jwk["y"])) == size
    back = ECAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(back, ec.EllipticCurvePublicKey)
    assert back.public_numbers() == public.public_numbers()


def test_rsa_jwk_and_thumbprint() -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = jwk_from_public_key(public, "kid-rsa", "RS256")
    assert jwk["kty"] == "RSA" and jwk["e"] == "AQAB" and jwk["kid"] == "kid-rsa"
    assert jwk_thumbprint(public) == jwk_thumbprint(public)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert jwk_thumbprint(public) != jwk_thumbprint(other)


def test_rfc7638_thumbprint_example() -> None:
    # The worked example of RFC 7638 section 3.1.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWh"
        "AI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(_b64url(n), "big")).public_key()
    assert jwk_thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_unsupported_key_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown key type"):
        CertificateAuthority.create("x", key_type="dsa")  # type: ignore[arg-type]
