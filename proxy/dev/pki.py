"""A small PKI for development and tests: a CA, leaf certificates, the dev bundle, dev tokens.

Used by `certs-dev` / `dev-token` and by the test suite, so tests run against the same kind of
certificates an operator gets from `make run`. Not meant for production certificates.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Backdated a little so a freshly minted certificate is valid on a host whose clock lags.
_CLOCK_SKEW = dt.timedelta(minutes=5)
_CA_LIFETIME = dt.timedelta(days=3650)
_LEAF_LIFETIME = dt.timedelta(days=365)
_ORGANIZATION = "temporal-auth-proxy dev"

SPIFFE_DEV_CLIENT = "spiffe://dev.local/ns/default/sa/dev-client"
# The key id of the dev bundle's codec key (`codec.keys` in deploy/dev/proxy.yaml).
DEV_CODEC_KEY_ID = "dev"


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (expected 'ec' or 'rsa')")


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by the owner only, also when the file already existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None, lifetime: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else _now() - _CLOCK_SKEW
    end = not_after if not_after is not None else start + _CLOCK_SKEW + lifetime
    return start, end


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCert:
    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.pem` and `<stem>.key` (mode 0600); returns both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.pem"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        write_private(key_path, self.key_pem)
        return cert_path, key_path


class CertificateAuthority:
    """A self-signed root that issues leaf certificates."""

    def __init__(self, certificate: x509.Certificate, private_key: PrivateKey) -> None:
        self.certificate = certificate
        self.private_key = private_key
        self.cert_pem = certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.private_key)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        key_type: KeyType = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CertificateAuthority:
        key = generate_key(key_type)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        start, end = _validity(not_before, not_after, _CA_LIFETIME)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        uris: Iterable[str] = (),
        organizational_units: Iterable[str] = (),
        server: bool = False,
        client: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: KeyType = "ec",
    ) -> IssuedCert:
        key = generate_key(key_type)
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)]
        attributes += [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in organizational_units
        ]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        start, end = _validity(not_before, not_after, _LEAF_LIFETIME)

        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        sans += [x509.UniformResourceIdentifier(uri) for uri in uris]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)

        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key exchange (TLS 1.2 non-ECDHE suites) needs keyEncipherment.
                    key_encipherment=key_type == "rsa",
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.private_key, hashes.SHA256())
        return IssuedCert(
            certificate=cert,
            private_key=key,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=private_key_pem(key),
        )

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


# --- JWT helpers -----------------------------------------------------------------------------


def _b64url_uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def jwk_from_public_key(public_key: PublicKeyTypes, kid: str, alg: str) -> dict[str, str]:
    """The public JWK (RFC 7517) of an RSA or EC key, with `kid`, `alg` and `use: sig`."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        material = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = _EC_CURVES.get(public_key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported EC curve {public_key.curve.name}")
        size = (public_key.curve.key_size + 7) // 8  # coordinates are fixed-length (RFC 7518 6.2.1)
        point = public_key.public_numbers()
        material = {
            "kty": "EC",
            "crv": crv,
            "x": _b64url_uint(point.x, size),
            "y": _b64url_uint(point.y, size),
        }
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__} (RSA or EC only)")
    return {**material, "kid": kid, "alg": alg, "use": "sig"}


def jwk_thumbprint(public_key: PublicKeyTypes) -> str:
    """RFC 7638 thumbprint: a `kid` that is stable for the key."""
    jwk = jwk_from_public_key(public_key, kid="", alg="")
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_token(
    private_key_pem: bytes,
    *,
    kid: str,
    subject: str,
    permissions: Sequence[str],
    ttl_seconds: int = 3600,
    audience: str | Sequence[str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    alg: str = "RS256",
    permissions_claim: str = "permissions",
    now: int | None = None,
) -> str:
    """A signed JWT as Temporal's default claim mapper reads it (`sub`, `permissions`)."""
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        permissions_claim: list(permissions),
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    if audience is not None:
        claims["aud"] = audience if isinstance(audience, str) else list(audience)
    if extra_claims:
        claims.update(extra_claims)
    return jwt.encode(claims, private_key_pem, algorithm=alg, headers={"kid": kid})


# --- the dev bundle --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DevBundle:
    """Paths of everything `certs-dev` writes."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    upstream_cert: Path
    upstream_key: Path
    internode_cert: Path
    internode_key: Path
    jwt_key: Path
    jwks: Path
    codec_key: Path  # base64 of 32 random bytes: the Codec Server's and the sample's AES key
    kid: str

    @classmethod
    def at(cls, directory: Path, kid: str = "") -> DevBundle:
        return cls(
            directory=directory,
            ca_cert=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
            client_cert=directory / "client.pem",
            client_key=directory / "client.key",
            upstream_cert=directory / "upstream.pem",
            upstream_key=directory / "upstream.key",
            internode_cert=directory / "internode.pem",
            internode_key=directory / "internode.key",
            jwt_key=directory / "jwt.key",
            jwks=directory / "jwks.json",
            codec_key=directory / "codec.key",
            kid=kid,
        )

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.server_cert,
            self.server_key,
            self.client_cert,
            self.client_key,
            self.upstream_cert,
            self.upstream_key,
            self.internode_cert,
            self.internode_key,
            self.jwt_key,
            self.codec_key,
            self.jwks,
        )


def write_dev_bundle(out_dir: Path) -> DevBundle:
    """Generate a fresh dev PKI, JWT signing key and codec key into `out_dir` (overwrites)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("temporal-auth-proxy dev CA")
    loopback = ("127.0.0.1", "::1")
    server = ca.issue(
        "proxy.test",
        dns_names=("proxy.test", "localhost"),
        ip_addresses=loopback,
        server=True,
    )
    client = ca.issue(
        "dev-client",
        dns_names=("dev-client.test",),
        uris=(SPIFFE_DEV_CLIENT,),
        client=True,
    )
    upstream = ca.issue(
        "temporal-frontend.test",
        dns_names=("temporal-frontend.test", "localhost"),
        ip_addresses=("127.0.0.1",),
        server=True,
    )
    internode = ca.issue("temporal-auth-proxy", dns_names=("proxy.test",), client=True)

    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = jwk_thumbprint(signing_key.public_key())
    jwks = {"keys": [jwk_from_public_key(signing_key.public_key(), kid, "RS256")]}

    bundle = DevBundle.at(out_dir, kid)
    bundle.ca_cert.write_bytes(ca.cert_pem)
    server.write(out_dir, "server")
    client.write(out_dir, "client")
    upstream.write(out_dir, "upstream")
    internode.write(out_dir, "internode")
    write_private(bundle.jwt_key, private_key_pem(signing_key))
    write_private(bundle.codec_key, base64.b64encode(os.urandom(32)) + b"\n")
    # jwks.json goes last: ensure_dev_bundle treats a complete set of files as done.
    bundle.jwks.write_text(json.dumps(jwks, indent=2) + "\n")
    return bundle


def ensure_dev_bundle(out_dir: Path) -> DevBundle:
    """Return the bundle in `out_dir`, generating it only when a file is missing."""
    existing = DevBundle.at(out_dir)
    if all(path.is_file() for path in existing.files()):
        keys = json.loads(existing.jwks.read_text())["keys"]
        return DevBundle.at(out_dir, str(keys[0]["kid"]))
    # A partial set cannot be trusted to belong together; start over.
    return write_dev_bundle(out_dir)
