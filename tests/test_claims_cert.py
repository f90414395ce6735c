"""Certificate claim mapper: globs, grants, rules over real certificates, config errors."""

from __future__ import annotations

import datetime
import functools
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy import methods
from proxy.authz import DefaultAuthorizer
from proxy.claims.build import build_claim_mapper
from proxy.claims.cert import CertificateClaimMapper, CertificateRule
from proxy.claims.dn import SubjectPattern
from proxy.claims.patterns import Glob, Grant, PatternError
from proxy.config.parse import parse_config
from proxy.dev.pki import CertificateAuthority
from proxy.errors import ConfigError, CredentialError
from proxy.model import AuthInfo, CallTarget, PeerIdentity, Reason, Role
from proxy.tls.peer import peer_identity

WF = "/temporal.api.workflowservice.v1.WorkflowService/"
OP = "/temporal.api.operatorservice.v1.OperatorService/"


@functools.cache
def _ca() -> CertificateAuthority:
    return CertificateAuthority.create("cert mapper test CA")


def peer(cn: str = "worker", **kw: Any) -> PeerIdentity:
    """Issue a real certificate and read it back the way the proxy does per connection."""
    issued = _ca().issue(cn, client=True, **kw)
    identity = peer_identity({"x509_pem_cert": [issued.cert_pem]})
    assert identity is not None
    return identity


def mapper(*rules: tuple[dict[str, str], list[str]]) -> CertificateClaimMapper:
    return CertificateClaimMapper([CertificateRule.build(p, g) for p, g in rules])


# ----------------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "value", "captures"),
    [
        (
            "spiffe://prod/ns/*/sa/worker-*",
            "spiffe://prod/ns/payments/sa/worker-7",
            ("payments", "7"),
        ),
        ("spiffe://prod/ns/*/sa/worker-*", "spiffe://prod/ns/a/b/sa/worker-7", None),
        ("spiffe://prod/ns/*/sa/worker-*", "spiffe://prod/ns//sa/worker-7", None),
        ("spiffe://prod/ns/*/sa/worker-*", "spiffe://prod/ns/x/sa/worker-", None),
        ("spiffe://prod/ns/*/sa/worker-*", "spiffe://prod/ns/x/sa/admin-1", None),
        ("spiffe://prod/**", "spiffe://prod/ns/a/sa/b", ("ns/a/sa/b",)),
        ("spiffe://prod/ns/a", "spiffe://prod/ns/a", ()),
        ("spiffe://prod/ns/a", "spiffe://prod/ns/ab", None),
        ("spiffe://prod/ns/a.b", "spiffe://prod/ns/aXb", None),  # a dot is literal
        ("spiffe://prod/ns/*", "spiffe://prod/ns/pay.prod", ("pay.prod",)),
    ],
)
def test_uri_globs(pattern: str, value: str, captures: tuple[str, ...] | None) -> None:
    assert Glob.compile(pattern, separator="/").match(value) == captures


def test_dns_globs_stay_in_one_label_and_ignore_case() -> None:
    glob = Glob.compile("*.workers.Example.com", separator=".", fold_case=True)
    assert glob.match("Payments.workers.example.COM") == ("payments",)
    assert glob.match("a.b.workers.example.com") is None
    assert glob.match("workers.example.com") is None


@pytest.mark.parametrize("bad", ["", "a***b"])
def test_bad_globs(bad: str) -> None:
    with pytest.raises(PatternError):
        Glob.compile(bad)


