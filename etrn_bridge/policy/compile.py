"""Turn the ``policy:`` section into a :class:`Policy`, collecting every problem.

The schema has already checked shapes and types; this module checks meaning
and tolerates values of the wrong type (skipping them) so that its problems
are reported together with the schema's. Checks, each a load error:

- every CIDR parses and has no host bits set; every target and rDNS pattern is
  a valid name; every fingerprint is a SHA-256 digest; ids are unique over
  ``clients`` and ``deny``;
- ``targets_file`` exists and each of its lines is a valid ``node`` / ``@node``;
- a ``clients`` entry with no client matcher would let anyone flush: refused;
- a ``clients`` entry without targets allows nothing: refused;
- unreachable ``clients`` entries (see :func:`_unreachable_problems`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from etrn_bridge.policy.hold import parse_quota
from etrn_bridge.policy.index import Network, NetworkSet
from etrn_bridge.policy.limits import EntryLimits, parse_entry_limits
from etrn_bridge.policy.model import (
    WILDCARD_PREFIX,
    Entry,
    HostnamePatterns,
    Policy,
    normalize_fingerprint,
)
from etrn_bridge.target import (
    Target,
    TargetError,
    parse_domain,
    parse_plain_targets,
    parse_target,
)
from etrn_bridge.yamlmarks import KeyPath, Mark

SECTIONS = {"clients": True, "deny": False}  # section -> whether its entries allow
CLIENT_MATCHERS = ("networks", "users", "tls_fingerprints", "rdns")
TARGETS_FILE_COMMENT = "#"  # so queue targets ("#q") go inline in targets
NO_HOSTNAMES = HostnamePatterns()  # shared by the many entries without rdns (immutable)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    path: KeyPath  # relative to the policy section
    message: str
    mark: Mark | None = None  # set when the problem is in another file (targets_file)


class _Compiler:
    def __init__(self, base_dir: Path, problems: list[PolicyProblem]) -> None:
        self.base_dir = base_dir
        self.problems = problems

    def problem(self, path: KeyPath, message: str, mark: Mark | None = None) -> None:
        self.problems.append(PolicyProblem(path, message, mark))

    def entries(self, section: Mapping[str, Any], name: str) -> list[Entry]:
        raw_entries = section.get(name, [])
        if not isinstance(raw_entries, list):
            return []
        allow = SECTIONS[name]
        entries = []
        for index, raw in enumerate(raw_entries):
            if isinstance(raw, Mapping):
                entries.append(self.entry(raw, (name, index), allow, order=index))
        return entries

    def entry(self, raw: Mapping[str, Any], path: KeyPath, allow: bool, order: int) -> Entry:
        targets = self.strings(raw, path, "targets", parse_target)
        targets_file = raw.get("targets_file")
        if isinstance(targets_file, str):
            targets += self.targets_file(targets_file, (*path, "targets_file"))
        entry_id = raw.get("id")
        limits = raw.get("limits", {})
        entry = Entry(
            id=entry_id if isinstance(entry_id, str) else f"#{order}",
            allow=allow,
            order=order,
            networks=NetworkSet(self.strings(raw, path, "networks", _network)),
            users=frozenset(self.strings(raw, path, "users", str)),
            tls_fingerprints=frozenset(
                self.strings(raw, path, "tls_fingerprints", normalize_fingerprint)
            ),
            rdns=_hostname_patterns(self.strings(raw, path, "rdns", _rdns_pattern)),
            targets=tuple(dict.fromkeys(targets)),
            limits=parse_entry_limits(
                limits, lambda key, message: self.problem((*path, "limits", *key), message)
            )
            if isinstance(limits, Mapping)
            else EntryLimits(),
            hold=raw.get("hold") is True,
            quota=parse_quota(raw.get("quota")),
        )
        if allow and not any(raw.get(kind) for kind in CLIENT_MATCHERS):
            self.problem(
                path,
                "dangerous: this entry has no networks, users, tls_fingerprints or rdns, so it "
                "would let ANY client that can connect flush its targets; name the clients "
                "(write networks: ['0.0.0.0/0', '::/0'] if you really mean everyone)",
            )
        if raw.get("quota") is not None and raw.get("hold") is not True:
            self.problem((*path, "quota"), "a quota applies to held mail: set hold: true")
        if allow and not raw.get("targets") and "targets_file" not in raw:
            self.problem(path, "allows nothing: give targets or targets_file")
        return entry

    def strings(
        self, raw: Mapping[str, Any], path: KeyPath, key: str, parse: Callable[[str], _T]
    ) -> list[_T]:
        values = raw.get(key)
        parsed: list[_T] = []
        if not values or not isinstance(values, list):
            return parsed
        for index, text in enumerate(values):
            if not isinstance(text, str):
                continue  # the schema reported it
            try:
                parsed.append(parse(text))
            except (ValueError, TargetError) as exc:
                reason = exc.reason if isinstance(exc, TargetError) else str(exc)
                self.problem((*path, key, index), f"{text!r}: {reason}")
        return parsed

    def targets_file(self, name: str, path: KeyPath) -> list[Target]:
        file = self.base_dir / name
        try:
            content = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(path, f"cannot read targets file {str(file)!r}: {exc}")
            return []
        plain = parse_plain_targets(content)
        if plain is not None:
            return plain
        targets = []
        for number, line in enumerate(content.splitlines(), start=1):
            text = line.split(TARGETS_FILE_COMMENT, 1)[0].strip()
            if not text:
                continue
            try:
                targets.append(parse_target(text))
            except TargetError as exc:
                column = line.index(text) + 1
                self.problem(path, f"{text!r}: {exc.reason}", Mark(str(file), number, column))
        return targets


def compile_policy(
    section: Mapping[str, Any], *, base_dir: Path, problems: list[PolicyProblem]
) -> Policy:
    compiler = _Compiler(base_dir, problems)
    allow = compiler.entries(section, "clients")
    deny = compiler.entries(section, "deny")
    _duplicate_id_problems(section, problems)
    policy = Policy.build(allow, deny)
    problems.extend(_unreachable_problems(policy))
    return policy


def _network(text: str) -> Network:
    # The version is plain to see: skip ip_network's IPv4 attempt (an exception)
    # for every IPv6 network; on any error, ip_network gives its usual message.
    try:
        if ":" in text:
            return ipaddress.IPv6Network(text, strict=True)
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        return ipaddress.ip_network(text, strict=True)


def _rdns_pattern(text: str) -> str:
    name = text[len(WILDCARD_PREFIX) :] if text.startswith(WILDCARD_PREFIX) else text
    try:
        parse_domain(name)
    except TargetError as exc:
        raise ValueError(f"not a host name or '*.zone' pattern: {exc.reason}") from None
    return text.rstrip(".").lower()


def _hostname_patterns(patterns: list[str]) -> HostnamePatterns:
    if not patterns:
        return NO_HOSTNAMES
    exact, zones = set(), set()
    for pattern in patterns:
        if pattern.startswith(WILDCARD_PREFIX):
            zones.add(pattern[len(WILDCARD_PREFIX) :])
        else:
            exact.add(pattern)
    return HostnamePatterns(frozenset(exact), frozenset(zones))


def _duplicate_id_problems(section: Mapping[str, Any], problems: list[PolicyProblem]) -> None:
    first_seen: dict[str, str] = {}
    for name in SECTIONS:
        entries = section.get(name, [])
        for index, raw in enumerate(entries if isinstance(entries, list) else []):
            entry_id = raw.get("id") if isinstance(raw, Mapping) else None
            if not isinstance(entry_id, str):
                continue
            where = f"policy.{name}[{index}]"
            if entry_id in first_seen:
                problems.append(
                    PolicyProblem(
                        (name, index, "id"),
                        f"duplicate id {entry_id!r} (first used by {first_seen[entry_id]}): "
                        "audits name entries by id",
                    )
                )
            else:
                first_seen[entry_id] = where


def _covers_client(wide: Entry, narrow: Entry) -> bool:
    """Whether ``wide`` matches every client ``narrow`` matches (matcher by matcher)."""
    if wide.networks and not (
        narrow.networks and all(wide.networks.covers(n) for n in narrow.networks.networks)
    ):
        return False
    if wide.users and not (narrow.users and narrow.users <= wide.users):
        return False
    if wide.tls_fingerprints and not (
        narrow.tls_fingerprints and narrow.tls_fingerprints <= wide.tls_fingerprints
    ):
        return False
    return not wide.rdns or bool(narrow.rdns and wide.rdns.covers(narrow.rdns))


def _unreachable_problems(policy: Policy) -> list[PolicyProblem]:
    """``clients`` entries that can never decide anything.

    An allow entry E is unreachable when, for EVERY target t it lists, some
    entry S with S's client matchers same-or-broader than E's (each matcher S
    has, E has too and S's covers E's: networks inside S's networks, users and
    fingerprints a subset, rDNS names matched by S's patterns) and S's targets
    covering t (same target, an ``@`` parent, or a deny entry without targets)
    is either a ``deny`` entry (deny wins) or an EARLIER ``clients`` entry
    (the first match decides). Partly shadowed entries are not reported.
    """
    problems = []
    broader: dict[tuple[int, int], bool] = {}

    def shadows(other: Entry, entry: Entry) -> bool:
        if other is entry or (other.allow and other.order > entry.order):
            return False
        key = (id(other), id(entry))
        if key not in broader:
            broader[key] = _covers_client(other, entry)
        return broader[key]

    for entry in policy.allow:
        shadowing: dict[str, Entry] = {}
        for target in entry.targets:
            found = next(
                (other for _, other in policy.covering(target) if shadows(other, entry)), None
            )
            if found is None:
                break
            shadowing[found.id] = found
        else:
            if not entry.targets:
                continue
            problems.append(
                PolicyProblem(("clients", entry.order), _unreachable_message(shadowing.values()))
            )
    return problems


def _unreachable_message(shadowing: Iterable[Entry]) -> str:
    by = ", ".join(f"{e.section} entry {e.id!r}" for e in shadowing)
    return (
        f"unreachable: every target of this entry is already decided by {by}, which "
        "matches every client this entry matches (deny entries win; among clients "
        "entries the first match decides); remove it or narrow the other entry"
    )
