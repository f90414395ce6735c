"""Globs with captures and `namespace:role` grants, shared by the certificate and IdP mappers.

A pattern without `*` is an exact match. `*` matches one or more characters up to the field's
separator (`/` for URIs, SPIFFE IDs and claim values, `.` for DNS names); `**` matches one or
more of any character. Each wildcard is a capture, numbered from 1, usable as `{1}`, `{2}`, ...
in the namespace part of a grant.

A grant is `namespace:permission` with Temporal's permission words (`read`, `write`, `worker`,
`admin`). `temporal-system:<permission>` written literally grants the system role; a namespace
built from captures never does (a certificate for a namespace named `temporal-system` must not
become a cluster-wide credential), such a grant is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxy.model import SYSTEM_NAMESPACE, Role

PERMISSION_WORDS: Mapping[str, Role] = {
    "read": Role.READER,
    "write": Role.WRITER,
    "worker": Role.WORKER,
    "admin": Role.ADMIN,
}
_CAPTURE_REF = re.compile(r"\{(\d+)\}")


class PatternError(ValueError):
    """A pattern or grant that cannot be used; the message names what is wrong, `key` the
    config key it came from when the caller knows it."""

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled pattern. `match` returns the captures, or None."""

    text: str
    regex: re.Pattern[str]
    captures: int
    fold_case: bool = False

    @staticmethod
    def compile(text: str, *, separator: str = "/", fold_case: bool = False) -> Glob:
        if not text:
            raise PatternError("pattern must not be empty")
        source = text.lower() if fold_case else text
        parts: list[str] = []
        captures = 0
        i = 0
        one = f"([^{re.escape(separator)}]+)" if separator else "(.+)"
        while i < len(source):
            if source.startswith("***", i):
                raise PatternError(f"{text!r}: use * or **, not more stars in a row")
            if source.startswith("**", i):
                parts.append("(.+)")
                captures += 1
                i += 2
            elif source[i] == "*":
                parts.append(one)
                captures += 1
                i += 1
            else:
                j = source.find("*", i)
                j = len(source) if j < 0 else j
                parts.append(re.escape(source[i:j]))
                i = j
        return Glob(
            text=text,
            regex=re.compile("".join(parts), re.DOTALL),
            captures=captures,
            fold_case=fold_case,
        )

    def match(self, value: str) -> tuple[str, ...] | None:
        m = self.regex.fullmatch(value.lower() if self.fold_case else value)
        return None if m is None else m.groups()


@dataclass(frozen=True, slots=True)
class Grant:
    """One `namespace:permission` entry; the namespace may refer to captures."""

    namespace: str
    role: Role
    uses_captures: bool

    @staticmethod
    def parse(text: str, available_captures: int) -> Grant:
        namespace, sep, word = text.rpartition(":")
        if not sep:
            raise PatternError(f"{text!r}: expected namespace:permission")
        role = PERMISSION_WORDS.get(word)
        if role is None:
            raise PatternError(
                f"{text!r}: unknown permission {word!r} (one of {', '.join(PERMISSION_WORDS)})"
            )
        refs = [int(n) for n in _CAPTURE_REF.findall(namespace)]
        for ref in refs:
            if not 1 <= ref <= available_captures:
                raise PatternError(
                    f"{text!r}: refers to {{{ref}}} but the pattern has "
                    f"{available_captures} wildcard(s)"
                )
        if not namespace:
            raise PatternError(
                f"{text!r}: the namespace must not be empty (the empty namespace grants nothing)"
            )
        return Grant(namespace=namespace, role=role, uses_captures=bool(refs))

    def namespace_for(self, captures: Sequence[str]) -> str:
        if not self.uses_captures:
            return self.namespace
        return _CAPTURE_REF.sub(lambda m: captures[int(m.group(1)) - 1], self.namespace)


def parse_grants(texts: Iterable[str], available_captures: int) -> tuple[Grant, ...]:
    return tuple(Grant.parse(t, available_captures) for t in texts)


class RoleAccumulator:
    """Collects grants into (system role, namespace roles), OR-ing as Temporal does."""

    __slots__ = ("namespaces", "system")

    def __init__(self) -> None:
        self.system = Role.UNDEFINED
        self.namespaces: dict[str, Role] = {}

    def add(self, grant: Grant, captures: Sequence[str] = ()) -> None:
        namespace = grant.namespace_for(captures)
        if not namespace:
            return  # the empty namespace grants nothing (config refuses it; captures are never "")
        if namespace == SYSTEM_NAMESPACE:
            if grant.uses_captures:
                return  # never a system role from caller-influenced text
            self.system |= grant.role
            return
        self.namespaces[namespace] = self.namespaces.get(namespace, Role.UNDEFINED) | grant.role

    def add_roles(self, system: Role, namespaces: Mapping[str, Role]) -> None:
        self.system |= system
        for namespace, role in namespaces.items():
            if not namespace:
                continue  # a member mapper's role on "" grants nothing
            self.namespaces[namespace] = self.namespaces.get(namespace, Role.UNDEFINED) | role