@pytest.mark.parametrize(
    ("text", "captures", "message"),
    [
        ("payments", 0, "namespace:permission"),
        ("payments:writer", 0, "unknown permission"),
        ("payments:", 0, "unknown permission"),
        (":read", 0, "must not be empty"),
        ("{2}:read", 1, "refers to {2}"),
        ("{0}:read", 1, "refers to {0}"),
    ],
)
def test_bad_grants(text: str, captures: int, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        Grant.parse(text, captures)


# ----------------------------------------------------------------------------------- rules


async def test_spiffe_capture_grants_the_namespace_named_in_the_certificate() -> None:
    m = mapper(({"spiffe_id": "spiffe://prod/ns/*/sa/worker-*"}, ["{1}:write", "{1}:worker"]))
    p = peer(uris=("spiffe://prod/ns/payments/sa/worker-3",))
    claims = await m.get_claims(AuthInfo(peer=p))
    assert dict(claims.namespaces) == {"payments": Role.WRITER | Role.WORKER}
    assert claims.system == Role.UNDEFINED
    assert claims.auth_type == "cert"
    assert claims.subject == "spiffe://prod/ns/payments/sa/worker-3"


async def test_literal_system_grant_by_dns_name() -> None:
    m = mapper(({"dns_name": "system-worker.temporal.svc"}, ["temporal-system:admin"]))
    claims = await m.get_claims(AuthInfo(peer=peer(dns_names=("system-worker.temporal.svc",))))
    assert claims.system == Role.ADMIN
    authz = DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS)
    cluster_call = CallTarget(api_name=OP + "ListClusters")
    assert (await authz.authorize(claims, cluster_call)).allowed
    other = await m.get_claims(AuthInfo(peer=peer(dns_names=("evil.temporal.svc",))))
    assert not (await authz.authorize(other, cluster_call)).allowed


async def test_a_captured_temporal_system_never_becomes_a_system_role() -> None:
    m = mapper(({"spiffe_id": "spiffe://prod/ns/*/sa/*"}, ["{1}:admin"]))
    claims = await m.get_claims(
        AuthInfo(peer=peer(uris=("spiffe://prod/ns/temporal-system/sa/x",)))
    )
    assert claims.system == Role.UNDEFINED
    assert dict(claims.namespaces) == {}


async def test_every_matching_dns_name_grants() -> None:
    m = mapper(({"dns_name": "*.ns.example.com"}, ["{1}:read"]))
    claims = await m.get_claims(
        AuthInfo(peer=peer(dns_names=("billing.ns.example.com", "Payments.ns.example.com")))
    )
    assert dict(claims.namespaces) == {"billing": Role.READER, "payments": Role.READER}


async def test_all_matchers_of_a_rule_must_match_and_rules_add_up() -> None:
    m = mapper(
        ({"organizational_unit": "payments", "common_name": "worker-*"}, ["payments:write"]),
        ({"common_name": "worker-*"}, ["shared:read"]),
    )
    both = await m.get_claims(AuthInfo(peer=peer("worker-1", organizational_units=("payments",))))
    assert dict(both.namespaces) == {"payments": Role.WRITER, "shared": Role.READER}
    only_cn = await m.get_claims(AuthInfo(peer=peer("worker-2", organizational_units=("ops",))))
    assert dict(only_cn.namespaces) == {"shared": Role.READER}


async def test_captures_are_numbered_across_matchers_in_field_order() -> None:
    m = mapper(({"common_name": "*-worker", "spiffe_id": "spiffe://prod/ns/*"}, ["{1}-{2}:read"]))
    claims = await m.get_claims(
        AuthInfo(peer=peer("eu-worker", uris=("spiffe://prod/ns/payments",)))
    )
    assert dict(claims.namespaces) == {"payments-eu": Role.READER}


async def test_subject_rule_and_no_match_gives_empty_claims() -> None:
    p = peer("exact-cn", organizational_units=("team",))
    m = mapper(({"subject": p.subject}, ["default:read"]))
    assert dict((await m.get_claims(AuthInfo(peer=p))).namespaces) == {"default": Role.READER}
    none = await m.get_claims(AuthInfo(peer=peer("someone-else")))
    assert dict(none.namespaces) == {} and none.system == Role.UNDEFINED
    assert none.auth_type == "cert"


async def test_without_a_certificate_the_mapper_refuses() -> None:
    m = mapper(({"common_name": "x"}, ["default:read"]))
    with pytest.raises(CredentialError) as caught:
        await m.get_claims(AuthInfo(token="Bearer x"))
    assert caught.value.reason is Reason.CERTIFICATE_REQUIRED


