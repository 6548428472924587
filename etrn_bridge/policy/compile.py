"""Turn the ``policy:`` section into a :class:`Policy`, collecting every problem."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etrn_bridge.policy.model import ClientEntry, Network, Policy
from etrn_bridge.target import Target, TargetError, parse_target
from etrn_bridge.yamlmarks import KeyPath


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    path: KeyPath  # relative to the policy section
    message: str


def compile_policy(
    section: Mapping[str, Any], *, base_dir: Path, problems: list[PolicyProblem]
) -> Policy:
    entries = []
    for index, raw in enumerate(section.get("clients", [])):
        networks: list[Network] = []
        for n, text in enumerate(raw.get("networks", [])):
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                problems.append(PolicyProblem(("clients", index, "networks", n), str(exc)))
        targets: set[Target] = set()
        for t, text in enumerate(raw.get("targets", [])):
            try:
                targets.add(parse_target(text))
            except TargetError as exc:
                problems.append(PolicyProblem(("clients", index, "targets", t), exc.reason))
        entries.append(ClientEntry(raw["id"], tuple(networks), frozenset(targets)))
    return Policy(tuple(entries))
