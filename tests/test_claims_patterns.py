"""proxy.claims.patterns on its own: glob semantics per field kind, grants and their `{n}`
substitution, the role accumulator. tests/test_claims_cert.py covers the basic URI globs, one
DNS glob and the grant errors through the certificate mapper; this file covers the rest."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.claims.patterns import (
    PERMISSION_WORDS,
    Glob,
    Grant,
    PatternError,
    RoleAccumulator,
    parse_grants,
)
from proxy.model import SYSTEM_NAMESPACE, Role

# How the mappers compile each field kind (claims/cert.py, claims/idp.py).
URI = {"separator": "/"}
DNS = {"separator": ".", "fold_case": True}
ANY = {"separator": ""}

# ----------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "kind", "value", "captures"),
    [
        # `*` stops at the field's separator: `/` for URIs, `.` for DNS names.
        ("*.example.com", DNS, "a.b.example.com", None),
        ("*.example.com", DNS, "a-b.example.com", ("a-b",)),
        ("spiffe://td/*", URI, "spiffe://td/a.b.c", ("a.b.c",)),  # a dot is no URI separator
        ("*.x", DNS, "a/b.x", ("a/b",)),  # a slash is no DNS separator
        # `**` crosses separators of every kind.
        ("**.example.com", DNS, "a.b.example.com", ("a.b",)),
        ("spiffe://td/**/sa/*", URI, "spiffe://td/ns/a/b/sa/w", ("ns/a/b", "w")),
        # Both need at least one character.
        ("*.example.com", DNS, ".example.com", None),
        ("spiffe://td/**", URI, "spiffe://td/", None),
        # Without a separator `*` is as wide as `**`.
        ("group-*", ANY, "group-a/b.c", ("a/b.c",)),
        # Anchored at both ends: no prefix, suffix or trailing newline slips through.
        ("spiffe://td/a", URI, "spiffe://td/a\n", None),
        ("spiffe://td/a", URI, "xspiffe://td/a", None),
        ("*.example.com", DNS, "a.example.com.evil.net", None),
        # Regex metacharacters in the literal parts are literal.
        ("a+b(c)?", URI, "a+b(c)?", ()),
        ("a+b(c)?", URI, "aab", None),
        ("team-[x]", URI, "team-x", None),
        ("team-[x]", URI, "team-[x]", ()),
        ("^a$|b", URI, "b", None),
    ],
)
def test_glob_semantics(
    pattern: str, kind: dict[str, Any], value: str, captures: tuple[str, ...] | None
) -> None:
    assert Glob.compile(pattern, **kind).match(value) == captures


def test_captures_are_numbered_left_to_right_over_both_wildcards() -> None:
    glob = Glob.compile("spiffe://*/ns/**/sa/*", separator="/")
    assert glob.captures == 3
    assert glob.match("spiffe://td/ns/a/b/sa/w") == ("td", "a/b", "w")
    assert Glob.compile("spiffe://td/ns/a", separator="/").captures == 0


def test_the_first_of_two_wildcards_in_one_segment_takes_the_most() -> None:
    # Grants built from such captures depend on this split; it is Python's greedy regex.
    assert Glob.compile("*-*", separator="/").match("a-b-c") == ("a-b", "c")


def test_case_rules() -> None:
    # URIs and claim values are case-sensitive.
    assert Glob.compile("spiffe://Prod/*", separator="/").match("spiffe://prod/x") is None
    assert Glob.compile("spiffe://prod/*", separator="/").match("spiffe://prod/Pay") == ("Pay",)
    # DNS names are not: pattern and value are folded, so a capture comes out lower-case
    # (the namespace a grant builds from it does not depend on how the SAN was spelled).
    glob = Glob.compile("*.Workers.example.com", separator=".", fold_case=True)
    assert glob.match("PAYMENTS.workers.EXAMPLE.com") == ("payments",)
    assert glob.text == "*.Workers.example.com"  # what the operator wrote, for messages


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "pattern must not be empty"),
        ("a***", "'a***': use * or **, not more stars in a row"),
        ("****.example.com", "use * or **, not more stars in a row"),
    ],
)
def test_bad_globs_say_why(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)) as info:
        Glob.compile(pattern, separator=".", fold_case=True)
    assert info.value.key == ""  # the caller adds the config key it knows


def test_a_pattern_error_carries_its_key() -> None:
    err = PatternError("bad", key="authorization.cert.rules[0].dnsNames[1]")
    assert isinstance(err, ValueError)
    assert (str(err), err.key) == ("bad", "authorization.cert.rules[0].dnsNames[1]")


# ----------------------------------------------------------------------------- grants


@pytest.mark.parametrize(("word", "role"), sorted(PERMISSION_WORDS.items()))
def test_each_permission_word_grants_its_role(word: str, role: Role) -> None:
    assert Grant.parse(f"payments:{word}", 0) == Grant("payments", role, False)


def test_permission_words_are_temporals_four() -> None:
    assert dict(PERMISSION_WORDS) == {
        "read": Role.READER,
        "write": Role.WRITER,
        "worker": Role.WORKER,
        "admin": Role.ADMIN,
    }


def test_the_permission_is_after_the_last_colon() -> None:
    assert Grant.parse("team:a:write", 0) == Grant("team:a", Role.WRITER, False)


@pytest.mark.parametrize(
    ("text", "captures", "message"),
    [
        (
            "payments:READ",
            0,
            "'payments:READ': unknown permission 'READ' (one of read, write, worker, admin)",
        ),
        ("{3}:read", 2, "'{3}:read': refers to {3} but the pattern has 2 wildcard(s)"),
        ("{1}:read", 0, "refers to {1} but the pattern has 0 wildcard(s)"),
        ("payments-read", 0, "'payments-read': expected namespace:permission"),
    ],
)
def test_grant_errors_quote_the_grant(text: str, captures: int, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        Grant.parse(text, captures)


def test_capture_substitution() -> None:
    grant = Grant.parse("{2}.{1}-{2}:write", 2)
    assert grant.uses_captures
    assert grant.namespace_for(("prod", "payments")) == "payments.prod-payments"


def test_a_capture_is_inserted_verbatim() -> None:
    # Caller-controlled text: no template syntax in it is expanded, no second substitution.
    grant = Grant.parse("ns-{1}:read", 1)
    for captured in ("{1}", r"\g<0>", r"\1", "$1"):
        assert grant.namespace_for((captured,)) == f"ns-{captured}"


def test_braces_without_a_number_are_literal() -> None:
    grant = Grant.parse("{team}:read", 0)
    assert not grant.uses_captures
    assert grant.namespace_for(("ignored",)) == "{team}"


def test_parse_grants_keeps_order_and_stops_at_the_first_bad_one() -> None:
    grants = parse_grants(["{1}:read", "shared:worker"], 1)
    assert [(g.namespace, g.role) for g in grants] == [
        ("{1}", Role.READER),
        ("shared", Role.WORKER),
    ]
    with pytest.raises(PatternError, match=re.escape("'{2}:read': refers to {2}")):
        parse_grants(["{1}:read", "{2}:read"], 1)


# --------------------------------------------------------------------------- accumulator


def test_roles_on_one_namespace_add_up() -> None:
    glob = Glob.compile("spiffe://td/ns/*/sa/*", separator="/")
    grants = parse_grants(["{1}:read", "{1}:write", "audit-{2}:read"], glob.captures)
    captures = glob.match("spiffe://td/ns/payments/sa/worker")
    assert captures is not None
    acc = RoleAccumulator()
    for grant in grants:
        acc.add(grant, captures)
    acc.add(Grant.parse("payments:worker", 0))
    assert acc.namespaces == {
        "payments": Role.READER | Role.WRITER | Role.WORKER,
        "audit-worker": Role.READER,
    }
    assert acc.system == Role.UNDEFINED


def test_only_a_literal_system_grant_gives_a_system_role() -> None:
    acc = RoleAccumulator()
    acc.add(Grant.parse("{1}:admin", 1), (SYSTEM_NAMESPACE,))
    assert (acc.system, acc.namespaces) == (Role.UNDEFINED, {})
    acc.add(Grant.parse(f"{SYSTEM_NAMESPACE}:read", 0))
    assert (acc.system, acc.namespaces) == (Role.READER, {})


def test_add_roles_merges_a_member_mappers_roles_and_drops_the_empty_namespace() -> None:
    acc = RoleAccumulator()
    acc.add(Grant.parse("payments:read", 0))
    acc.add_roles(Role.WORKER, {"payments": Role.WRITER, "": Role.ADMIN, "ops": Role.READER})
    assert acc.system == Role.WORKER
    assert acc.namespaces == {"payments": Role.READER | Role.WRITER, "ops": Role.READER}