async def test_claims_are_cached_per_identity() -> None:
    m = mapper(({"common_name": "cached"}, ["default:read"]))
    p = peer("cached")
    assert (await m.get_claims(AuthInfo(peer=p))) is (await m.get_claims(AuthInfo(peer=p)))


# ----------------------------------------------------------------------------------- config

TLS = {
    "frontend": {
        "server": {
            "certFile": "/x.pem",
            "keyFile": "/x.key",
            "clientCaFiles": ["/ca.pem"],
            "requireClientAuth": True,
        }
    }
}


def cfg(authorization: dict[str, Any], tls: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "tls": TLS if tls is None else tls,
            "authorization": {"authorizer": "default", **authorization},
        },
        env={},
    )


async def test_config_builds_a_certificate_mapper() -> None:
    c = cfg(
        {
            "claimMapper": "cert",
            "certificateRules": [
                {"spiffeId": "spiffe://prod/ns/*/sa/*", "grants": ["{1}:write"]},
                {"dnsName": "sys.example.com", "grants": ["temporal-system:admin"]},
            ],
        }
    )
    m = build_claim_mapper(c, None, None)
    claims = await m.get_claims(AuthInfo(peer=peer(uris=("spiffe://prod/ns/orders/sa/w",))))
    assert dict(claims.namespaces) == {"orders": Role.WRITER}


@pytest.mark.parametrize(
    ("authorization", "path"),
    [
        ({"claimMapper": "cert"}, "authorization.certificateRules"),
        (
            {"claimMapper": "cert", "certificateRules": [{"grants": ["a:read"]}]},
            "authorization.certificateRules[0]",
        ),
        (
            {"claimMapper": "cert", "certificateRules": [{"commonName": "x", "grants": ["a:own"]}]},
            "authorization.certificateRules[0]",
        ),
        (
            {
                "claimMapper": "cert",
                "certificateRules": [{"commonName": "x", "grants": ["{1}:read"]}],
            },
            "authorization.certificateRules[0]",
        ),
        (
            {"claimMapper": "cert", "certificateRules": [{"commonName": "x"}]},
            "authorization.certificateRules[0]",
        ),
        (
            {"claimMapper": "cert", "certificateRules": [{"cn": "x", "grants": ["a:read"]}]},
            "authorization.certificateRules[0].cn",
        ),
        (
            {"claimMapper": "cert", "certificateRules": {"commonName": "x"}},
            "authorization.certificateRules",
        ),
        ({"claimMapper": "certs"}, "authorization.claimMapper"),
    ],
)
def test_config_errors_name_their_path(authorization: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_claim_mapper(cfg(authorization), None, None)
    assert caught.value.path == path


def test_cert_mapper_needs_require_client_auth() -> None:
    tls = {"frontend": {"server": {"certFile": "/x.pem", "keyFile": "/x.key"}}}
    with pytest.raises(ConfigError) as caught:
        cfg(
            {
                "claimMapper": "cert",
                "certificateRules": [{"commonName": "x", "grants": ["a:read"]}],
            },
            tls,
        )
    assert caught.value.path == "tls.frontend.server.requireClientAuth"


def test_authorizer_does_not_accept_the_identity_mapper_names() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "upstream": {"address": "127.0.0.1:7233"},
                "authorization": {"authorizer": "cert", "claimMapper": "noop"},
            },
            env={},
        )
    assert caught.value.path == "authorization.authorizer"


def test_default_mode_config_is_untouched_by_the_new_sections() -> None:
    c = parse_config(
        {
            "upstream": {"address": "127.0.0.1:7233"},
            "authorization": {
                "claimMapper": "default",
                "jwtKeyProvider": {"keySourceURIs": ["file:///nonexistent.json"]},
            },
        },
        env={},
    )
    assert c.authorization.certificate_rules == ()
    assert c.authorization.idp.issuers == ()


