"""DefaultJWTClaimMapper against spec §2, with real signed tokens and hand-built attack tokens."""

from __future__ import annotations

import base64
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from proxy.claims import NoopClaimMapper
from proxy.claims.jwt import (
    DefaultJWTClaimMapper,
    compile_permissions_regex,
    parse_permissions,
)
from proxy.claims.token import parse_authorization_header
from proxy.errors import CredentialError
from proxy.interfaces import AuthInfoOptional, ClaimMapper, KeyProvider
from proxy.keys.jwks import StaticKeyProvider
from proxy.model import AuthInfo, Claims, Reason, Role
from tests.jwt_helpers import (
    assemble,
    b64url,
    b64url_json,
    ec_key,
    es256_token,
    rs256_token,
    rsa_key,
    sign_es256_der,
    sign_es256_raw,
    sign_hs256,
    sign_rs256,
    small_rsa_key,
)

NOW = 1_800_000_000
SUB = {"sub": "alice"}


def provider() -> StaticKeyProvider:
    return StaticKeyProvider(
        {
            "rsa1": rsa_key().public_key(),
            "ec1": ec_key().public_key(),
            "small": small_rsa_key().public_key(),
        }
    )


def mapper(**kw: Any) -> DefaultJWTClaimMapper:
    kw.setdefault("clock", lambda: float(NOW))
    return DefaultJWTClaimMapper(kw.pop("keys", None) or provider(), **kw)


async def claims_of(token: str, *, audience: str = "", **kw: Any) -> Claims:
    return await mapper(**kw).get_claims(AuthInfo(token=f"Bearer {token}", audience=audience))


async def reason_of(header: str, *, audience: str = "", **kw: Any) -> Reason:
    with pytest.raises(CredentialError) as info:
        await mapper(**kw).get_claims(AuthInfo(token=header, audience=audience))
    # The detail must never echo the token or a piece of it.
    for piece in [header, *header.split(".")]:
        if len(piece) >= 8:
            assert piece not in info.value.detail
            assert piece not in str(info.value)
    return info.value.reason


# --------------------------------------------------------------------------- happy paths


async def test_rs256_and_es256_tokens_map_to_claims() -> None:
    payload = {"sub": "alice", "permissions": ["default:read", "temporal-system:admin"]}
    for token in (rs256_token(payload), es256_token(payload)):
        claims = await claims_of(token)
        assert claims.subject == "alice"
        assert claims.auth_type == "jwt"
        assert claims.system == Role.ADMIN
        assert dict(claims.namespaces) == {"default": Role.READER}


async def test_tokens_signed_by_pyjwt_are_accepted() -> None:
    payload = {"sub": "bob", "exp": NOW + 60, "permissions": ["ns:write"]}
    rs = pyjwt.encode(payload, rsa_key(), algorithm="RS256", headers={"kid": "rsa1"})
    es = pyjwt.encode(payload, ec_key(), algorithm="ES256", headers={"kid": "ec1"})
    for token in (rs, es):
        claims = await claims_of(token)
        assert (claims.subject, dict(claims.namespaces)) == ("bob", {"ns": Role.WRITER})


async def test_empty_token_gives_empty_claims_labelled_none_without_error() -> None:
    # Temporal's empty claims; labelled `none` in metrics and logs: no credential counted.
    claims = await mapper().get_claims(AuthInfo(token=""))
    assert claims == Claims(auth_type="none")


def test_mapper_satisfies_protocols() -> None:
    assert isinstance(mapper(), ClaimMapper)
    assert isinstance(provider(), KeyProvider)
    assert mapper().auth_info_required() is True


async def test_noop_mapper_is_admin_for_everyone() -> None:
    noop = NoopClaimMapper()
    assert isinstance(noop, ClaimMapper) and isinstance(noop, AuthInfoOptional)
    assert noop.auth_info_required() is False
    claims = await noop.get_claims(AuthInfo())
    assert claims.system == Role.ADMIN and claims.auth_type == "" and not claims.namespaces


