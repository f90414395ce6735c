"""Peer identity: the verified client certificate (grpc auth_context or PEM) as a PeerIdentity.

Reads grpc's `context.auth_context()` mapping without importing grpc. Key usage is checked as
Go's TLS stack would (clientAuth or any usage, or no EKU extension at all).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from cryptography import x509

from proxy.model import PeerIdentity


def _first(values: Sequence[bytes] | None) -> str:
    return values[0].decode("utf-8", "replace") if values else ""


def _spiffe_id(uris: Sequence[str]) -> str:
    spiffe = [uri for uri in uris if uri[:9].lower() == "spiffe://"]
    # An X.509-SVID carries exactly one SPIFFE ID; more than one is ambiguous, so none.
    return spiffe[0] if len(spiffe) == 1 else ""


def subject_rdns(name: x509.Name) -> tuple[tuple[tuple[str, str | None], ...], ...]:
    """The subject as parsed attributes, in RFC 4514 order (the reverse of the DER order)."""
    return tuple(
        tuple(
            (attr.oid.dotted_string, attr.value if isinstance(attr.value, str) else None)
            for attr in rdn
        )
        for rdn in reversed(name.rdns)
    )


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> PeerIdentity | None:
    # Memoized by the PEM bytes: a connection presents the same certificate on every call.
    # A pure function of its argument, so this cache is safe to share process-wide.
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, uris = (), ()
    except ValueError:
        return None
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    units = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = any(u in _CLIENT_USAGES for u in usages)
    except x509.ExtensionNotFound:
        client_auth = True  # no EKU extension: any usage (Go's rule)
    except ValueError:
        return None
    return PeerIdentity(
        subject=cert.subject.rfc4514_string(),
        subject_rdns=subject_rdns(cert.subject),
        common_name=str(common_names[0].value) if common_names else "",
        organizational_units=tuple(str(unit.value) for unit in units),
        dns_names=dns,
        uris=uris,
        spiffe_id=_spiffe_id(uris),
        client_auth=client_auth,
    )


_CLIENT_USAGES = frozenset(
    {x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
)


def peer_identity(auth_context: Mapping[str, Sequence[bytes]]) -> PeerIdentity | None:
    """The verified client certificate from grpc's `context.auth_context()`, or None."""
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        return None
    identity = identity_from_pem(pems[0])
    if identity is not None:
        return identity
    # grpc accepted a certificate cryptography cannot parse: fall back to what grpc extracted.
    uris = tuple(value.decode("utf-8", "replace") for value in auth_context.get("peer_uri", ()))
    return PeerIdentity(
        subject=_first(auth_context.get("x509_subject")),
        common_name=_first(auth_context.get("x509_common_name")),
        dns_names=tuple(v.decode("utf-8", "replace") for v in auth_context.get("peer_dns", ())),
        uris=uris,
        spiffe_id=_spiffe_id(uris),
        client_auth=False,  # its usage cannot be checked: fail closed
    )
