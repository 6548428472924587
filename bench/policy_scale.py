"""Policy scale: one decision for 10 rules vs 100,000 domains / 10,000 networks.

Prints the cost per decision of both policies and their ratio (goal <= 1.5),
the load time of the big policy (goal < 2 s, YAML + schema + compile + checks)
and the memory it takes. Run: python bench/policy_scale.py
"""

from __future__ import annotations

import gc
import ipaddress
import os
import random
import tempfile
import time
from pathlib import Path

from etrn_bridge.config import load_config
from etrn_bridge.policy.model import Policy
from etrn_bridge.request import Identity
from etrn_bridge.target import Target, parse_target

BIG_ENTRIES = 2_000
NETWORKS_PER_ENTRY = 5  # 10,000 networks
DOMAINS_PER_ENTRY = 50  # 100,000 domains
DECISIONS = 200_000
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))


def entry_networks(index: int) -> list[str]:
    """Five networks of five prefix lengths, all inside documentation prefixes."""
    v6 = [
        ipaddress.IPv6Network((V6_BASE + (index << 80), 48)),
        ipaddress.IPv6Network((V6_BASE + (index << 80) + (1 << 72), 56)),
        ipaddress.IPv6Network((V6_BASE + (index << 80) + (2 << 72), 64)),
    ]
    v4_block = ["192.0.2.0", "198.51.100.0", "203.0.113.0"][index % 3]
    v4 = [
        ipaddress.IPv4Network((int(ipaddress.IPv4Address(v4_block)) + index % 256, 32)),
        ipaddress.IPv4Network((int(ipaddress.IPv4Address(v4_block)) + (index % 64) * 4, 30)),
    ]
    return [str(n) for n in (*v6, *v4)]


def write_big_policy(directory: Path) -> Path:
    (directory / "domains").mkdir()
    lines = ["limits: {per_target: '1/60s', per_client: '10/60s'}", "policy:", "  clients:"]
    for index in range(BIG_ENTRIES):
        domains = directory / "domains" / f"c{index}.domains"
        domains.write_text(
            "".join(
                f"{'@' if d % 5 == 0 else ''}d{d}.customer{index}.example\n"
                for d in range(DOMAINS_PER_ENTRY)
            )
        )
        networks = ", ".join(f'"{n}"' for n in entry_networks(index))
        lines += [
            f"    - id: customer{index}",
            f"      networks: [{networks}]",
            f"      targets_file: domains/c{index}.domains",
        ]
    lines += ["  deny:", "    - id: frozen", "      targets: ['@frozen.example']"]
    path = directory / "big.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_small_policy(directory: Path) -> Path:
    lines = ["policy:", "  clients:"]
    for index in range(9):
        networks = ", ".join(f'"{n}"' for n in entry_networks(index))
        lines += [
            f"    - id: customer{index}",
            f"      networks: [{networks}]",
            f"      targets: ['d0.customer{index}.example', 'd1.customer{index}.example']",
        ]
    lines += ["  deny:", "    - id: frozen", "      targets: ['@frozen.example']"]
    path = directory / "small.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def queries(entries: int) -> list[tuple[Identity, Target]]:
    """Allowed, wrong-client, unknown-target and deep-subdomain queries, in equal shares."""
    rng = random.Random(1985)
    result = []
    for _ in range(1_000):
        index = rng.randrange(min(entries, 9))
        own = Identity(entry_networks(index)[0].replace("::/48", "::7"))
        other = Identity(entry_networks(index + 1)[3].removesuffix("/32"))
        result += [
            (own, parse_target(f"d1.customer{index}.example")),
            (other, parse_target(f"d1.customer{index}.example")),
            (own, parse_target(f"unknown{index}.example")),
            (own, parse_target(f"a.b.d0.customer{index}.example")),
        ]
    return result


def cost_per_decision(policy: Policy, work: list[tuple[Identity, Target]]) -> float:
    decide = policy.decide
    rounds = DECISIONS // len(work)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(rounds):
            for identity, target in work:
                decide(identity, target)
        best = min(best, (time.perf_counter() - started) / (rounds * len(work)))
    return best


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        small = load_config(write_small_policy(directory)).policy
        big_path = write_big_policy(directory)
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        big = load_config(big_path).policy
        load_seconds = time.perf_counter() - started
        gc.collect()
        memory = rss_bytes() - before
    work = queries(BIG_ENTRIES)
    assert [small.decide(i, t).allowed for i, t in work[:4]] == [True, False, False, False]
    assert [big.decide(i, t).allowed for i, t in work[:4]] == [True, False, False, True]
    small_cost = cost_per_decision(small, work)
    big_cost = cost_per_decision(big, work)
    summary = big.summary()
    print(f"small policy: {len(small.allow) + len(small.deny)} rules")
    print(
        f"big policy:   {summary['clients'] + summary['deny']} entries, "
        f"{summary['targets']:,} targets, {summary['networks']:,} networks"
    )
    print(f"decision, small policy: {small_cost * 1e6:.2f} us")
    print(f"decision, big policy:   {big_cost * 1e6:.2f} us")
    print(f"ratio big/small:        {big_cost / small_cost:.2f} (goal <= 1.5)")
    print(f"load big policy (check): {load_seconds:.2f} s (goal < 2 s)")
    print(f"memory of big policy:   {memory / 2**20:.0f} MiB (RSS growth)")


if __name__ == "__main__":
    main()