async def test_the_mapper_receives_the_peer_through_the_gate() -> None:
    from prometheus_client import CollectorRegistry

    from proxy.gate import Gate
    from proxy.metrics import ProxyMetrics

    m = mapper(({"spiffe_id": "spiffe://prod/ns/*/sa/*"}, ["{1}:write"]))
    gate = Gate(
        claim_mapper=m,
        authorizer=DefaultAuthorizer(methods.lookup, methods.HEALTH_CHECK_APIS),
        metrics=ProxyMetrics(CollectorRegistry(), method_names=()),
        logger=_NullLog(),
        peer_always_verified=True,
    )
    info = methods.lookup(WF + "DescribeNamespace")
    assert info is not None
    request = b"\x0a\x08payments"  # DescribeNamespaceRequest{namespace: "payments"}
    p = peer(uris=("spiffe://prod/ns/payments/sa/w",))
    assert (await gate.check(info, request, peer=p)).allowed
    q = peer(uris=("spiffe://prod/ns/orders/sa/w",))
    assert not (await gate.check(info, request, peer=q)).allowed


class _NullLog:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


# ------------------------------------------------- subject patterns (issue 14, item 9)

CN, ORG, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME
UID = NameOID.USER_ID


def named(*rdns: list[tuple[x509.ObjectIdentifier, str]]) -> PeerIdentity:
    """A real certificate whose subject is `rdns`, given in RFC 4514 order (CN first)."""
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(oid, v) for oid, v in rdn])
            for rdn in reversed(rdns)
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(_ca().certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(_ca().private_key, hashes.SHA256())  # type: ignore[arg-type]  # an EC CA key
    )
    identity = peer_identity({"x509_pem_cert": [cert.public_bytes(serialization.Encoding.PEM)]})
    assert identity is not None
    return identity


async def captured(pattern: str, identity: PeerIdentity) -> dict[str, Role]:
    wild = SubjectPattern.compile(pattern).captures > 0
    m = mapper(({"subject": pattern}, ["{1}:read"] if wild else ["hit:read"]))
    return dict((await m.get_claims(AuthInfo(peer=identity))).namespaces)


async def test_a_star_does_not_swallow_an_escaped_comma() -> None:
    # The finding: one attribute CN="mallory,O=Acme", rendered CN=mallory\,O=Acme.
    mallory = named([(CN, "mallory,O=Acme")])
    assert mallory.subject == "CN=mallory\\,O=Acme"
    assert await captured("CN=*,O=Acme", mallory) == {}
    assert await captured("CN=*", mallory) == {"mallory,O=Acme": Role.READER}
    alice = named([(CN, "alice")], [(ORG, "Acme")])
    assert await captured("CN=*,O=Acme", alice) == {"alice": Role.READER}
    # Nor across an escaped comma into a later RDN.
    sneaky = named([(CN, "x,OU=ops")], [(ORG, "Acme")])
    assert await captured("CN=*,OU=*,O=Acme", sneaky) == {}
    assert await captured("CN=*,O=Acme", sneaky) == {"x,OU=ops": Role.READER}


async def test_a_star_does_not_swallow_an_escaped_plus() -> None:
    plus = named([(CN, "w+O=Acme")])
    assert plus.subject == "CN=w\\+O=Acme"
    assert await captured("CN=*+O=Acme", plus) == {}
    assert await captured("CN=w\\+O=Acme", plus) == {"hit": Role.READER}
    assert await captured("CN=*", plus) == {"w+O=Acme": Role.READER}


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ("k=v", "CN=*=v", "k"),  # `=` needs no escape in a value
        ("a\\b", "CN=a\\\\*", "b"),  # one backslash in the value, escaped in the pattern
        ("a\\b", "CN=a*", "\\b"),  # the capture is the value, not its escaped form
        ('say "hi"', 'CN=say \\"*\\"', "hi"),
        ("#1 team", "CN=\\#1 *", "team"),
        (" padded ", "CN=\\ *\\ ", "padded"),
        ("x;y<z>", "CN=*\\;y\\<z\\>", "x"),
        ("café", "CN=caf\\C3\\A9-*", None),
        ("café-7", "CN=caf\\C3\\A9-*", "7"),
        ("*", "CN=\\2A", "hit"),
        ("*", "CN=\\*", "hit"),
        ("x", "CN=\\2A", None),  # an escaped star is literal
        ("x", "cn=*", "x"),  # attribute types are case-insensitive
        ("x", "2.5.4.3=*", "x"),  # ... or numeric OIDs
        ("X", "CN=x", None),  # values are case-sensitive
    ],
)
async def test_special_characters_in_values(value: str, pattern: str, expected: str | None) -> None:
    got = await captured(pattern, named([(CN, value)]))
    assert got == ({} if expected is None else {expected: Role.READER})


