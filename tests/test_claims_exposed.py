"""Token claims exposed to policies: strings and arrays of strings only, nothing guessed."""

from __future__ import annotations

from proxy.claims.exposed import expose_claims

PAYLOAD = {
    "sub": "alice",
    "groups": ["sre", "payments-oncall"],
    "email": "alice@acme.io",
    "admin": True,
    "level": 3,
    "mixed": ["a", 1],
    "empty": [],
    "obj": {"a": "b"},
    "realm_access": {"roles": ["ops"]},
    "a.b": "literal dotted name",
}


def test_strings_and_string_arrays_are_exposed() -> None:
    assert expose_claims(PAYLOAD, ["groups", "email", "sub"]) == {
        "groups": ("sre", "payments-oncall"),
        "email": ("alice@acme.io",),
        "sub": ("alice",),
    }


def test_other_types_and_missing_claims_are_absent() -> None:
    assert expose_claims(PAYLOAD, ["admin", "level", "mixed", "obj", "missing"]) == {}


def test_an_empty_array_is_an_empty_set() -> None:
    assert expose_claims(PAYLOAD, ["empty"]) == {"empty": ()}


def test_dotted_names_read_nested_objects_after_a_literal_match() -> None:
    assert expose_claims(PAYLOAD, ["realm_access.roles", "a.b", "realm_access.x"]) == {
        "realm_access.roles": ("ops",),
        "a.b": ("literal dotted name",),
    }
