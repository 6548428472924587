"""Forward-confirmed reverse DNS. DNS is unreachable here, so a fake resolver plays it;
the real resolver is checked against 127.0.0.1 / localhost from /etc/hosts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from etrn_bridge.audit import AuditLog
from etrn_bridge.config import parse_config
from etrn_bridge.policy.rdns import ForwardConfirmedRdns, SystemResolver
from etrn_bridge.request import Identity, Request, Status
from etrn_bridge.service import Service


class FakeResolver:
    """PTR and A/AAAA tables; a name or address missing from them fails like NXDOMAIN."""

    def __init__(
        self,
        ptr: dict[str, list[str]],
        forward: dict[str, list[str]],
        delay: float = 0.0,
    ) -> None:
        self.ptr = ptr
        self.forward_table = forward
        self.delay = delay
        self.lookups = 0

    async def reverse(self, address: str) -> Sequence[str]:
        self.lookups += 1
        await asyncio.sleep(self.delay)
        if address not in self.ptr:
            raise OSError("NXDOMAIN")
        return self.ptr[address]

    async def forward(self, name: str) -> Sequence[str]:
        if name not in self.forward_table:
            raise OSError("NXDOMAIN")
        return self.forward_table[name]


DNS = FakeResolver(
    ptr={
        "203.0.113.9": ["h9.dyn.isp.example."],
        "203.0.113.66": ["h66.dyn.isp.example"],  # spoofed: forward lacks the address
        "2001:db8::9": ["v6.dyn.isp.example"],
        "203.0.113.7": ["nowhere.dyn.isp.example"],  # forward lookup fails
    },
    forward={
        "h9.dyn.isp.example": ["203.0.113.9"],
        "h66.dyn.isp.example": ["203.0.113.67"],
        "v6.dyn.isp.example": ["2001:db8:0:0::9"],
    },
)


@pytest.mark.parametrize(
    ("address", "names"),
    [
        ("203.0.113.9", ("h9.dyn.isp.example",)),
        ("::ffff:203.0.113.9", ("h9.dyn.isp.example",)),
        ("2001:db8::9", ("v6.dyn.isp.example",)),
        ("203.0.113.66", ()),  # PTR claims a name whose A record is elsewhere
        ("203.0.113.7", ()),  # forward lookup fails
        ("203.0.113.1", ()),  # no PTR
    ],
)
async def test_verified_names(address: str, names: tuple[str, ...]) -> None:
    assert await ForwardConfirmedRdns(DNS).verified_names(address) == names


async def test_timeout_yields_no_name() -> None:
    slow = FakeResolver(DNS.ptr, DNS.forward_table, delay=1.0)
    assert await ForwardConfirmedRdns(slow, timeout=0.05).verified_names("203.0.113.9") == ()


async def test_results_are_cached_for_a_bounded_time() -> None:
    now = [0.0]
    resolver = FakeResolver(DNS.ptr, DNS.forward_table)
    rdns = ForwardConfirmedRdns(resolver, ttl=10, negative_ttl=1, clock=lambda: now[0])
    await rdns.verified_names("203.0.113.9")
    await rdns.verified_names("203.0.113.9")
    assert resolver.lookups == 1
    now[0] = 11.0
    await rdns.verified_names("203.0.113.9")
    assert resolver.lookups == 2


async def test_cache_is_bounded() -> None:
    rdns = ForwardConfirmedRdns(DNS, cache_size=2)
    for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        await rdns.verified_names(address)
    assert len(rdns._cache) == 2


async def test_system_resolver_confirms_loopback_from_etc_hosts() -> None:
    names = await ForwardConfirmedRdns(SystemResolver()).verified_names("127.0.0.1")
    assert names  # /etc/hosts names 127.0.0.1 (localhost, or the machine's name)
    for name in names:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
        assert "127.0.0.1" in addresses


RDNS_POLICY = """
limits: {per_client: "off"}
policy:
  clients:
    - id: dialup
      rdns: ["*.dyn.isp.example"]
      targets: ["@dialup.example"]
    - id: plain
      networks: ["192.0.2.0/24"]
      targets: ["plain.example"]
"""


@pytest.mark.parametrize(
    ("address", "status"),
    [
        ("203.0.113.9", Status.STARTED),
        ("203.0.113.66", Status.DENIED),  # FCrDNS spoof
        ("203.0.113.7", Status.DENIED),  # DNS failure never allows
    ],
)
async def test_service_decides_on_verified_names(
    tmp_path: Path, address: str, status: Status
) -> None:
    config = parse_config(RDNS_POLICY, tmp_path / "etrn.yaml")
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = Service.from_config(config, audit, resolver=DNS)
    outcome = await service.handle(Request(Identity(address), "x.dialup.example"))
    assert outcome.status is status
    audit.close()


async def test_service_skips_dns_when_no_candidate_entry_uses_rdns(tmp_path: Path) -> None:
    config = parse_config(RDNS_POLICY, tmp_path / "etrn.yaml")
    resolver = FakeResolver({}, {})
    service = Service.from_config(config, AuditLog(), resolver=resolver)
    outcome = await service.handle(Request(Identity("192.0.2.1"), "plain.example"))
    assert outcome.status is Status.STARTED
    assert resolver.lookups == 0