# --------------------------------------------------------------------------- header format


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_scheme_is_case_insensitive(scheme: str) -> None:
    claims = await mapper().get_claims(AuthInfo(token=f"{scheme} {rs256_token(SUB)}"))
    assert claims.subject == "alice"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer" + "TOKEN", id="no-space"),
        pytest.param("Bearer  TOKEN", id="double-space"),
        pytest.param(" Bearer TOKEN", id="leading-space"),
        pytest.param("Basic TOKEN", id="other-scheme"),
        pytest.param("Bearer\tTOKEN", id="tab"),
        pytest.param("Bearer TOKEN ", id="trailing-space"),
    ],
)
async def test_header_format_errors(header: str) -> None:
    header = header.replace("TOKEN", rs256_token(SUB))
    assert await reason_of(header) is Reason.BAD_TOKEN_FORMAT


@given(st.text())
def test_parse_authorization_header_returns_everything_after_the_first_space(tail: str) -> None:
    assert parse_authorization_header("Bearer " + tail) == tail
    assert parse_authorization_header("bEARER " + tail) == tail


@given(st.text().filter(lambda s: " " not in s))
def test_parse_authorization_header_without_space_fails(value: str) -> None:
    with pytest.raises(CredentialError) as info:
        parse_authorization_header(value)
    assert info.value.reason is Reason.BAD_TOKEN_FORMAT


@given(st.text(min_size=1).filter(lambda s: " " not in s and s.lower() != "bearer"), st.text())
def test_parse_authorization_header_other_scheme_fails(scheme: str, tail: str) -> None:
    with pytest.raises(CredentialError):
        parse_authorization_header(f"{scheme} {tail}")


# --------------------------------------------------------------------------- token refusals


def _rs_parts() -> list[str]:
    return rs256_token({"sub": "alice", "n": 1}).split(".")


def _flip_last_sig_byte(token: str) -> str:
    h, p, s = token.split(".")
    sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    sig[-1] ^= 1
    return f"{h}.{p}.{b64url(bytes(sig))}"


def _rsa_pem() -> bytes:
    return rsa_key().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


