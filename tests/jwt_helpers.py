"""Real signed tokens and JWKS documents for tests, built by hand so attack tokens are possible."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def uint_b64url(value: int, size: int | None = None) -> str:
    size = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


@functools.cache
def rsa_key(name: str = "rsa", bits: int = 2048) -> rsa.RSAPrivateKey:
    """A private key per (name, bits), made once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str = "ec", curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    curves: dict[str, ec.EllipticCurve] = {
        "P-256": ec.SECP256R1(),
        "P-384": ec.SECP384R1(),
        "P-521": ec.SECP521R1(),
    }
    return ec.generate_private_key(curves[curve])


def sign_rs256(key: rsa.RSAPrivateKey, signing_input: bytes) -> bytes:
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def sign_es256_der(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    return key.sign(signing_input, ec.ECDSA(hashes.SHA256()))


def sign_es256_raw(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(sign_es256_der(key, signing_input))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_hs256(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def assemble(header: Any, payload: Any, sign: Any = None, *, signature: bytes | None = None) -> str:
    """header.payload.signature; `sign(signing_input) -> bytes` or a fixed `signature`."""
    h = header if isinstance(header, str) else b64url_json(header)
    p = payload if isinstance(payload, str) else b64url_json(payload)
    signing_input = f"{h}.{p}".encode()
    sig = signature if signature is not None else (sign(signing_input) if sign else b"")
    return f"{h}.{p}.{b64url(sig)}"


def rs256_token(
    payload: Any, kid: Any = "rsa1", key: rsa.RSAPrivateKey | None = None, **header: Any
) -> str:
    k = key if key is not None else rsa_key()
    head = {"alg": "RS256", "typ": "JWT", **({"kid": kid} if kid is not None else {}), **header}
    return assemble(head, payload, lambda data: sign_rs256(k, data))


def es256_token(
    payload: Any, kid: Any = "ec1", key: ec.EllipticCurvePrivateKey | None = None, **header: Any
) -> str:
    k = key if key is not None else ec_key()
    head = {"alg": "ES256", "typ": "JWT", **({"kid": kid} if kid is not None else {}), **header}
    return assemble(head, payload, lambda data: sign_es256_raw(k, data))


def rsa_jwk(
    key: rsa.RSAPrivateKey | rsa.RSAPublicKey, kid: str | None, **extra: Any
) -> dict[str, Any]:
    pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    numbers = pub.public_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "n": uint_b64url(numbers.n), "e": uint_b64url(numbers.e)}
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def ec_jwk(
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, kid: str | None, **extra: Any
) -> dict[str, Any]:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    numbers = pub.public_numbers()
    size = (pub.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
    jwk: dict[str, Any] = {
        "kty": "EC",
        "crv": crv,
        "x": uint_b64url(numbers.x, size),
        "y": uint_b64url(numbers.y, size),
    }
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def _is_probable_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@functools.cache
def small_rsa_key(bits: int = 512) -> rsa.RSAPrivateKey:
    """An RSA key below Go's 1024-bit floor (cryptography refuses to generate one)."""
    import secrets

    def prime(nbits: int) -> int:
        while True:
            c = secrets.randbits(nbits) | (1 << (nbits - 1)) | 1
            if (c - 1) % 65537 and _is_probable_prime(c):
                return c

    p, q = prime(bits // 2), prime(bits // 2)
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)
