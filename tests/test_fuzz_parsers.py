"""Property-based fuzzing of the parsers that read untrusted (or operator-supplied) bytes.

- `parse_authorization_header`: any text either yields the token or raises CredentialError.
- The JWT path (`DefaultJWTClaimMapper.get_claims`): arbitrary text, structured tokens with
  random signatures, validly signed arbitrary payloads and mutated real tokens. Only
  CredentialError may escape, and no mutation that changes what was signed (or the signature
  bytes) is ever accepted, even after the original token sits in the verified-token cache.
- Config loading of mutated YAML (`load_config` / `parse_config`): a Config or ConfigError,
  never another exception.

The namespace extractor is fuzzed against the real protobuf parser in tests/test_wire.py.
The config-loader crashes this fuzzing found (fixed in d418020) have deterministic regression
tests at the end.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.claims.jwt import DefaultJWTClaimMapper
from proxy.claims.token import parse_authorization_header
from proxy.config.parse import load_config, parse_config
from proxy.config.schema import Config
from proxy.errors import ConfigError, CredentialError
from proxy.keys.jwks import StaticKeyProvider
from proxy.model import AuthInfo, Claims
from tests.jwt_helpers import (
    assemble,
    b64url,
    ec_key,
    es256_token,
    rs256_token,
    rsa_key,
    sign_es256_raw,
    sign_rs256,
)

NOW = 1_800_000_000
FUZZ = settings(
    max_examples=150,
    deadline=None,
    # tmp_path is only a scratch file rewritten by every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _provider() -> StaticKeyProvider:
    return StaticKeyProvider({"rsa1": rsa_key().public_key(), "ec1": ec_key().public_key()})


# One mapper across all examples: a token verified once is cached, and a mutated copy must
# still be refused (the cache is keyed by the exact header value).
MAPPER = DefaultJWTClaimMapper(_provider(), clock=lambda: float(NOW))


def claims_or_error(header: str, mapper: DefaultJWTClaimMapper = MAPPER) -> Claims | None:
    """Claims, or None for a CredentialError. Any other exception propagates (a bug)."""
    try:
        return asyncio.run(mapper.get_claims(AuthInfo(token=header)))
    except CredentialError as exc:
        assert exc.detail, "a refusal carries an operator-facing detail"
        return None


def _b64decode(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:
        return None


# --------------------------------------------------------------------- authorization header


@FUZZ
@given(st.text())
@example("Bearer ")
@example("bearer\x00 x")
@example("\u212aearer x")  # Kelvin sign lowercases to "k": not "bearer"
@example("BEARER" + " " * 3)
def test_authorization_header_parser_returns_the_tail_or_refuses(value: str) -> None:
    try:
        token = parse_authorization_header(value)
    except CredentialError:
        scheme, sep, _ = value.partition(" ")
        assert not sep or scheme.lower() != "bearer"
        return
    scheme, sep, tail = value.partition(" ")
    assert sep == " " and scheme.lower() == "bearer" and token == tail


# --------------------------------------------------------------------- the JWT path

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CLAIM_VALUE = st.one_of(
    JSON,
    st.integers(min_value=NOW - 10, max_value=NOW + 10),
    st.sampled_from(["default:read", "temporal-system:admin", ":admin", "ns:WRITE", "x"]),
    st.lists(st.sampled_from(["default:read", "temporal-system:admin", ":admin", "a:b:c"])),
)
PAYLOAD = st.one_of(
    st.dictionaries(
        st.sampled_from(["sub", "exp", "iat", "nbf", "aud", "permissions", "iss", "x"]),
        CLAIM_VALUE,
        max_size=7,
    ),
    JSON,
)
HEADER = st.one_of(
    st.fixed_dictionaries(
        {
            "alg": st.sampled_from(["RS256", "ES256", "none", "HS256", "PS256", "rs256", ""])
            | JSON,
            "kid": st.sampled_from(["rsa1", "ec1", "RSA1", "", "nope"]) | JSON,
        },
        optional={"typ": st.just("JWT"), "crit": JSON, "jku": st.text(max_size=10)},
    ),
    JSON,
)
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_=+/.", max_size=40)


@FUZZ
@given(st.text(max_size=300))
@example("Bearer ..")
@example("Bearer " + "." * 10)
@example("Bearer a.b.c")
@example("Bearer e30.e30.")  # {}.{}.<empty signature>
@example("Bearer " + "W" * 10_000 + ".e30.AA")
def test_arbitrary_authorization_values_are_refused_with_credential_error(value: str) -> None:
    claims = claims_or_error(value)
    if value == "":
        assert claims == Claims(auth_type="none")  # no token: empty claims, Temporal's rule
    else:
        assert claims is None


@FUZZ
@given(st.lists(SEGMENT, min_size=1, max_size=5))
def test_bearer_with_arbitrary_segments_is_refused(segments: list[str]) -> None:
    assert claims_or_error("Bearer " + ".".join(segments)) is None


@FUZZ
@given(
    HEADER,
    PAYLOAD,
    st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=256, max_size=256),
        st.binary(min_size=64, max_size=64),
    ),
)
def test_structured_tokens_with_random_signatures_are_refused(
    header: Any, payload: Any, signature: bytes
) -> None:
    token = assemble(
        b64url(json.dumps(header).encode()),
        b64url(json.dumps(payload).encode()),
        signature=signature,
    )
    assert claims_or_error(f"Bearer {token}") is None


@FUZZ
@given(PAYLOAD, st.sampled_from(["RS256", "ES256"]))
def test_validly_signed_arbitrary_payloads_map_or_refuse_cleanly(payload: Any, alg: str) -> None:
    if alg == "RS256":
        token = assemble({"alg": alg, "kid": "rsa1"}, payload, lambda d: sign_rs256(rsa_key(), d))
    else:
        token = assemble({"alg": alg, "kid": "ec1"}, payload, lambda d: sign_es256_raw(ec_key(), d))
    claims = claims_or_error(f"Bearer {token}")
    if claims is None:
        return
    # Accepted: then it really was a usable token by Temporal's rules.
    assert isinstance(payload, dict) and isinstance(payload.get("sub"), str)
    assert claims.subject == payload["sub"] and claims.auth_type == "jwt"
    exp = payload.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp != 0:
        assert exp > NOW


def _good_tokens() -> list[str]:
    payload = {"sub": "alice", "permissions": ["default:write", "temporal-system:read"]}
    return [
        rs256_token({**payload, "exp": NOW + 600}),
        es256_token({**payload, "exp": NOW + 600}),
        rs256_token({**payload, "aud": ["x"], "iat": NOW - 5}),
    ]


GOOD = _good_tokens()
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_.=+/ \x00é"


@st.composite
def mutated_token(draw: st.DrawFn) -> tuple[str, str]:
    original = draw(st.sampled_from(GOOD))
    chars = list(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "swap", "truncate", "segment"]))
        if op == "segment":
            parts = "".join(chars).split(".")
            if len(parts) == 3:
                i, j = draw(st.permutations(range(3)))[:2]
                other = draw(st.sampled_from(GOOD)).split(".")
                parts[i] = draw(st.sampled_from([other[j], parts[j], "", parts[i] + parts[i]]))
            chars = list(".".join(parts))
            continue
        if not chars:
            break
        pos = draw(st.integers(0, len(chars) - 1))
        if op == "replace":
            chars[pos] = draw(st.sampled_from(TOKEN_ALPHABET))
        elif op == "insert":
            chars.insert(pos, draw(st.sampled_from(TOKEN_ALPHABET)))
        elif op == "delete":
            del chars[pos]
        elif op == "swap" and pos + 1 < len(chars):
            chars[pos], chars[pos + 1] = chars[pos + 1], chars[pos]
        elif op == "truncate":
            chars = chars[:pos]
    return original, "".join(chars)


def _same_signed_token(original: str, mutated: str) -> bool:
    """True when `mutated` carries the original signing input and signature bytes.

    base64url's last character has spare bits that decoders (Go's non-strict RawURLEncoding,
    as Temporal uses, and ours) ignore, so such a change is the same token.
    """
    o, m = original.split("."), mutated.split(".")
    if len(m) != 3 or o[:2] != m[:2]:
        return False
    decoded = _b64decode(m[2])
    return decoded is not None and decoded == _b64decode(o[2])


@FUZZ
@given(mutated_token())
def test_mutated_tokens_are_never_accepted(case: tuple[str, str]) -> None:
    original, mutated = case
    good = claims_or_error(f"Bearer {original}")
    assert good is not None and good.subject == "alice"  # and now it is cached
    claims = claims_or_error(f"Bearer {mutated}")
    if claims is not None:
        assert _same_signed_token(original, mutated), f"accepted a mutated token: {mutated!r}"
        assert claims == good


@FUZZ
@given(st.sampled_from(GOOD), st.data())
def test_any_single_bit_flip_in_the_signature_is_refused(token: str, data: st.DataObject) -> None:
    head, payload, sig_b64 = token.split(".")
    sig = bytearray(base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4)))
    bit = data.draw(st.integers(0, len(sig) * 8 - 1))
    sig[bit // 8] ^= 1 << (bit % 8)
    assert claims_or_error(f"Bearer {head}.{payload}.{b64url(bytes(sig))}") is None


# --------------------------------------------------------------------- config loading

VALID_CONFIG: dict[str, Any] = {
    "listen": {
        "address": "127.0.0.1:7233",
        "workers": 1,
        "maxMessageSize": 1048576,
        "shutdownGracePeriod": "30s",
    },
    "upstream": {"address": "temporal-frontend:7233", "authorization": "forward"},
    "admin": {"address": "127.0.0.1:9090"},
    "tls": {
        "frontend": {
            "server": {
                "certFile": "/certs/server.pem",
                "keyFile": "/certs/server.key",
                "clientCaFiles": ["/certs/ca.pem"],
                "requireClientAuth": True,
            }
        },
        "internode": {
            "server": {"certFile": "/certs/internode.pem", "keyFile": "/certs/internode.key"},
            "client": {"serverName": "frontend", "rootCaFiles": ["/certs/ca.pem"]},
        },
        "refreshInterval": "1m",
        "expirationChecks": {"warningWindow": "720h", "errorWindow": "24h", "checkInterval": "1h"},
    },
    "authorization": {
        "jwtKeyProvider": {
            "keySourceURIs": ["https://idp.example/jwks.json"],
            "refreshInterval": "1m",
        },
        "permissionsClaimName": "permissions",
        "permissionsRegex": "",
        "authorizer": "default",
        "claimMapper": "default",
        "authHeaderName": "authorization",
        "authExtraHeaderName": "authorization-extras",
        "audience": "",
    },
    "metrics": {"namespaceLabels": ["default"]},
    "log": {"format": "json", "level": "info"},
    "codec": {
        "enabled": True,
        "keys": {"k1": base64.b64encode(b"\x01" * 32).decode()},
        "encryptKeyId": "k1",
        "cors": {"origins": ["https://ui.example"]},
    },
}
VALID_YAML = yaml.safe_dump(VALID_CONFIG, sort_keys=False)
ENV = {"HOME_DIR": "/home/x"}


def test_the_fuzz_seed_config_is_valid() -> None:
    assert isinstance(parse_config(copy.deepcopy(VALID_CONFIG), ENV), Config)


def _load_bytes(tmp_path: Path, data: bytes) -> Config | None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        return load_config(path, ENV)
    except ConfigError as exc:
        assert str(exc)
        return None


YAML_SNIPPETS = st.sampled_from(
    [
        ":", "- ", "{", "}", "[", "]", "&a ", "*a", "!!binary ", "!!python/object:os.system ",
        "? ", "|", ">", "'", '"', "#", "\t", "\n", "  ", "${", "${NOPE}", "${HOME_DIR}", "~",
        "null", "true", "-1", "1e400", "0x10", "0o7", ".inf", ".nan", "2026-01-01", "<<: *a",
        "9999999999999999999999", "\x00", "\ufeff", "é", "\u2028", "%YAML 1.1\n", "---\n",
        "...\n",
    ]
)  # fmt: skip


@st.composite
def mutated_yaml(draw: st.DrawFn) -> bytes:
    text = VALID_YAML
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup_line", "drop_line"]))
        if op == "insert":
            text = text[:pos] + draw(YAML_SNIPPETS | st.text(max_size=5)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        elif op == "replace":
            text = text[:pos] + draw(YAML_SNIPPETS) + text[pos + 1 :]
        else:
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [lines[i], lines[i]] if op == "dup_line" else []
            text = "".join(lines)
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(max_size=4)) + data[pos:]
    return data


@FUZZ
@given(mutated_yaml())
def test_mutated_yaml_gives_a_config_or_a_config_error(tmp_path: Path, data: bytes) -> None:
    _load_bytes(tmp_path, data)


YAML_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["0s", "1m", "-1s", "1.5h", "5", "127.0.0.1:1", "h:99999", "a:b:c", ""]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_tree(draw: st.DrawFn) -> Any:
    tree = copy.deepcopy(VALID_CONFIG)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(tree)))
        if not path:
            tree = draw(YAML_VALUE)
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.text(max_size=8) | st.sampled_from(["workers", "certData", "keys"]))] = (
                draw(YAML_VALUE)
            )
        else:
            parent[path[-1]] = draw(YAML_VALUE)
    return tree


@FUZZ
@given(mutated_tree())
def test_mutated_config_trees_give_a_config_or_a_config_error(tree: Any) -> None:
    try:
        parse_config(tree, ENV)
    except ConfigError as exc:
        assert str(exc)


@FUZZ
@given(mutated_tree())
def test_mutated_config_trees_survive_a_yaml_round_trip(tmp_path: Path, tree: Any) -> None:
    try:
        data = yaml.safe_dump(tree, allow_unicode=True).encode()
    except yaml.YAMLError:
        return
    _load_bytes(tmp_path, data)


# --------------------------------------------------------------------- regressions (found here)


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"upstream:\n  address: caf\xe9:7233\n")
    with pytest.raises(ConfigError):
        load_config(path, ENV)


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("listen: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_config(path, ENV)


def test_yaml_integer_over_4300_digits_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("listen:\n  workers: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_config(path, ENV)


def test_integer_string_over_4300_digits_is_a_config_error() -> None:
    raw = copy.deepcopy(VALID_CONFIG)
    raw["listen"]["workers"] = "9" * 5000
    with pytest.raises(ConfigError, match=r"listen\.workers"):
        parse_config(raw, ENV)


@pytest.mark.parametrize("port", ["²", "9" * 5000])
def test_address_with_a_non_ascii_or_huge_port_is_a_config_error(port: str) -> None:
    raw = copy.deepcopy(VALID_CONFIG)
    raw["listen"]["address"] = f"127.0.0.1:{port}"
    with pytest.raises(ConfigError, match=r"listen\.address"):
        parse_config(raw, ENV)


@pytest.mark.parametrize("key", ["maxMessageSize", "maxHeaderListSize"])
def test_sizes_grpc_cannot_take_are_a_config_error(key: str) -> None:
    raw = copy.deepcopy(VALID_CONFIG)
    raw["listen"][key] = 2**31
    with pytest.raises(ConfigError, match=rf"listen\.{key}"):
        parse_config(raw, ENV)