REFUSALS: list[tuple[str, Any, Reason]] = [
    # algorithm
    (
        "alg-none",
        lambda: assemble({"alg": "none", "kid": "rsa1"}, SUB, signature=b""),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    (
        "hs256-with-rsa-public-key-as-secret",
        lambda: assemble({"alg": "HS256", "kid": "rsa1"}, SUB, lambda d: sign_hs256(_rsa_pem(), d)),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    ("rs384", lambda: rs256_token(SUB, alg="RS384"), Reason.UNSUPPORTED_ALGORITHM),
    ("ps256", lambda: rs256_token(SUB, alg="PS256"), Reason.UNSUPPORTED_ALGORITHM),
    ("lowercase-rs256", lambda: rs256_token(SUB, alg="rs256"), Reason.UNSUPPORTED_ALGORITHM),
    ("alg-not-a-string", lambda: rs256_token(SUB, alg=256), Reason.UNSUPPORTED_ALGORITHM),
    (
        "alg-missing",
        lambda: assemble({"kid": "rsa1"}, SUB, lambda d: sign_rs256(rsa_key(), d)),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    # kid and key lookup
    ("unknown-kid", lambda: rs256_token(SUB, kid="nope"), Reason.UNKNOWN_KEY),
    ("kid-case-sensitive", lambda: rs256_token(SUB, kid="RSA1"), Reason.UNKNOWN_KEY),
    ("es256-with-rsa-kid", lambda: es256_token(SUB, kid="rsa1"), Reason.UNKNOWN_KEY),
    ("rs256-with-ec-kid", lambda: rs256_token(SUB, kid="ec1"), Reason.UNKNOWN_KEY),
    ("kid-not-a-string", lambda: rs256_token(SUB, kid=1), Reason.INVALID_TOKEN),
    ("kid-missing", lambda: rs256_token(SUB, kid=None), Reason.INVALID_TOKEN),
    # signature
    ("tampered-signature", lambda: _flip_last_sig_byte(rs256_token(SUB)), Reason.BAD_SIGNATURE),
    ("tampered-es-signature", lambda: _flip_last_sig_byte(es256_token(SUB)), Reason.BAD_SIGNATURE),
    (
        "tampered-payload",
        lambda: ".".join([_rs_parts()[0], b64url_json({"sub": "alice", "n": 2}), _rs_parts()[2]]),
        Reason.BAD_SIGNATURE,
    ),
    (
        "es256-der-signature",
        lambda: assemble(
            {"alg": "ES256", "kid": "ec1"}, SUB, lambda d: sign_es256_der(ec_key(), d)
        ),
        Reason.BAD_SIGNATURE,
    ),
    (
        "es256-65-byte-signature",  # R || 0x00 || S decodes to the right S if length is ignored
        lambda: assemble(
            {"alg": "ES256", "kid": "ec1"},
            SUB,
            lambda d: (lambda raw: raw[:32] + b"\x00" + raw[32:])(sign_es256_raw(ec_key(), d)),
        ),
        Reason.BAD_SIGNATURE,
    ),
    (
        "signed-by-another-key",
        lambda: rs256_token(SUB, key=rsa_key("other")),
        Reason.BAD_SIGNATURE,
    ),
    (
        "rsa-key-under-1024-bits",
        lambda: rs256_token(SUB, kid="small", key=small_rsa_key()),
        Reason.BAD_SIGNATURE,
    ),
    (
        "empty-signature",
        lambda: assemble({"alg": "RS256", "kid": "rsa1"}, SUB, signature=b""),
        Reason.BAD_SIGNATURE,
    ),
    # structure
    ("two-segments", lambda: ".".join(_rs_parts()[:2]), Reason.BAD_TOKEN_FORMAT),
    ("four-segments", lambda: ".".join([*_rs_parts(), "x"]), Reason.BAD_TOKEN_FORMAT),
    ("empty-token", lambda: "", Reason.BAD_TOKEN_FORMAT),
    ("padding-in-header", lambda: _pad(0), Reason.BAD_TOKEN_FORMAT),
    ("padding-in-payload", lambda: _pad(1), Reason.BAD_TOKEN_FORMAT),
    ("padding-in-signature", lambda: _pad(2), Reason.BAD_TOKEN_FORMAT),
    (
        "standard-base64-alphabet",
        lambda: ".".join([_rs_parts()[0] + "+/", *_rs_parts()[1:]]),
        Reason.BAD_TOKEN_FORMAT,
    ),
    (
        "header-not-json",
        lambda: ".".join([b64url(b"{not json"), *_rs_parts()[1:]]),
        Reason.BAD_TOKEN_FORMAT,
    ),
    (
        "header-trailing-data",
        lambda: assemble(
            b64url(b'{"alg":"RS256","kid":"rsa1"} x'), SUB, lambda d: sign_rs256(rsa_key(), d)
        ),
        Reason.BAD_TOKEN_FORMAT,
    ),
    (
        "header-is-a-list",
        lambda: assemble(b64url(b"[1]"), SUB, lambda d: sign_rs256(rsa_key(), d)),
        Reason.BAD_TOKEN_FORMAT,
    ),
    (
        "payload-is-a-list",
        lambda: rs256_token(["sub", "alice"]),
        Reason.BAD_TOKEN_FORMAT,
    ),
    (
        "payload-nan",
        lambda: rs256_token(b64url(b'{"sub":"a","exp":NaN}')),
        Reason.BAD_TOKEN_FORMAT,
    ),
    # time claims (NOW is the injected clock)
    ("exp-exactly-now", lambda: rs256_token({**SUB, "exp": NOW}), Reason.TOKEN_EXPIRED),
    ("exp-one-second-ago", lambda: rs256_token({**SUB, "exp": NOW - 1}), Reason.TOKEN_EXPIRED),
    (
        "exp-fraction-truncated",
        lambda: rs256_token({**SUB, "exp": NOW + 0.9}),
        Reason.TOKEN_EXPIRED,
    ),
    (
        "iat-one-second-ahead",
        lambda: rs256_token({**SUB, "iat": NOW + 1}),
        Reason.TOKEN_NOT_YET_VALID,
    ),
    (
        "nbf-one-second-ahead",
        lambda: rs256_token({**SUB, "nbf": NOW + 1}),
        Reason.TOKEN_NOT_YET_VALID,
    ),
    ("exp-string", lambda: rs256_token({**SUB, "exp": str(NOW + 60)}), Reason.INVALID_TOKEN),
    ("exp-bool", lambda: rs256_token({**SUB, "exp": True}), Reason.INVALID_TOKEN),
    ("exp-null", lambda: rs256_token({**SUB, "exp": None}), Reason.INVALID_TOKEN),
    ("iat-string", lambda: rs256_token({**SUB, "iat": "0"}), Reason.INVALID_TOKEN),
    ("nbf-list", lambda: rs256_token({**SUB, "nbf": [1]}), Reason.INVALID_TOKEN),
    # subject
    ("sub-missing", lambda: rs256_token({"permissions": []}), Reason.BAD_SUBJECT),
    ("sub-number", lambda: rs256_token({"sub": 7}), Reason.BAD_SUBJECT),
    ("sub-null", lambda: rs256_token({"sub": None}), Reason.BAD_SUBJECT),
    ("payload-null", lambda: rs256_token(b64url(b"null")), Reason.BAD_SUBJECT),
]


def _pad(index: int) -> str:
    parts = _rs_parts()
    parts[index] += "="
    return ".".join(parts)


@pytest.mark.parametrize(
    ("make", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_refused_tokens(make: Any, reason: Reason) -> None:
    assert await reason_of(f"Bearer {make()}") is reason


ACCEPTED_TIMES: list[tuple[str, dict[str, Any]]] = [
    ("exp-one-second-ahead", {"exp": NOW + 1}),
    ("exp-zero-means-absent", {"exp": 0}),
    ("iat-now", {"iat": NOW}),
    ("iat-zero", {"iat": 0}),
    ("nbf-now", {"nbf": NOW}),
    ("nbf-fraction-truncated", {"nbf": NOW + 0.9}),
    ("all-floats", {"exp": NOW + 10.5, "iat": NOW - 0.5, "nbf": float(NOW)}),
    ("iss-never-checked", {"iss": 5}),
]


@pytest.mark.parametrize(
    ("extra"), [a[1] for a in ACCEPTED_TIMES], ids=[a[0] for a in ACCEPTED_TIMES]
)
async def test_accepted_time_claims(extra: dict[str, Any]) -> None:
    assert (await claims_of(rs256_token({**SUB, **extra}))).subject == "alice"


async def test_now_is_truncated_to_whole_seconds() -> None:
    token = rs256_token({**SUB, "exp": NOW + 1, "nbf": NOW + 1})
    # At NOW + 0.999 the whole-second clock still reads NOW: not yet valid, not expired.
    late = mapper(clock=lambda: NOW + 0.999)
    with pytest.raises(CredentialError) as info:
        await late.get_claims(AuthInfo(token=f"Bearer {token}"))
    assert info.value.reason is Reason.TOKEN_NOT_YET_VALID
    at_exp = mapper(clock=lambda: NOW + 1.0)
    with pytest.raises(CredentialError) as info:
        await at_exp.get_claims(AuthInfo(token=f"Bearer {token}"))
    assert info.value.reason is Reason.TOKEN_EXPIRED


class NaiveKeys:
    """Hands out the RSA key whatever the alg: the mapper itself must still refuse HS256."""

    generation = 0

    def get_key(self, alg: str, kid: str) -> PublicKeyTypes:
        return rsa_key().public_key()


async def test_hs256_refused_even_if_the_provider_would_answer() -> None:
    token = assemble({"alg": "HS256", "kid": "rsa1"}, SUB, lambda d: sign_hs256(_rsa_pem(), d))
    assert await reason_of(f"Bearer {token}", keys=NaiveKeys()) is Reason.UNSUPPORTED_ALGORITHM


async def test_empty_sub_is_accepted() -> None:
    assert (await claims_of(rs256_token({"sub": ""}))).subject == ""


async def test_payload_trailing_data_is_ignored() -> None:
    payload = b64url(b'{"sub":"alice"} trailing garbage')
    assert (await claims_of(rs256_token(payload))).subject == "alice"


# --------------------------------------------------------------------------- audience

AUDIENCE: list[tuple[str, str, Any, bool]] = [
    ("string-match", "api", "api", True),
    ("list-match", "api", ["other", "api"], True),
    ("string-mismatch", "api", "other", False),
    ("case-sensitive", "api", "API", False),
    ("missing", "api", None, False),
    ("empty-string", "api", "", False),
    ("list-of-empty", "api", ["", ""], False),
    ("non-string-element", "api", [1, "api"], False),
    ("number", "api", 5, False),
    ("not-trimmed", "api", " api", False),
    ("blank-config-ignores-aud", "   ", "other", True),
    ("empty-config-ignores-missing", "", None, True),
]


@pytest.mark.parametrize(
    ("expected", "aud", "ok"), [a[1:] for a in AUDIENCE], ids=[a[0] for a in AUDIENCE]
)
async def test_audience(expected: str, aud: Any, ok: bool) -> None:
    payload = dict(SUB) if aud is None else {**SUB, "aud": aud}
    token = rs256_token(payload)
    if ok:
        assert (await claims_of(token, audience=expected)).subject == "alice"
    else:
        assert await reason_of(f"Bearer {token}", audience=expected) is Reason.AUDIENCE_MISMATCH


# --------------------------------------------------------------------------- permissions

PERMISSIONS: list[tuple[str, Any, Role, dict[str, Role]]] = [
    ("single", ["default:read"], Role.UNDEFINED, {"default": Role.READER}),
    (
        "all-words",
        ["a:read", "b:write", "c:worker", "d:admin"],
        Role.UNDEFINED,
        {"a": Role.READER, "b": Role.WRITER, "c": Role.WORKER, "d": Role.ADMIN},
    ),
    ("not-an-array", "default:read", Role.UNDEFINED, {}),
    ("object", {"default": "read"}, Role.UNDEFINED, {}),
    (
        "non-string-element-skipped",
        [1, None, ["x:read"], "default:read"],
        Role.UNDEFINED,
        {"default": Role.READER},
    ),
    ("split-on-first-colon", ["a:b:c"], Role.UNDEFINED, {"a": Role.UNDEFINED}),
    (
        "system-is-case-sensitive",
        ["Temporal-system:admin"],
        Role.UNDEFINED,
        {"Temporal-system": Role.ADMIN},
    ),
    ("role-is-case-insensitive", ["temporal-system:ADMIN"], Role.ADMIN, {}),
    ("or-ed", ["default:read", "default:write"], Role.UNDEFINED, {"default": Role(6)}),
    ("unknown-word-creates-entry", ["default:owner"], Role.UNDEFINED, {"default": Role.UNDEFINED}),
    # Ours (issue 14): Temporal gives admin on "", which by-id and task-token calls would use.
    (
        "empty-namespace-ignored",
        [":admin", ":read", "default:read"],
        Role.UNDEFINED,
        {"default": Role.READER},
    ),
    ("no-colon-skipped", ["defaultread"], Role.UNDEFINED, {}),
    (
        "no-trimming",
        ["default: read", " default:read"],
        Role.UNDEFINED,
        {"default": Role.UNDEFINED, " default": Role.READER},
    ),
    ("system-or-ed", ["temporal-system:read", "temporal-system:worker"], Role(3), {}),
    ("go-tolower-dotted-capital-i", ["ns:WR\u0130TE"], Role.UNDEFINED, {"ns": Role.WRITER}),
]


@pytest.mark.parametrize(
    ("perms", "system", "namespaces"), [p[1:] for p in PERMISSIONS], ids=[p[0] for p in PERMISSIONS]
)
async def test_permissions(perms: Any, system: Role, namespaces: dict[str, Role]) -> None:
    claims = await claims_of(rs256_token({**SUB, "permissions": perms}))
    assert claims.system == system
    assert dict(claims.namespaces) == namespaces


async def test_custom_permissions_claim_name() -> None:
    token = rs256_token({**SUB, "roles": ["ns:admin"], "permissions": ["x:read"]})
    claims = await claims_of(token, permissions_claim_name="roles")
    assert dict(claims.namespaces) == {"ns": Role.ADMIN}


REGEXES: list[tuple[str, str, list[Any], dict[str, Role]]] = [
    (
        "python-groups",
        r"^(?P<namespace>\w+)\.(?P<role>\w+)$",
        ["default.read", "x:admin"],
        {"default": Role.READER},
    ),
    ("go-groups", r"(?<namespace>[a-z-]+)/(?<role>[a-z]+)", ["prod/write"], {"prod": Role.WRITER}),
    (
        "unanchored-search",
        r"(?P<namespace>\w+)=(?P<role>\w+)",
        ["team a ns=admin!"],
        {"ns": Role.ADMIN},
    ),
    (
        "non-participating-group-is-the-empty-namespace-ignored",
        r"^(?P<namespace>\w+)?:(?P<role>\w+)$",
        [":admin", "ns:read"],
        {"ns": Role.READER},
    ),
    ("ascii-word", r"^(?P<namespace>\w+):(?P<role>\w+)$", ["caf\u00e9:admin"], {}),
    ("dollar-is-end-of-text", r"^(?P<namespace>\w+):(?P<role>\w+)$", ["ns:admin\n"], {}),
    (
        "escaped-dollar-kept",
        r"^(?P<namespace>\w+)\$(?P<role>\w+)",
        ["ns$read"],
        {"ns": Role.READER},
    ),
    ("class-kept", r"^(?P<namespace>[$\w]+):(?P<role>\w+)", ["$ns:read"], {"$ns": Role.READER}),
    (
        "multiline-flag-keeps-dollar",
        r"(?m)^(?P<namespace>\w+):(?P<role>\w+)$",
        ["ns:admin\n"],
        {"ns": Role.ADMIN},
    ),
    ("system-via-regex", r"^(?P<namespace>[\w-]+)\|(?P<role>\w+)$", ["temporal-system|admin"], {}),
]


@pytest.mark.parametrize(
    ("regex", "perms", "namespaces"), [r[1:] for r in REGEXES], ids=[r[0] for r in REGEXES]
)
async def test_permissions_regex(regex: str, perms: list[Any], namespaces: dict[str, Role]) -> None:
    claims = await claims_of(rs256_token({**SUB, "permissions": perms}), permissions_regex=regex)
    assert dict(claims.namespaces) == namespaces


async def test_system_role_via_regex() -> None:
    regex = r"^(?P<namespace>[\w-]+)\|(?P<role>\w+)$"
    claims = await claims_of(
        rs256_token({**SUB, "permissions": ["temporal-system|admin"]}), permissions_regex=regex
    )
    assert claims.system == Role.ADMIN


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("(", "does not compile"),
        (r"(?P<namespace>\w+):(\w+)", "'role'"),
        (r"(\w+):(?P<role>\w+)", "'namespace'"),
        (r"(\w+):(\w+)", "'namespace', 'role'"),
    ],
)
def test_bad_regex_fails_construction(regex: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mapper(permissions_regex=regex)
    with pytest.raises(ValueError):
        compile_permissions_regex(regex)


def test_a_permission_on_the_empty_namespace_is_ignored_and_logged() -> None:
    log = Recorder()
    system, namespaces = parse_permissions([":admin", "default:read"], None, log)
    assert (system, namespaces) == (Role.UNDEFINED, {"default": Role.READER})
    assert log.events == [
        (
            "permission_ignored",
            {"why": "ignoring permission on the empty namespace", "permission": "':admin'"},
        )
    ]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def test_parse_permissions_is_reusable() -> None:
    system, namespaces = parse_permissions(["temporal-system:write", "a:read", 3])
    assert (system, namespaces) == (Role.WRITER, {"a": Role.READER})


# --------------------------------------------------------------------------- cache


class CountingKeys:
    """A KeyProvider fake that counts lookups and lets the test bump the generation."""

    def __init__(self) -> None:
        self.inner = provider()
        self.calls = 0
        self.gen = 0

    def get_key(self, alg: str, kid: str) -> PublicKeyTypes:
        self.calls += 1
        return self.inner.get_key(alg, kid)

    @property
    def generation(self) -> int:
        return self.gen


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_cache_serves_second_call_without_verifying() -> None:
    keys = CountingKeys()
    assert isinstance(keys, KeyProvider)
    m = mapper(keys=keys)
    info = AuthInfo(token=f"Bearer {rs256_token({**SUB, 'exp': NOW + 60})}")
    first = await m.get_claims(info)
    second = await m.get_claims(info)
    assert first == second and keys.calls == 1


async def test_cache_is_invalidated_by_key_generation() -> None:
    keys = CountingKeys()
    m = mapper(keys=keys)
    info = AuthInfo(token=f"Bearer {rs256_token(SUB)}")
    await m.get_claims(info)
    keys.gen += 1
    await m.get_claims(info)
    assert keys.calls == 2


async def test_cache_never_serves_past_exp() -> None:
    keys, clock = CountingKeys(), Clock(NOW)
    m = mapper(keys=keys, clock=clock)
    info = AuthInfo(token=f"Bearer {rs256_token({**SUB, 'exp': NOW + 10})}")
    await m.get_claims(info)
    clock.now = NOW + 9.999
    await m.get_claims(info)
    assert keys.calls == 1
    clock.now = NOW + 10
    with pytest.raises(CredentialError) as err:
        await m.get_claims(info)
    assert err.value.reason is Reason.TOKEN_EXPIRED


async def test_cache_caps_tokens_without_exp() -> None:
    keys, clock = CountingKeys(), Clock(NOW)
    m = mapper(keys=keys, clock=clock)
    info = AuthInfo(token=f"Bearer {rs256_token(SUB)}")
    await m.get_claims(info)
    clock.now = NOW + 30
    await m.get_claims(info)
    assert keys.calls == 1
    clock.now = NOW + 61
    await m.get_claims(info)
    assert keys.calls == 2


async def test_cache_does_not_keep_failures() -> None:
    keys = CountingKeys()
    m = mapper(keys=keys)
    info = AuthInfo(token=f"Bearer {_flip_last_sig_byte(rs256_token(SUB))}")
    for _ in range(2):
        with pytest.raises(CredentialError):
            await m.get_claims(info)
    assert keys.calls == 2


async def test_cache_is_bounded_lru_and_keyed_by_audience() -> None:
    keys = CountingKeys()
    m = mapper(keys=keys, cache_size=2)
    a, b, c = (AuthInfo(token=f"Bearer {rs256_token({'sub': s})}") for s in "abc")
    for info in (a, b, a, c):  # c evicts b (a was used more recently)
        await m.get_claims(info)
    assert keys.calls == 3
    await m.get_claims(a)
    assert keys.calls == 3
    await m.get_claims(b)
    assert keys.calls == 4
    aud = AuthInfo(token=f"Bearer {rs256_token({'sub': 'a', 'aud': 'x'})}", audience="x")
    await m.get_claims(aud)
    with pytest.raises(CredentialError):
        await m.get_claims(AuthInfo(token=aud.token, audience="y"))


async def test_cache_size_zero_disables_cache() -> None:
    keys = CountingKeys()
    m = mapper(keys=keys, cache_size=0)
    info = AuthInfo(token=f"Bearer {rs256_token(SUB)}")
    await m.get_claims(info)
    await m.get_claims(info)
    assert keys.calls == 2
