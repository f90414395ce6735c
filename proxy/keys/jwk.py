"""One JWK (RFC 7517) or PEM document -> a public key; malformed members raise KeySourceError."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.errors import KeySourceError

EC_CURVES: Mapping[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
OKP_CURVES: Mapping[str, Callable[[bytes], PublicKeyTypes]] = {
    "Ed25519": ed25519.Ed25519PublicKey.from_public_bytes,
    "Ed448": ed448.Ed448PublicKey.from_public_bytes,
}
_B64URL_CHARS = re.compile(r"[A-Za-z0-9_-]*")


def short(text: str) -> str:
    """A kid for a log line: neither a secret nor key material, but caller-controlled."""
    return repr(text[:64])


def b64url_member(jwk: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = jwk.get(name)
    if value is None:
        if required:
            raise KeySourceError(f"missing {name!r}")
        return None
    if not isinstance(value, str):
        raise KeySourceError(f"{name!r} is not a string")
    # go-jose tolerates trailing padding on JWK members, but no other stray characters.
    value = value.rstrip("=")
    if not _B64URL_CHARS.fullmatch(value) or len(value) % 4 == 1:
        raise KeySourceError(f"{name!r} is not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def parse_rsa(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n = b64url_member(jwk, "n")
    e = b64url_member(jwk, "e")
    assert n is not None and e is not None
    if not n or not e:
        raise KeySourceError("empty RSA modulus or exponent")
    try:
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    except ValueError as exc:
        raise KeySourceError("invalid RSA public key") from exc


def parse_ec(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in EC_CURVES:
        raise KeySourceError("unsupported elliptic curve")
    curve, size = EC_CURVES[crv]
    x = b64url_member(jwk, "x")
    y = b64url_member(jwk, "y")
    assert x is not None and y is not None
    if len(x) != size or len(y) != size:
        raise KeySourceError("wrong length for EC coordinates")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
        ).public_key()
    except ValueError as exc:  # not on the curve
        raise KeySourceError("invalid EC public key") from exc


def parse_okp(jwk: Mapping[str, Any]) -> PublicKeyTypes:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in OKP_CURVES:
        raise KeySourceError("unsupported OKP curve")
    x = b64url_member(jwk, "x")
    assert x is not None
    try:
        return OKP_CURVES[crv](x)
    except ValueError as exc:
        raise KeySourceError("invalid OKP public key") from exc


def check_x5(jwk: Mapping[str, Any], key: PublicKeyTypes | None) -> None:
    """x5c / x5t / x5t#S256 must be well formed and agree with the key (go-jose does this)."""
    chain = jwk.get("x5c")
    leaf: x509.Certificate | None = None
    if chain is not None:
        if not isinstance(chain, list) or not all(isinstance(c, str) for c in chain):
            raise KeySourceError("'x5c' is not a list of strings")
        try:
            certs = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain
            ]
        except (binascii.Error, ValueError) as exc:
            raise KeySourceError("'x5c' holds an unparseable certificate") from exc
        if certs:
            leaf = certs[0]
            if key is not None and leaf.public_key() != key:
                raise KeySourceError("'x5c' certificate does not match the key")
    for name, digest, size in (("x5t", hashlib.sha1, 20), ("x5t#S256", hashlib.sha256, 32)):
        thumb = b64url_member(jwk, name, required=False)
        if thumb is None:
            continue
        if len(thumb) != size:
            raise KeySourceError(f"{name!r} has the wrong length")
        if leaf is not None:
            der = leaf.public_bytes(Encoding.DER)
            if digest(der).digest() != thumb:
                raise KeySourceError(f"{name!r} does not match the 'x5c' certificate")


def load_public_key_pem(data: bytes) -> PublicKeyTypes:
    """A PEM public key, or the public key of a PEM certificate (as IdPs often publish)."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeySourceError("not a PEM public key or certificate") from exc
