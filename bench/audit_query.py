"""How fast ``etrn-bridge audit`` summarises a provider's audit trail.

    python bench/audit_query.py [--lines 1000000] [--days 30] [--keep DIR]
                                [--baseline PYTHON [--pairs 3]]

Writes ``--lines`` audit records with the writer's own record builder and
encoder (audit.request_record, AuditLog.write's json.dumps), spread over
``--days`` and 2,000 loopback clients, as logrotate would leave them:
``audit.jsonl.2.gz``, ``audit.jsonl.1``, ``audit.jsonl`` (30/30/40 %). The mix:
allowed flushes with queue ids (some coalesced), nothing waiting, policy
refusals, rate limits, backend failures, malformed arguments, plus reload
records. Then times the real command (a subprocess, as an admin runs it) for
the full summary and for the usual questions (the last day of the trail, one
network, one target). DESIGN/issue goal: 1,000,000 lines summarised in < 5 s.

With ``--baseline``, the python of another checkout's venv (main, say) runs
every query too, alternating with this one (who goes first alternates as well)
``--pairs`` times: medians and ranges of both, the load average, and whether
both printed the same.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

from etrn_bridge.audit import request_record, timestamp
from etrn_bridge.replies import reply_for
from etrn_bridge.request import Decision, FlushResult, Identity, Outcome, Request, Status
from etrn_bridge.target import parse_target

CLIENTS = 2000
SHARES = (("audit.jsonl.2.gz", 0.3), ("audit.jsonl.1", 0.3), ("audit.jsonl", 0.4))


def record_line(rng: random.Random, moment: datetime, serial: int) -> str:
    customer = rng.randrange(CLIENTS)
    address = f"127.{1 + customer // 250}.{customer % 250}.{1 + rng.randrange(4)}"
    wanted = f"customer{customer}.example"
    if rng.random() < 0.2:  # asks for someone else's domain
        wanted = f"customer{rng.randrange(CLIENTS)}.example"
    roll = rng.random()
    argument = wanted if roll < 0.95 else f"bad..{wanted}"
    request = Request(
        Identity(address, 40000 + serial % 20000, helo=f"host{customer}.customer.example"),
        argument,
        session_id=f"{serial:x}",
    )
    target = parse_target(wanted)
    allowed = Decision(True, f"customer-{customer}", "allowed")
    if roll >= 0.95:
        outcome = Outcome(Status.BAD_ARGUMENT, reason="empty label")
    elif wanted != f"customer{customer}.example":
        denied = Decision(False, None, "no entry allows this target")
        outcome = Outcome(Status.DENIED, target, denied, reason=denied.reason)
    elif roll < 0.05:
        outcome = Outcome(Status.RATE_LIMITED, target, allowed, reason="more than 10/60s")
    elif roll < 0.08:
        flush = FlushResult(False, exit_status=75, detail="postqueue: fatal: Connection refused")
        outcome = Outcome(Status.FAILED, target, allowed, backend="postfix", flush=flush)
    elif roll < 0.35:
        flush = FlushResult(True, pending=0, exit_status=0)
        outcome = Outcome(Status.NOTHING_WAITING, target, allowed, backend="postfix", flush=flush)
    else:
        count = rng.randrange(1, 8)
        ids = tuple(f"4Z{serial:07X}{i}" for i in range(count))
        flush = FlushResult(True, pending=count, exit_status=0, queue_ids=ids)
        outcome = Outcome(
            Status.PENDING_STARTED,
            target,
            allowed,
            backend="postfix",
            flush=flush,
            coalesced=roll < 0.45,
        )
    outcome = replace(outcome, duration=rng.random() / 10)
    record = request_record(request, outcome, reply_for(outcome))
    record["ts"] = timestamp(moment)
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def write_trail(directory: Path, lines: int, days: int) -> None:
    rng = random.Random(1985)
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    step = (end - start) / lines
    serial = 0
    for name, share in SHARES:
        count = int(lines * share) if name != "audit.jsonl" else lines - serial
        opener = gzip.open if name.endswith(".gz") else open
        with opener(directory / name, "wt", encoding="ascii") as out:
            for _ in range(count):
                if serial % 50_000 == 0:
                    reload = {"ts": timestamp(start + step * serial), "event": "reload"}
                    out.write(json.dumps({**reload, "ok": True}, separators=(",", ":")) + "\n")
                out.write(record_line(rng, start + step * serial, serial) + "\n")
                serial += 1


def timed(
    directory: Path, *arguments: str, python: str = sys.executable
) -> tuple[float, float, str, str]:
    """Wall and CPU seconds of one run of the real command, its stderr summary and
    a digest of what it printed."""
    command = [python, "-m", "etrn_bridge", "audit", "--file", "audit.jsonl"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *arguments], cwd=directory, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    rows = done.stdout.count("\n")
    note = done.stderr.strip().splitlines()[0] if done.stderr else f"exit {done.returncode}"
    digest = hashlib.sha256(done.stdout.encode()).hexdigest()[:12]
    return wall, cpu, f"{rows} rows; {note.removeprefix('etrn-bridge audit: ')}", digest


def queries(directory: Path) -> list[tuple[str, tuple[str, ...]]]:
    """The usual questions. "24h" and "7d" count back from the trail's last record,
    not from now: a kept trail ages, and both sides of an A/B must see one bound."""
    with (directory / "audit.jsonl").open("rb") as live:
        live.seek(max(0, live.seek(0, os.SEEK_END) - 65536))
        end = datetime.fromisoformat(json.loads(live.read().splitlines()[-1])["ts"])
    day, week = (timestamp(end - timedelta(days=days)) for days in (1, 7))
    return [
        ("full summary", ()),
        ("full summary --json", ("--json",)),
        ("--since 24h", ("--since", day)),
        ("--client 127.3.0.0/16", ("--client", "127.3.0.0/16")),
        ("--target customer42.example", ("--target", "customer42.example")),
        ("--status failed --since 7d", ("--status", "failed", "--since", week)),
    ]


def compare(directory: Path, baseline: str, pairs: int) -> None:
    """Every query by ``baseline`` and by this python, interleaved (A/B)."""
    runs: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    loads = []
    for pair in range(pairs):
        for label, arguments in queries(directory):
            both = [("base", baseline), ("this", sys.executable)]
            for name, python in both if pair % 2 == 0 else both[::-1]:
                wall, cpu, _, digest = timed(directory, *arguments, python=python)
                runs.setdefault((label, name), []).append((wall, cpu, digest))
            loads.append(os.getloadavg()[0])
        print(f"pair {pair + 1} done, load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{pairs} pairs; load average during them {min(loads):.2f}-{max(loads):.2f}")
    print(
        f"{'query':30} {'baseline wall (range)':>24} {'this wall (range)':>24}  CPU base/this  same"
    )
    for label, _ in queries(directory):
        cells = []
        for name in ("base", "this"):
            walls = [run[0] for run in runs[label, name]]
            cells.append(f"{median(walls):6.2f} ({min(walls):.2f}-{max(walls):.2f})")
        cpus = [median(run[1] for run in runs[label, name]) for name in ("base", "this")]
        same = {run[2] for run in runs[label, "base"] + runs[label, "this"]}
        print(
            f"{label:30} {cells[0]:>24} {cells[1]:>24}  {cpus[0]:5.2f}/{cpus[1]:5.2f}"
            f"  {'yes' if len(same) == 1 else 'NO'}"
        )


def json_loads_reference(directory: Path) -> float:
    """Microseconds json.loads takes for one record here and now (machine context)."""
    with (directory / "audit.jsonl").open() as stream:
        lines = [next(stream) for _ in range(20_000)]
    started = time.process_time()
    for line in lines:
        json.loads(line)
    return (time.process_time() - started) / len(lines) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--keep", type=Path, help="write the files here and keep them (reused when present)"
    )
    parser.add_argument("--baseline", help="python of another checkout's venv, timed A/B")
    parser.add_argument("--pairs", type=int, default=3, help="A/B runs of each query")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        if not all((directory / name).exists() for name, _ in SHARES):
            write_trail(directory, args.lines, args.days)
        sizes = ", ".join(f"{n} {os.path.getsize(directory / n) >> 20} MiB" for n, _ in SHARES)
        print(f"trail ready in {time.perf_counter() - started:.1f} s: {sizes}")
        print(
            f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; json.loads of one "
            f"record: {json_loads_reference(directory):.1f} us (x lines = a parse-everything floor)"
        )
        if args.baseline:
            compare(directory, args.baseline, args.pairs)
            return
        for label, arguments in queries(directory):
            wall, cpu, note, _ = timed(directory, *arguments)
            print(f"{label:30} {wall:6.2f} s wall {cpu:6.2f} s CPU   {note}")
    finally:
        if args.keep is None:
            shutil.rmtree(directory)


if __name__ == "__main__":
    main()
