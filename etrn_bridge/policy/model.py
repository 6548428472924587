"""The compiled policy and its decision (pure: no I/O)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from etrn_bridge.request import Decision, Identity
from etrn_bridge.target import Target, TargetKind

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientEntry:
    id: str
    networks: tuple[Network, ...]
    targets: frozenset[Target]

    def matches_client(self, identity: Identity) -> bool:
        address = ipaddress.ip_address(identity.address)
        return any(address in network for network in self.networks)

    def covers(self, target: Target) -> bool:
        if target in self.targets:
            return True
        if target.kind is TargetKind.QUEUE:
            return False
        # "@x" in the policy covers x and its subdomains, asked as node or subtree.
        labels = target.name.split(".")
        return any(
            Target(TargetKind.SUBTREE, ".".join(labels[i:])) in self.targets
            for i in range(len(labels))
        )


@dataclass(frozen=True, slots=True)
class Policy:
    clients: tuple[ClientEntry, ...] = ()

    def decide(self, identity: Identity, target: Target) -> Decision:
        for entry in self.clients:
            if entry.matches_client(identity) and entry.covers(target):
                return Decision(True, entry.id, "listed")
        return Decision(False, None, "no entry allows this client this target")
