"""Policy scale: one decision for 10 rules vs 100,000 domains / 10,000 networks.

Prints the cost per decision of both policies and their ratio (goal <= 1.5),
and the same for a whole request through the service (decision, limits, the
``log`` backend, the audit record: what every ETRN pays besides its front end),
the load time of the big policy (YAML + schema + compile + checks) and the
memory it takes; then the provider-scale policy (10,000 client entries and one
100,000-line targets_file): its load time (goal < 1 s) and, with a real
``etrn-bridge serve`` holding it, the longest gap between replies that sessions
running NOOPs see while a SIGHUP reloads it (goal: no stall over 50 ms), for
each of RELOADS reloads, with their median and range.
Run: python bench/policy_scale.py
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from etrn_bridge.audit import AuditLog
from etrn_bridge.backends.log import LogBackend
from etrn_bridge.config import load_config
from etrn_bridge.policy.limits import LimitSettings
from etrn_bridge.policy.model import Policy
from etrn_bridge.request import Identity, Request
from etrn_bridge.service import Service
from etrn_bridge.target import Target, parse_target

BIG_ENTRIES = 2_000
NETWORKS_PER_ENTRY = 5  # 10,000 networks
DOMAINS_PER_ENTRY = 50  # 100,000 domains
DECISIONS = 200_000
PROVIDER_ENTRIES = 10_000
PROVIDER_FILE_LINES = 100_000
LOAD_RUNS = 5
STALL_SESSIONS = 20
RELOADS = 5
HOST = "127.0.0.1"
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


def write_provider_policy(directory: Path) -> Path:
    """10,000 client entries inline plus one entry with a 100,000-line targets_file."""
    (directory / "bulk.domains").write_text(
        "".join(f"t{k}.bulk.example\n" for k in range(PROVIDER_FILE_LINES))
    )
    lines = [
        f"listen: ['{HOST}:0']",
        "backend: {type: log}",
        f"audit: {{file: '{directory / 'audit.jsonl'}'}}",
        "limits: {per_target: 'off', per_client: 'off'}",
        "policy:",
        "  clients:",
    ]
    for index in range(PROVIDER_ENTRIES):
        networks = ", ".join(f'"{n}"' for n in entry_networks(index)[:2])
        lines += [
            f"    - id: c{index}",
            f"      networks: [{networks}]",
            f"      targets: ['d{index}.example', '@e{index}.example']",
        ]
    lines += [
        "    - id: bulk",
        "      networks: ['127.0.0.0/8']",
        "      targets_file: bulk.domains",
    ]
    path = directory / "provider.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_seconds(path: Path) -> list[float]:
    times = []
    for _ in range(LOAD_RUNS):
        started = time.perf_counter()
        load_config(path)
        times.append(time.perf_counter() - started)
    return times


async def noop_session(port: int, stop: asyncio.Event, gaps: list[float]) -> None:
    """NOOP after NOOP; the longest time between two replies goes into ``gaps``."""
    reader, writer = await asyncio.open_connection(HOST, port)
    await reader.readline()
    longest = 0.0
    last = time.perf_counter()
    while not stop.is_set():
        writer.write(b"NOOP\r\n")
        await writer.drain()
        await reader.readline()
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    writer.write(b"QUIT\r\n")
    writer.close()
    gaps.append(longest)


async def max_reply_gap(port: int, seconds: float, action: object = None) -> list[float]:
    """Run sessions for ``seconds`` (calling ``action`` after a quarter of it)."""
    stop = asyncio.Event()
    gaps: list[float] = []
    tasks = [asyncio.create_task(noop_session(port, stop, gaps)) for _ in range(STALL_SESSIONS)]
    await asyncio.sleep(seconds / 4)
    if callable(action):
        await asyncio.to_thread(action)
    await asyncio.sleep(seconds * 3 / 4)
    stop.set()
    await asyncio.gather(*tasks)
    return gaps


def start_server(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config)],
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"ready, listening on \S+:(\d+)", log.read_text())
        if match:
            return server, int(match[1])
        if server.poll() is not None:
            raise SystemExit("server failed:\n" + log.read_text())
        time.sleep(0.05)
    raise SystemExit("server did not start")


def reload_stall(config: Path) -> None:
    """RELOADS SIGHUP reloads of one server, each in a window of NOOP sessions."""
    audit = config.parent / "audit.jsonl"
    server, port = start_server(config, config.parent / "server.log")
    gaps, in_force = [], []
    try:
        quiet = asyncio.run(max_reply_gap(port, 2.0))

        def reloads() -> int:
            text = audit.read_text() if audit.exists() else ""
            return [json.loads(line)["event"] for line in text.splitlines()].count("reload")

        def reload_and_wait() -> None:
            before = reloads()
            started = time.perf_counter()
            server.send_signal(signal.SIGHUP)
            while reloads() == before:
                time.sleep(0.01)
            in_force.append(time.perf_counter() - started)

        for _ in range(RELOADS):
            gaps.append(max(asyncio.run(max_reply_gap(port, 4.0, reload_and_wait))))
            print(
                f"reload: SIGHUP to audit record {in_force[-1]:.2f} s, "
                f"longest reply gap {gaps[-1] * 1000:.0f} ms"
            )
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        assert records[-1]["event"] == "reload" and records[-1]["ok"], records[-1]
    finally:
        server.terminate()
        server.wait()
    print(
        f"longest reply gap over {STALL_SESSIONS} NOOP sessions: "
        f"{max(quiet) * 1000:.0f} ms without reload; with a SIGHUP reload median "
        f"{statistics.median(gaps) * 1000:.0f} ms, range {min(gaps) * 1000:.0f}-"
        f"{max(gaps) * 1000:.0f} ms over {RELOADS} reloads (goal <= 50 ms); SIGHUP to in "
        f"force median {statistics.median(in_force):.2f} s"
    )


def provider_scale() -> None:
    with tempfile.TemporaryDirectory() as name:
        path = write_provider_policy(Path(name))
        times = load_seconds(path)
        print(
            f"load provider policy ({PROVIDER_ENTRIES:,} entries + {PROVIDER_FILE_LINES:,}-line "
            f"targets_file): best {min(times):.2f} s, median {statistics.median(times):.2f} s "
            f"of {LOAD_RUNS} (goal < 1 s)"
        )
        reload_stall(path)


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


def cost_per_request(policy: Policy, work: list[tuple[Identity, Target]]) -> float:
    """Seconds of one request through Service.handle (audit records to /dev/null)."""
    limits = LimitSettings(per_target=None, per_client=None)
    service = Service(policy, LogBackend(), AuditLog(Path(os.devnull)), limits)
    requests = [Request(identity, str(target)) for identity, target in work]
    rounds = DECISIONS // len(work) // 4

    async def run() -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(rounds):
                for request in requests:
                    await service.handle(request)
            best = min(best, (time.perf_counter() - started) / (rounds * len(requests)))
        return best

    return asyncio.run(run())


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
        load_time = time.perf_counter() - started
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
    small_request, big_request = cost_per_request(small, work), cost_per_request(big, work)
    print(f"request, small policy:  {small_request * 1e6:.2f} us (service, log backend, audit)")
    print(f"request, big policy:    {big_request * 1e6:.2f} us")
    print(f"ratio big/small:        {big_request / small_request:.2f} (goal <= 1.5)")
    print(f"load big policy (check): {load_time:.2f} s")
    print(f"memory of big policy:   {memory / 2**20:.0f} MiB (RSS growth)")
    provider_scale()


if __name__ == "__main__":
    main()
