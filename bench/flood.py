"""A flood of ETRN for one domain through the real listener: how many backend runs, how fast.

    python bench/flood.py [--etrn 1000] [--seconds 1.0] [--flush-seconds 0.5]

Starts ``etrn-bridge serve`` (command backend: a script that sleeps like a flush
and appends one line per run, so runs are counted for real), sends ``--etrn``
sessions (connect, EHLO, ETRN, QUIT) for ONE domain spread evenly over
``--seconds``, then prints the backend runs, the reply codes and the ETRN
reply latency p50/p99. DESIGN.md's goal: 1,000 ETRN make 1 backend run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "integration")]

from asyncsmtp import etrn_session, write_counting_flush  # noqa: E402
from bridgekit import launch_bridge  # noqa: E402

DOMAIN = "customer.example"
FD_LIMIT = 8192


async def flood(host: str, port: int, count: int, seconds: float) -> list[tuple[str, float]]:
    async def one(delay: float) -> tuple[str, float]:
        await asyncio.sleep(delay)
        return await etrn_session(host, port, DOMAIN)

    return await asyncio.gather(*(one(i * seconds / count) for i in range(count)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--etrn", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--flush-seconds", type=float, default=0.5)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))  # server inherits

    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        runs = directory / "runs.txt"
        script = write_counting_flush(directory / "flush.sh", runs, args.flush_seconds)
        bridge = launch_bridge(
            directory,
            {
                "backend": {"type": "command", "argv": [str(script), "{target}"]},
                "limits": {"per_target": "1/60s", "per_client": "off"},
                # The flood comes from one loopback address: lift the per-client caps.
                "connections": {"max_sessions": 20000, "max_sessions_per_client": 20000},
            },
        )
        try:
            started = time.perf_counter()
            results = asyncio.run(flood(bridge.host, bridge.port, args.etrn, args.seconds))
            elapsed = time.perf_counter() - started
            time.sleep(args.flush_seconds + 0.2)  # let a last run finish writing
            backend_runs = len(runs.read_text().splitlines()) if runs.exists() else 0
            records = bridge.etrn_records()
        finally:
            bridge.stop()

    codes = Counter(reply[:3] for reply, _ in results)
    latencies = [latency * 1000 for _, latency in results]
    coalesced = sum(1 for record in records if record["coalesced"])
    print(
        f"ETRN sent:        {args.etrn} for {DOMAIN} over {args.seconds:g} s "
        f"(done in {elapsed:.2f} s)"
    )
    print(f"backend runs:     {backend_runs} (goal: 1; flush takes {args.flush_seconds:g} s)")
    print(f"replies:          {dict(codes)}")
    print(f"audit records:    {len(records)} ({coalesced} coalesced)")
    print(
        f"ETRN reply ms:    p50 {percentile(latencies, 0.5):.1f}, "
        f"p99 {percentile(latencies, 0.99):.1f}, max {max(latencies):.1f}, "
        f"mean {statistics.mean(latencies):.1f}"
    )


if __name__ == "__main__":
    main()
