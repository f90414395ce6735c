"""Certificate subject patterns: RFC 4514 text in config, matched against parsed attributes.

A rule's `subject` is parsed once, at startup, into a sequence of RDNs (each a set of
attribute type and value), in the order RFC 4514 writes a name (`CN=w,O=Acme`: most specific
first). A certificate's subject is compared RDN by RDN, attribute by attribute, on the decoded
values, never on an escaped string: `CN=*,O=Acme` cannot match the single attribute
`CN=mallory,O=Acme` (rendered `CN=mallory\\,O=Acme`), because that subject has one RDN, not two.

In a pattern value an unescaped `*` matches one or more characters of that one attribute
value (`**` is the same: a value has no separators); `\\*` or `\\2A` is a literal star.
Everything else is RFC 4514: `\\,` `\\+` `\\"` `\\\\` `\\;` `\\<` `\\>` `\\=` `\\#` and `\\ `
escapes, `\\XX` hex pairs (UTF-8), `+` between the attributes of a multi-valued RDN (which
match in any order, as a set), attribute types by name (CN, L, ST, O, OU, C, STREET, DC, UID,
case-insensitive) or numeric OID. Values compare case-sensitively; an attribute whose value is
not a string (a `#`-encoded BER value) never matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.claims.patterns import PatternError

# RFC 4514 section 3's names, and the OIDs they stand for.
ATTRIBUTE_TYPES = {
    "CN": "2.5.4.3",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "C": "2.5.4.6",
    "STREET": "2.5.4.9",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
}
_NUMERIC_OID = re.compile(r"[0-9]+(\.[0-9]+)+")
_DESCR = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_HEX = "0123456789abcdefABCDEF"
_ESCAPABLE = '\\,+"<>;= #*'
_FORBIDDEN = '"<>;\x00'
_MAX_ATTRIBUTES_PER_RDN = 8

# A parsed subject, as PeerIdentity carries it: RDNs in RFC 4514 order, each a tuple of
# (attribute type as a dotted OID, value or None when the value is not a string).
Rdns = tuple[tuple[tuple[str, str | None], ...], ...]


@dataclass(frozen=True, slots=True)
class _Attribute:
    oid: str
    regex: re.Pattern[str]
    captures: int


def _attribute_type(text: str, where: str) -> str:
    name = text.strip(" ")
    if _NUMERIC_OID.fullmatch(name):
        return name
    if _DESCR.fullmatch(name):
        oid = ATTRIBUTE_TYPES.get(name.upper())
        if oid is not None:
            return oid
        raise PatternError(
            f"{where}: unknown attribute type {name!r} "
            f"(one of {', '.join(ATTRIBUTE_TYPES)}, or a numeric OID)"
        )
    raise PatternError(f"{where}: bad attribute type {name!r}")


class _Parser:
    """RFC 4514 distinguishedName with `*` wildcards in values."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> PatternError:
        return PatternError(f"{self.text!r}: {why} at character {self.pos + 1}")

    def parse(self) -> tuple[tuple[_Attribute, ...], ...]:
        if not self.text.strip():
            raise PatternError("pattern must not be empty")
        rdns: list[tuple[_Attribute, ...]] = []
        rdn: list[_Attribute] = []
        while True:
            rdn.append(self.attribute())
            if self.pos == len(self.text):
                rdns.append(tuple(rdn))
                return tuple(rdns)
            sep = self.text[self.pos]
            self.pos += 1
            if sep == ",":
                rdns.append(tuple(rdn))
                rdn = []
            elif len(rdn) >= _MAX_ATTRIBUTES_PER_RDN:
                raise self.fail(f"more than {_MAX_ATTRIBUTES_PER_RDN} attributes in one RDN")

    def attribute(self) -> _Attribute:
        eq = self.text.find("=", self.pos)
        stop = min((i for i in (self.text.find(c, self.pos) for c in ",+") if i >= 0), default=-1)
        if eq < 0 or (0 <= stop < eq):
            raise self.fail("expected type=value")
        oid = _attribute_type(self.text[self.pos : eq], repr(self.text))
        self.pos = eq + 1
        return self.value(oid)

    def value(self, oid: str) -> _Attribute:
        text, n = self.text, len(self.text)
        if self.pos < n and text[self.pos] == "#":
            raise self.fail("#-encoded (BER) values are not supported")
        if self.pos < n and text[self.pos] == " ":
            raise self.fail("a leading space must be escaped (\\ )")
        parts: list[str] = []
        literal = bytearray()
        captures = 0
        trailing_space = False

        def flush() -> None:
            if literal:
                try:
                    parts.append(re.escape(literal.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    raise self.fail("escaped bytes are not UTF-8") from exc
                literal.clear()

        while self.pos < n and text[self.pos] not in ",+":
            c = text[self.pos]
            trailing_space = c == " "
            if c == "\\":
                nxt = text[self.pos + 1 : self.pos + 3]
                if len(nxt) == 2 and nxt[0] in _HEX and nxt[1] in _HEX:
                    literal.append(int(nxt, 16))
                    self.pos += 3
                elif nxt[:1] and nxt[0] in _ESCAPABLE:
                    literal += nxt[0].encode("utf-8")
                    self.pos += 2
                else:
                    raise self.fail("bad escape")
                trailing_space = False
                continue
            if c in _FORBIDDEN:
                raise self.fail(f"{c!r} must be escaped")
            if c == "*":
                flush()
                while self.pos < n and text[self.pos] == "*":
                    self.pos += 1
                parts.append("(.+)")
                captures += 1
                continue
            literal += c.encode("utf-8")
            self.pos += 1
        if trailing_space:
            raise self.fail("a trailing space must be escaped (\\ )")
        flush()
        if not parts:
            raise self.fail("empty attribute value")
        return _Attribute(oid=oid, regex=re.compile("".join(parts), re.DOTALL), captures=captures)


@dataclass(frozen=True, slots=True)
class SubjectPattern:
    """A compiled subject pattern. `match` returns the captures, or None."""

    text: str
    rdns: tuple[tuple[_Attribute, ...], ...]
    captures: int

    @staticmethod
    def compile(text: str) -> SubjectPattern:
        rdns = _Parser(text).parse()
        total = sum(a.captures for rdn in rdns for a in rdn)
        return SubjectPattern(text=text, rdns=rdns, captures=total)

    def match(self, subject: Rdns) -> tuple[str, ...] | None:
        if len(subject) != len(self.rdns):
            return None
        captures: list[str] = []
        for pattern, rdn in zip(self.rdns, subject, strict=True):
            found = _match_rdn(pattern, rdn)
            if found is None:
                return None
            captures += found
        return tuple(captures)


def _match_rdn(
    pattern: Sequence[_Attribute], rdn: Sequence[tuple[str, str | None]]
) -> list[str] | None:
    """Match a multi-valued RDN as a set: each pattern attribute takes a distinct attribute."""
    if len(pattern) != len(rdn):
        return None
    used = [False] * len(rdn)
    captures: list[tuple[str, ...]] = []

    def assign(i: int) -> bool:
        if i == len(pattern):
            return True
        attr = pattern[i]
        for j, (oid, value) in enumerate(rdn):
            if used[j] or oid != attr.oid or value is None:
                continue
            m = attr.regex.fullmatch(value)
            if m is None:
                continue
            used[j] = True
            captures.append(m.groups())
            if assign(i + 1):
                return True
            used[j] = False
            captures.pop()
        return False

    if not assign(0):
        return None
    return [c for group in captures for c in group]