async def test_multi_valued_rdns_match_as_sets() -> None:
    w = named([(CN, "w"), (UID, "42")], [(ORG, "Acme")])
    assert await captured("UID=*+CN=w,O=Acme", w) == {"42": Role.READER}
    assert await captured("CN=w+UID=*,O=Acme", w) == {"42": Role.READER}
    assert await captured("CN=w,UID=42,O=Acme", w) == {}  # two RDNs is not one
    assert await captured("CN=w,O=Acme", w) == {}  # every attribute of the RDN must match
    assert await captured("CN=w+UID=42+OU=x,O=Acme", w) == {}
    flat = named([(CN, "w")], [(UID, "42")], [(ORG, "Acme")])
    assert await captured("UID=42+CN=*,O=Acme", flat) == {}
    two = named([(OU, "a"), (OU, "b")])
    assert await captured("OU=b+OU=*", two) == {"a": Role.READER}


async def test_captures_follow_the_pattern_order() -> None:
    w = named([(CN, "w-eu")], [(OU, "payments")], [(ORG, "Acme")])
    m = mapper(({"subject": "CN=w-*,OU=*,O=Acme"}, ["{2}-{1}:write"]))
    assert dict((await m.get_claims(AuthInfo(peer=w))).namespaces) == {"payments-eu": Role.WRITER}


async def test_a_subject_known_only_as_grpcs_string_never_matches() -> None:
    legacy = peer_identity(
        {
            "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
            "x509_subject": [b"CN=legacy,O=x"],
        }
    )
    assert legacy is not None and legacy.subject_rdns is None
    assert await captured("CN=legacy,O=x", legacy) == {}
    assert await captured("CN=*,O=x", legacy) == {}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("CN", "expected type=value"),
        ("CN=a,", "expected type=value"),
        ("XX=a", "unknown attribute type 'XX'"),
        ("C N=a", "bad attribute type"),
        ("CN=#0403", "#-encoded"),
        ("CN= a", "leading space"),
        ("CN=a ", "trailing space"),
        ("CN=a;b", "';' must be escaped"),
        ('CN=a"b', "must be escaped"),
        ("CN=a\\zz", "bad escape"),
        ("CN=\\C3", "not UTF-8"),
        ("CN=", "empty attribute value"),
        ("CN=a+O=b+OU=c+L=d+ST=e+C=f+DC=g+UID=h+STREET=i", "more than 8 attributes"),
    ],
)
def test_bad_subject_patterns_fail_startup_naming_the_key(pattern: str, message: str) -> None:
    rules = [{"commonName": "ok", "grants": ["a:read"]}, {"subject": pattern, "grants": ["a:read"]}]
    with pytest.raises(ConfigError) as caught:
        build_claim_mapper(cfg({"claimMapper": "cert", "certificateRules": rules}), None, None)
    assert caught.value.path == "authorization.certificateRules[1].subject"
    assert message in str(caught.value)


def test_a_bad_glob_names_its_key_too() -> None:
    rules = [{"dnsName": "a***b", "grants": ["a:read"]}]
    with pytest.raises(ConfigError) as caught:
        build_claim_mapper(cfg({"claimMapper": "cert", "certificateRules": rules}), None, None)
    assert caught.value.path == "authorization.certificateRules[0].dnsName"


def test_subject_rdns_are_in_rfc4514_order() -> None:
    w = named([(CN, "w"), (UID, "42")], [(ORG, "Acme")])
    assert w.subject_rdns is not None
    assert [sorted(oid for oid, _ in rdn) for rdn in w.subject_rdns] == [
        sorted([CN.dotted_string, UID.dotted_string]),
        [ORG.dotted_string],
    ]
    assert w.subject_rdns[1] == ((ORG.dotted_string, "Acme"),)
