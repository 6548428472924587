"""Several MX hosts as one: fan-out reply latency, and what shared limits cost.

    python bench/cluster.py [--etrn 200] [--nodes 1,3,10] [--calls 2000] [--backend postfix]

Starts its own redis-server (loopback, free port) and ``etrn-bridge serve``
nodes with the ``command`` backend running ``/bin/true`` (a real process per
flush, as an MTA's flush command is; the nodes share it), or with
``--backend postfix`` the lab's real Postfix, shared by every node (start the
lab first, inside one netns-run.sh call:
``bash tests/mta/lab/netns-run.sh bash -c 'bash tests/mta/lab/all.sh start &&
.venv/bin/python bench/cluster.py --backend postfix; bash tests/mta/lab/all.sh stop'``).
Prints, asserts nothing:

1. ETRN reply latency p50/p99 through the listener, ``--etrn`` ETRN one at a
   time for distinct targets (every one a real flush, fanned out to every node),
   taking turns over the nodes: a single bridge without ``cluster:``, then
   clusters of 1, 3, 10 nodes. Goal (issue 11): 3-node p99 < 2x the single bridge.
2. The extra cost of shared limits per ETRN: the same ETRN for ONE target
   with per_target 1/60s, so after the first every request is admitted
   (per_client) and coalesced without a flush: local vs Redis, through the
   listener; and the in-process cost of ``admit`` + coalesced ``run`` per call.
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
# The base config allows customer.example and customer.net with its subdomains.
DOMAIN = "customer.example"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def figures(latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return (
        f"p50 {percentile(ms, 0.5):6.2f} ms  p99 {percentile(ms, 0.99):6.2f} ms  "
        f"mean {statistics.mean(ms):6.2f} ms"
    )


async def sequential(
    nodes: list[Bridge], count: int, distinct: bool
) -> tuple[list[float], set[str]]:
    latencies: list[float] = []
    codes: set[str] = set()
    for number in range(count):
        node = nodes[number % len(nodes)]
        target = f"t{number}.customer.net" if distinct else DOMAIN
        reply, latency = await etrn_session("127.0.0.1", node.port, target)
        latencies.append(latency)
        codes.add(reply[:3])
    return latencies, codes


def measure(nodes: list[Bridge], count: int, distinct: bool) -> tuple[list[float], set[str]]:
    asyncio.run(sequential(nodes, 10, distinct))  # warm up: connections, scripts loaded
    return asyncio.run(sequential(nodes, count, distinct))


def single_bridge(
    directory: Path,
    backend: Mapping[str, Any],
    extra: Mapping[str, Any],
    count: int,
    distinct: bool,
) -> tuple[list[float], set[str]]:
    directory.mkdir()
    bridge = launch_bridge(directory, {"backend": backend, **extra})
    try:
        return measure([bridge], count, distinct)
    finally:
        bridge.stop()


def cluster(
    directory: Path,
    redis: RedisServer,
    backends: list[Mapping[str, Any]],
    extra: Mapping[str, Any],
    count: int,
    distinct: bool,
) -> tuple[list[float], set[str], dict[str, int]]:
    directory.mkdir()
    nodes = start_nodes(directory, redis.url, backends, extra)
    try:
        latencies, codes = measure(nodes, count, distinct)
        records = [r for node in nodes for r in node.etrn_records()]
        answered = {
            "all": sum(len(r.get("nodes_missing", [None])) == 0 for r in records),
            "records": len(records),
        }
        return latencies, codes, answered
    finally:
        for node in nodes:
            node.stop()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--etrn", type=int, default=200)
    parser.add_argument("--nodes", default="1,3,10")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--backend", choices=["command", "postfix"], default="command")
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")]
    backend: Mapping[str, Any] = COMMAND_BACKEND
    if args.backend == "postfix":
        from mtalab import LabMta

        backend = LabMta.from_env("postfix").backend_options
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"backend {dict(backend)}; {args.etrn} ETRN one at a time per row"
    )
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        redis = RedisServer(directory / "redis").start()
        try:
            print("\n1. reply latency, every ETRN a flush (distinct targets, no coalescing)")
            base, codes = single_bridge(directory / "single", backend, NO_LIMITS, args.etrn, True)
            print(f"   single bridge, no cluster: {figures(base)}  replies {sorted(codes)}")
            for size in sizes:
                fanout_dir = directory / f"fanout{size}"
                latencies, codes, answered = cluster(
                    fanout_dir, redis, [backend] * size, NO_LIMITS, args.etrn, True
                )
                ratio = percentile(latencies, 0.99) / percentile(base, 0.99)
                print(
                    f"   cluster of {size:2d} node(s):   {figures(latencies)}  "
                    f"replies {sorted(codes)}  p99 {ratio:.2f}x single; "
                    f"all nodes answered {answered['all']}/{answered['records']}"
                )

            print("\n2. shared limits: the same target again (admitted, coalesced, no flush)")
            local, _ = single_bridge(
                directory / "local-limits", backend, COALESCING, args.etrn, False
            )
            shared, _, _ = cluster(
                directory / "shared-limits", redis, [backend], COALESCING, args.etrn, False
            )
            print(f"   local limits (no cluster):  {figures(local)}")
            print(f"   Redis limits (cluster):     {figures(shared)}")
            extra = statistics.mean(shared) - statistics.mean(local)
            print(f"   extra per ETRN (mean):      {extra * 1000:+.3f} ms")
            local_call = asyncio.run(in_process(LocalState(), args.calls))
            settings = ClusterSettings(redis.url, "bench", 5.0)
            redis_call = asyncio.run(in_process(RedisState(settings), args.calls))
            print(
                f"   in process, admit + coalesced run: local {local_call * 1e6:.1f} us, "
                f"Redis {redis_call * 1e6:.1f} us per ETRN ({args.calls} calls)"
            )
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
