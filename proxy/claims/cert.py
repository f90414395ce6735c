"""Certificate claim mapper (`claimMapper: cert`): the verified client certificate -> claims.

Rules match the certificate's SPIFFE ID, URI SANs, DNS SANs, subject CN, OUs or full subject
(see `patterns` for the glob syntax). Every matcher a rule names must match; a multi-valued
field (URIs, DNS names, OUs) matches when any of its values does, and every matching value
grants (so a certificate with two DNS names may reach two namespaces). All matching rules add
up, roles OR-ed. A certificate no rule matches gets empty claims: the authorizer denies.

The certificate only reaches the mapper with `requireClientAuth: true`: grpcio cannot request
an optional client certificate, so without it there is no peer identity (config refuses that).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.claims.dn import SubjectPattern
from proxy.claims.patterns import Glob, Grant, PatternError, RoleAccumulator, parse_grants
from proxy.errors import CredentialError
from proxy.model import AuthInfo, AuthType, Claims, PeerIdentity, Reason

AUTH_TYPE = AuthType.CERT.value
_CACHE_SIZE = 1024

# Matcher order is also the capture numbering order across a rule's matchers.
FIELDS: tuple[tuple[str, str, bool], ...] = (
    # (field, glob separator, fold case)
    ("spiffe_id", "/", False),
    ("uri", "/", False),
    ("dns_name", ".", True),  # DNS names are case-insensitive
    ("common_name", "", False),
    ("organizational_unit", "", False),
    ("subject", "", False),  # RFC 4514, matched on parsed attributes (see `dn`)
)
# The config key of each field, for error paths.
CONFIG_KEYS = {
    "spiffe_id": "spiffeId",
    "uri": "uri",
    "dns_name": "dnsName",
    "common_name": "commonName",
    "organizational_unit": "organizationalUnit",
    "subject": "subject",
}
Matcher = Glob | SubjectPattern


def _values(peer: PeerIdentity, name: str) -> Sequence[str]:
    if name == "spiffe_id":
        return (peer.spiffe_id,) if peer.spiffe_id else ()
    if name == "uri":
        return peer.uris
    if name == "dns_name":
        return peer.dns_names
    if name == "common_name":
        return (peer.common_name,) if peer.common_name else ()
    return peer.organizational_units


@dataclass(frozen=True, slots=True)
class CertificateRule:
    """Compiled rule: (field, glob) matchers and the grants they unlock."""

    matchers: tuple[tuple[str, Matcher], ...]
    grants: tuple[Grant, ...]

    @staticmethod
    def build(patterns: dict[str, str], grants: Iterable[str]) -> CertificateRule:
        """`patterns` maps a field name (see FIELDS) to its pattern; raise PatternError (its
        `key` names the config key of a bad pattern)."""
        matchers: list[tuple[str, Matcher]] = []
        unknown = set(patterns) - {f for f, _, _ in FIELDS}
        if unknown:
            raise PatternError(f"unknown certificate field(s) {sorted(unknown)}")
        for name, separator, fold in FIELDS:
            text = patterns.get(name, "")
            if not text:
                continue
            try:
                matcher: Matcher = (
                    SubjectPattern.compile(text)
                    if name == "subject"
                    else Glob.compile(text, separator=separator, fold_case=fold)
                )
            except PatternError as exc:
                raise PatternError(str(exc), key=CONFIG_KEYS[name]) from exc
            matchers.append((name, matcher))
        if not matchers:
            raise PatternError("a rule needs at least one matcher")
        grant_list = tuple(grants)
        if not grant_list:
            raise PatternError("a rule needs at least one grant")
        total = sum(g.captures for _, g in matchers)
        return CertificateRule(matchers=tuple(matchers), grants=parse_grants(grant_list, total))

    def captures(self, peer: PeerIdentity) -> list[tuple[str, ...]]:
        """One capture tuple per combination of matching values; [] when the rule fails."""
        per_matcher: list[list[tuple[str, ...]]] = []
        for name, matcher in self.matchers:
            hits: list[tuple[str, ...]]
            if isinstance(matcher, SubjectPattern):
                # Parsed attributes only: a subject known only as a string never matches.
                found = None if peer.subject_rdns is None else matcher.match(peer.subject_rdns)
                hits = [] if found is None else [found]
            else:
                values = _values(peer, name)
                hits = [c for c in (matcher.match(v) for v in values) if c is not None]
            if not hits:
                return []
            per_matcher.append(hits)
        return [
            tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*per_matcher)
        ]


def peer_subject(peer: PeerIdentity) -> str:
    """The claims subject of a certificate: its SPIFFE ID, else its subject DN."""
    return peer.spiffe_id or peer.subject or peer.common_name


class CertificateClaimMapper:
    """Claims from the verified client certificate by rules; auth type `cert`."""

    def __init__(
        self,
        rules: Sequence[CertificateRule],
        *,
        cache_size: int = _CACHE_SIZE,
        attach_peer: bool = False,
    ) -> None:
        """`attach_peer`: the claims carry the certificate (`Claims.peer`) for a policy
        authorizer (authorization.cedar)."""
        self._attach_peer = attach_peer
        if not rules:
            raise ValueError("at least one certificate rule is required")
        self._rules = tuple(rules)
        self._cache_size = cache_size
        # PeerIdentity is frozen and hashable; a connection presents the same one on every call.
        self._cache: OrderedDict[PeerIdentity, Claims] = OrderedDict()

    def auth_info_required(self) -> bool:
        return True

    async def get_claims(self, auth_info: AuthInfo) -> Claims:
        peer = auth_info.peer
        if peer is None:
            raise CredentialError(Reason.CERTIFICATE_REQUIRED, "no verified client certificate")
        return self.claims_for(peer)

    def claims_for(self, peer: PeerIdentity) -> Claims:
        cached = self._cache.get(peer)
        if cached is not None:
            self._cache.move_to_end(peer)
            return cached
        roles = RoleAccumulator()
        for rule in self._rules:
            for captures in rule.captures(peer):
                for grant in rule.grants:
                    roles.add(grant, captures)
        claims = Claims.build(
            subject=peer_subject(peer),
            system=roles.system,
            namespaces=roles.namespaces,
            auth_type=AUTH_TYPE,
            peer=peer if self._attach_peer else None,
        )
        if self._cache_size:
            self._cache[peer] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims
