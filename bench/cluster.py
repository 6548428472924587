"""Several MX hosts as one: fan-out reply latency, and what shared limits cost.

    python bench/cluster.py [--etrn 200] [--nodes 1,3,10] [--calls 2000]
                            [--backend command|log|postfix]

Starts ``etrn-bridge serve`` processes: a single bridge without ``cluster:``,
and one cluster per size in ``--nodes``, each cluster on a redis-server of its
own (loopback, free port). Backend: ``command`` running ``/bin/true`` (a real
process per flush, as an MTA's flush command is), ``--backend log`` (no process:
what the fan-out itself costs when the nodes' flushes take no CPU), or with ``--backend postfix``
the lab's real Postfix, shared by every node (start the lab first, inside one
netns-run.sh call: ``bash tests/mta/lab/netns-run.sh bash -c 'bash
tests/mta/lab/all.sh start && .venv/bin/python bench/cluster.py --backend
postfix; bash tests/mta/lab/all.sh stop'``).

All setups run at once and take turns, one ETRN each per round, so every row
sees the same load on the machine (the figures are ratios measured side by
side). Prints, asserts nothing:

1. ETRN reply latency p50/p99, ``--etrn`` rounds, every ETRN for a new target
   (a real flush, fanned out to every node; no coalescing), the cluster's turn
   going to its nodes in rotation. Goal (issue 11): 3-node p99 < 2x the single
   bridge's.
2. The extra cost of shared limits per ETRN: the same target again with
   per_target 1/60s, so after the first every request is admitted (per_client)
   and coalesced without a flush: single bridge (local limits) vs a 1-node
   cluster (Redis); and in process, ``admit`` + coalesced ``run`` per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "integration"), str(TESTS / "mta")]

from asyncsmtp import etrn_session  # noqa: E402
from bridgekit import Bridge, launch_bridge  # noqa: E402
from clusterkit import start_nodes  # noqa: E402
from rediskit import RedisServer  # noqa: E402

from etrn_bridge.policy.limits import Rate  # noqa: E402
from etrn_bridge.request import FlushResult  # noqa: E402
from etrn_bridge.sharedstate.base import SharedState  # noqa: E402
from etrn_bridge.sharedstate.local import LocalState  # noqa: E402
from etrn_bridge.sharedstate.redisstate import RedisState  # noqa: E402
from etrn_bridge.sharedstate.settings import ClusterSettings  # noqa: E402
from etrn_bridge.target import Target, parse_target  # noqa: E402

COMMAND_BACKEND = {"type": "command", "argv": ["/bin/true", "{etrn}"]}
NO_LIMITS = {"limits": {"per_client": "off", "per_target": "off"}}
# Every request admitted (per_client high) and, after the first, coalesced.
COALESCING = {"limits": {"per_client": "1000000/60s", "per_target": "1/60s"}}
# The base config allows customer.example, and customer.net with its subdomains.
DOMAIN = "customer.example"
WARM_UP = 10


@dataclass
class Setup:
    name: str
    nodes: list[Bridge]
    distinct: bool
    latencies: list[float] = field(default_factory=list)
    codes: set[str] = field(default_factory=set)

    async def one(self, number: int, record: bool) -> None:
        node = self.nodes[number % len(self.nodes)]
        target = f"t{number}.customer.net" if self.distinct else DOMAIN
        reply, latency = await etrn_session("127.0.0.1", node.port, target)
        if record:
            self.latencies.append(latency)
            self.codes.add(reply[:3])

    def all_answered(self) -> str:
        records = [r for node in self.nodes for r in node.etrn_records()]
        complete = sum(r.get("nodes_missing") == [] for r in records)
        return f"all nodes answered {complete}/{len(records)}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def figures(latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return (
        f"p50 {percentile(ms, 0.5):6.2f} ms  p99 {percentile(ms, 0.99):6.2f} ms  "
        f"mean {statistics.mean(ms):6.2f} ms"
    )


async def take_turns(setups: list[Setup], rounds: int) -> None:
    for number in range(WARM_UP + rounds):
        for setup in setups:
            await setup.one(number, record=number >= WARM_UP)


async def in_process(state: SharedState, calls: int) -> float:
    """Seconds per ETRN of admit + coalesced run, after one real run opened the cool-down."""
    target: Target = parse_target(DOMAIN)

    async def flush() -> FlushResult:
        return FlushResult(started=True, pending=0)

    async def for_peer(target: Target, context: Mapping[str, object]) -> FlushResult:
        return FlushResult(started=True, pending=0)

    await state.start(for_peer)
    try:
        await asyncio.sleep(1.2)  # subscribed, heartbeat written
        rate, cooldown = Rate(10**9, 60.0), Rate(1, 60.0)
        await state.run(target, cooldown, 4, flush, "bench")
        started = time.perf_counter()
        for _ in range(calls):
            await state.admit("192.0.2.1", rate)
            await state.run(target, cooldown, 4, flush, "bench")
        return (time.perf_counter() - started) / calls
    finally:
        await state.close()


class Processes:
    """Every bridge and redis-server started, stopped at the end."""

    def __init__(self, directory: Path, backend: Mapping[str, Any]) -> None:
        self.directory = directory
        self.backend = backend
        self.bridges: list[Bridge] = []
        self.redis: list[RedisServer] = []

    def single(self, name: str, extra: Mapping[str, Any], distinct: bool) -> Setup:
        (self.directory / name).mkdir()
        bridge = launch_bridge(self.directory / name, {"backend": self.backend, **extra})
        self.bridges.append(bridge)
        return Setup(name, [bridge], distinct)

    def cluster(self, name: str, size: int, extra: Mapping[str, Any], distinct: bool) -> Setup:
        redis = RedisServer(self.directory / name / "redis").start()
        self.redis.append(redis)
        nodes = start_nodes(self.directory / name, redis.url, [self.backend] * size, extra)
        self.bridges += nodes
        return Setup(name, nodes, distinct)

    def stop(self) -> None:
        for bridge in self.bridges:
            bridge.stop()
        for redis in self.redis:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--etrn", type=int, default=200)
    parser.add_argument("--nodes", default="1,3,10")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--backend", choices=["command", "log", "postfix"], default="command")
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")]
    backend: Mapping[str, Any] = COMMAND_BACKEND
    if args.backend == "log":
        backend = {"type": "log"}
    elif args.backend == "postfix":
        from mtalab import LabMta

        backend = LabMta.from_env("postfix").backend_options
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
        f"backend {dict(backend)}; {args.etrn} rounds, setups taking turns"
    )
    with tempfile.TemporaryDirectory() as name:
        processes = Processes(Path(name), backend)
        try:
            single = processes.single("single", NO_LIMITS, distinct=True)
            clusters = [
                processes.cluster(f"cluster{size}", size, NO_LIMITS, distinct=True)
                for size in sizes
            ]
            local = processes.single("local-limits", COALESCING, distinct=False)
            shared = processes.cluster("shared-limits", 1, COALESCING, distinct=False)
            asyncio.run(take_turns([single, *clusters, local, shared], args.etrn))

            print("\n1. reply latency, every ETRN a flush (new target each time)")
            print(
                f"   single bridge, no cluster: {figures(single.latencies)}  {sorted(single.codes)}"
            )
            for size, setup in zip(sizes, clusters, strict=True):
                ratio = percentile(setup.latencies, 0.99) / percentile(single.latencies, 0.99)
                print(
                    f"   cluster of {size:2d} node(s):   {figures(setup.latencies)}  "
                    f"{sorted(setup.codes)}  p99 {ratio:.2f}x single; {setup.all_answered()}"
                )
            print("\n2. shared limits: the same target again (admitted, coalesced, no flush)")
            print(f"   local limits (no cluster):  {figures(local.latencies)}")
            print(f"   Redis limits (1-node):      {figures(shared.latencies)}")
            extra = statistics.mean(shared.latencies) - statistics.mean(local.latencies)
            print(f"   extra per ETRN (mean):      {extra * 1000:+.3f} ms")
            local_call = asyncio.run(in_process(LocalState(), args.calls))
            settings = ClusterSettings(processes.redis[-1].url, "bench", 5.0)
            redis_call = asyncio.run(in_process(RedisState(settings), args.calls))
            print(
                f"   in process, admit + coalesced run: local {local_call * 1e6:.1f} us, "
                f"Redis {redis_call * 1e6:.1f} us per ETRN ({args.calls} calls)"
            )
        finally:
            processes.stop()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
