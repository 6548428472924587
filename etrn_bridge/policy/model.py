"""The compiled policy and its decision (pure: no I/O).

Evaluation order (docs/policy.md says the same for mail admins):
1. the ETRN argument is parsed (bad syntax never gets here);
2. every ``deny`` entry that matches the client and covers the target refuses it;
3. otherwise the FIRST ``clients`` entry, in file order, that matches the client
   and covers the target allows it (its id is the audited rule);
4. otherwise the request is refused (no entry allows it).
An entry matches a client when EVERY matcher it has matches (networks, users,
tls_fingerprints, rdns); a matcher it does not have does not constrain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from etrn_bridge.policy.hold import Quota
from etrn_bridge.policy.index import Address, NetworkSet, TargetIndex, client_address
from etrn_bridge.policy.limits import EntryLimits
from etrn_bridge.request import Decision, Identity
from etrn_bridge.target import Target, TargetKind

FINGERPRINT_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9A-F]{64}\Z")
WILDCARD_PREFIX = "*."


def normalize_fingerprint(text: str) -> str:
    """``"sha256:ab:cd..."``, ``"ABCD..."``, ``"ab cd ..."`` -> ``"sha256:AB:CD:..."``."""
    digest = text.strip()
    if digest.lower().startswith(FINGERPRINT_PREFIX):
        digest = digest[len(FINGERPRINT_PREFIX) :]
    digest = digest.replace(":", "").replace(" ", "").upper()
    if not _HEX_DIGEST.match(digest):
        raise ValueError("not a SHA-256 fingerprint (64 hex digits, optionally 'sha256:AB:CD:...')")
    return FINGERPRINT_PREFIX + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def canonical_hostname(name: str) -> str:
    return name.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class HostnamePatterns:
    """``host.example`` matches exactly; ``*.zone.example`` matches any name below the zone."""

    exact: frozenset[str] = frozenset()
    zones: frozenset[str] = frozenset()  # the part after "*."

    def __bool__(self) -> bool:
        return bool(self.exact or self.zones)

    def match(self, name: str) -> bool:
        name = canonical_hostname(name)
        if name in self.exact:
            return True
        dot = name.find(".")
        while dot >= 0:
            name = name[dot + 1 :]
            if name in self.zones:
                return True
            dot = name.find(".")
        return False

    def covers(self, other: HostnamePatterns) -> bool:
        """Whether every name ``other`` matches is matched here too."""
        return all(self.match(name) for name in other.exact) and all(
            any(zone == mine or zone.endswith("." + mine) for mine in self.zones)
            for zone in other.zones
        )

    def __str__(self) -> str:
        return ", ".join([*sorted(self.exact), *(WILDCARD_PREFIX + z for z in sorted(self.zones))])


class ClientFacts:
    """What the policy compares, derived once per request from the Identity."""

    __slots__ = ("_fingerprint", "address", "identity", "verified_names")

    def __init__(self, identity: Identity, verified_names: Iterable[str] = ()) -> None:
        self.identity = identity
        self.address: Address = client_address(identity.address)
        self.verified_names = tuple(verified_names)
        self._fingerprint: str | bool | None = False  # False: not computed yet

    @property
    def fingerprint(self) -> str | None:
        if self._fingerprint is False:
            raw = self.identity.tls_fingerprint
            try:
                self._fingerprint = normalize_fingerprint(raw) if raw else None
            except ValueError:
                self._fingerprint = None
        return self._fingerprint if isinstance(self._fingerprint, str) else None


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """One ``clients`` (allow) or ``deny`` entry, compiled."""

    id: str
    allow: bool
    order: int  # position in its list: the first matching allow entry decides
    networks: NetworkSet = field(default_factory=lambda: NetworkSet(()))
    users: frozenset[str] = frozenset()
    tls_fingerprints: frozenset[str] = frozenset()
    rdns: HostnamePatterns = field(default_factory=HostnamePatterns)
    targets: tuple[Target, ...] = ()
    limits: EntryLimits = field(default_factory=EntryLimits)
    hold: bool = False  # hold its mail until ETRN (policy/hold.py)
    quota: Quota | None = None

    @property
    def section(self) -> str:
        return "clients" if self.allow else "deny"

    def matcher_kinds(self) -> list[str]:
        kinds = [("networks", self.networks), ("users", self.users)]
        kinds += [("tls_fingerprints", self.tls_fingerprints), ("rdns", self.rdns)]
        return [name for name, matcher in kinds if matcher]

    def matches(self, client: ClientFacts) -> bool:
        if self.networks and client.address not in self.networks:
            return False
        if self.users and client.identity.auth_user not in self.users:
            return False
        if self.tls_fingerprints and client.fingerprint not in self.tls_fingerprints:
            return False
        return not self.rdns or any(self.rdns.match(n) for n in client.verified_names)


@dataclass(frozen=True, slots=True)
class Policy:
    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()
    allow_index: TargetIndex[Entry] = field(default_factory=TargetIndex)
    deny_index: TargetIndex[Entry] = field(default_factory=lambda: TargetIndex(find_inside=True))
    deny_everywhere: tuple[Entry, ...] = ()  # deny entries without targets: every target
    by_id: Mapping[str, Entry] = field(default_factory=dict)
    # Whether any entry names host names; asked on every request, so made once
    # (looking at all 10,000 entries of a provider's policy took half a millisecond).
    uses_rdns: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        uses_rdns = any(entry.rdns for entry in (*self.allow, *self.deny))
        object.__setattr__(self, "uses_rdns", uses_rdns)  # frozen: set once, here

    @classmethod
    def build(cls, allow: Iterable[Entry], deny: Iterable[Entry]) -> Policy:
        allow, deny = tuple(allow), tuple(deny)
        allow_index: TargetIndex[Entry] = TargetIndex()
        deny_index: TargetIndex[Entry] = TargetIndex(find_inside=True)
        for entry in allow:
            for target in entry.targets:
                allow_index.add(target, entry)
        for entry in deny:
            for target in entry.targets:
                deny_index.add(target, entry)
        everywhere = tuple(entry for entry in deny if not entry.targets)
        by_id = {entry.id: entry for entry in (*deny, *allow)}
        return cls(allow, deny, allow_index, deny_index, everywhere, by_id)

    def covering(self, target: Target) -> Iterator[tuple[Target | None, Entry]]:
        """Entries that cover ``target``, deny entries first, with the policy target that does."""
        for entry in self.deny_everywhere:
            yield None, entry
        yield from self.deny_index.covering(target)
        yield from self.allow_index.covering(target)

    def candidates(self, target: Target) -> Iterator[tuple[Target | None, Entry]]:
        """Entries that may decide ``target``: those covering it, and deny entries that
        name anything under an ``@x`` request (``old.x``, or ``x`` itself): the flush of
        the subtree would take that mail too, so they refuse the whole request."""
        yield from self.covering(target)
        yield from self.deny_index.inside(target)

    def needs_rdns(self, target: Target) -> bool:
        """Whether deciding on ``target`` may depend on the client's verified host name."""
        return any(entry.rdns for _, entry in self.candidates(target))

    def decide(
        self, identity: Identity, target: Target, verified_names: Iterable[str] = ()
    ) -> Decision:
        client = ClientFacts(identity, verified_names)
        chosen: tuple[Target | None, Entry] | None = None
        for policy_target, entry in self.candidates(target):
            if not entry.allow:
                if entry.matches(client):
                    return _decision(entry, policy_target, target)
            elif (chosen is None or entry.order < chosen[1].order) and entry.matches(client):
                chosen = policy_target, entry
        if chosen is None:
            return Decision(False, None, "no entry allows this client this target")
        return _decision(chosen[1], chosen[0], target)

    def summary(self) -> dict[str, int]:
        entries = (*self.allow, *self.deny)
        return {
            "clients": len(self.allow),
            "deny": len(self.deny),
            "targets": sum(len(e.targets) for e in entries),
            "networks": sum(len(e.networks) for e in entries),
            "users": sum(len(e.users) for e in entries),
            "tls_fingerprints": sum(len(e.tls_fingerprints) for e in entries),
        }


def _decision(entry: Entry, policy_target: Target | None, target: Target) -> Decision:
    if policy_target is None:
        relation = f"every target covers {target}"
    elif _covers(policy_target, target):
        relation = f"target {policy_target} covers {target}"
    else:
        relation = f"target {policy_target} lies inside {target}"
    client = ", ".join(entry.matcher_kinds()) or "any client"
    verb = "allowed" if entry.allow else "denied"
    return Decision(
        entry.allow,
        entry.id,
        f"{verb} by {entry.section} entry {entry.id!r}: {relation}; client matched by {client}",
    )


def _covers(policy_target: Target, target: Target) -> bool:
    if policy_target == target:
        return True
    return policy_target.kind is TargetKind.SUBTREE and (
        target.name == policy_target.name or target.name.endswith("." + policy_target.name)
    )
