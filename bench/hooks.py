"""Plugin mode: ETRN sessions/s through each MTA with the bridge as its hook vs its native ETRN.

Needs root and the lab (``bash tests/mta/lab/all.sh install``); run it inside
``bash tests/mta/lab/netns-run.sh``. For each MTA the lab has three SMTP ports
(tests/mta/lab): the plugin-mode port (the kit's snippet, asking the bridge's
hook on a unix socket), and a native port whose ETRN never asks the bridge:
Postfix's own ETRN (it flushes the site), Exim accepting ETRN and running
``/bin/true`` (Exim 4.96 cannot pass the argument to a command: taint), and
Sendmail's own ETRN (it forks a ``-qR@`` queue run). CLIENTS concurrent
clients each do connect, EHLO, ETRN customer.test, QUIT, SESSIONS times in all.

The bridge (``etrn-bridge serve`` with only that MTA's hook) runs with the
``log`` backend (the hook's own cost: decision, audit, the round trip) and,
as a second row, with the MTA's own backend (a queue listing and an exact
flush on each ETRN; the queue is empty, so nothing to flush: 251). Limits are
off so that every ETRN reaches the backend. Prints sessions/s, the ratio to
native, and the ETRN reply latency p50/p99 as the clients see it; asserts
nothing.

``--event-loop uvloop`` runs the bridge with the config's ``event_loop: uvloop``
(the optional extra, ``pip install 'etrn-bridge[uvloop]'``) instead of asyncio's
own loop; the MTAs and the clients are the same either way.

On a shared machine single runs are noisy, so each MTA is measured in
``--rounds`` rounds, each a native run followed by the hook runs, every run
after ``--warmup`` sessions that are not counted (the MTA's processes spawned
and connected to the hook). Each row's ratio is to the native run of its own
round; the summary gives the median and range of those ratios. To show where
the time goes, each row also has the CPU per session of the clients (this
process), of the MTA (its daemon and every process under it, those that
ended included) and of the bridge: on a machine with no CPU to spare,
sessions/s follow the sum. For Postfix a first hook row uses
``bench/stub_policy.py``, a policy server that answers ``action=OK`` with no
work at all: the floor any policy service can reach on this machine, which
tells the bridge's own cost from what Postfix and the clients pay for the
round trip itself. ``--stub-spin-us N`` adds a row with the same stub spinning
N microseconds on the CPU before each answer (set it to the bridge's CPU per
ETRN): what a policy server's CPU alone costs Postfix's sessions on the same
cores, decision and audit aside.

    python bench/hooks.py [--sessions 2000] [--clients 50] [--only postfix]
                          [--rounds 3] [--warmup 300] [--event-loop asyncio|uvloop]
                          [--stub-spin-us N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mta"))

from mtalab import MTA_LAB, MTAS, LabMta, lab_env

LAB = Path(__file__).resolve().parents[1] / "tests" / "mta" / "lab"
HOST = "127.0.0.1"
SESSION_TIMEOUT = 60.0  # a session the MTA never finishes counts as an error
HOOKS = {
    "postfix": ("postfix_policy", "postfix"),
    "exim": ("exim", "Debian-exim"),
    "sendmail": ("sendmail", "root"),
}
# The daemon each lab MTA writes its pid to (tests/mta/lab/*.sh; first line).
DAEMON_PID_FILES = {
    "postfix": MTA_LAB / "postfix" / "spool" / "pid" / "master.pid",
    "exim": MTA_LAB / "exim" / "exim.pid",
    "sendmail": MTA_LAB / "sendmail" / "sendmail.pid",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def one_session(port: int, latencies: list[float], errors: list[str]) -> None:
    try:
        async with asyncio.timeout(SESSION_TIMEOUT):
            await etrn_session(port, latencies, errors)
    except (OSError, ConnectionError, TimeoutError) as exc:
        errors.append(repr(exc))


async def etrn_session(port: int, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    await read_reply(reader)
    writer.write(b"EHLO bench.client.test\r\n")
    await read_reply(reader)
    started = time.perf_counter()
    writer.write(b"ETRN customer.test\r\n")
    reply = await read_reply(reader)
    latencies.append(time.perf_counter() - started)
    if not reply.startswith(b"25"):
        errors.append(reply.decode(errors="replace").strip())
    writer.write(b"QUIT\r\n")
    await read_reply(reader)
    writer.close()
    await writer.wait_closed()


async def load(port: int, sessions: int, clients: int) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    queue = iter(range(sessions))

    async def client() -> None:
        for _ in queue:
            await one_session(port, latencies, errors)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return sessions / (time.perf_counter() - started), latencies, errors


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def start_bridge(
    mta: LabMta, workdir: Path, backend: dict[str, object], event_loop: str
) -> subprocess.Popen[bytes]:
    hook, group = HOOKS[mta.name]
    socket_path = lab_env(mta.name)[f"{mta.name.upper()}_HOOK_SOCKET"]
    config = {
        "hostname": "bench.test",
        "event_loop": event_loop,
        "backend": backend,
        "audit": {"file": str(workdir / f"audit-{mta.name}.jsonl")},
        "limits": {"per_client": "off", "per_target": "off"},
        "hooks": {hook: {"listen": f"unix:{socket_path}", "group": group}},
        "policy": {
            "clients": [{"id": "bench", "networks": ["127.0.0.0/8"], "targets": ["customer.test"]}]
        },
    }
    path = workdir / f"bridge-{mta.name}.yaml"
    path.write_text(json.dumps(config))  # YAML is a superset of JSON
    log = workdir / f"bridge-{mta.name}.log"
    with log.open("w") as stderr:  # a file: a pipe nobody reads would block the bridge
        process = subprocess.Popen(
            [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if "ready, listening on" in log.read_text():
            return process
        time.sleep(0.05)
    raise RuntimeError(f"bridge for {mta.name} did not start: {log.read_text()}")


def start_stub(mta: LabMta, spin_us: float = 0) -> subprocess.Popen[bytes]:
    """bench/stub_policy.py on the Postfix hook socket: the floor row (spinning
    ``spin_us`` per request: the CPU row)."""
    socket_path = lab_env(mta.name)[f"{mta.name.upper()}_HOOK_SOCKET"]
    stub = str(Path(__file__).with_name("stub_policy.py"))
    process = subprocess.Popen(
        [sys.executable, stub, socket_path, str(spin_us)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    if process.stdout.readline() != b"ready\n":
        raise RuntimeError("the stub policy server did not start")
    return process


def proc_stat(pid: int) -> list[str] | None:
    """proc(5) stat fields from the third (state) on; None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (proc(5) stat fields 14 and 15)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


def tree_snapshot(root: int) -> dict[int, int]:
    """CPU ticks of ``root`` and of every process under it, each with its reaped
    children's (fields 14-17)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := proc_stat(int(name))):
            parents[int(name)] = int(fields[1])
            ticks[int(name)] = sum(int(value) for value in fields[11:15])
    inside = {root}
    for start in sorted(parents):  # walk each process up to root (or out of the tree)
        chain, pid = [], start
        while pid not in inside and pid in parents and pid > 1:
            chain.append(pid)
            pid = parents[pid]
        if pid in inside:
            inside.update(chain)
    return {pid: ticks[pid] for pid in inside if pid in ticks}


def tree_cpu(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds a process tree used between two snapshots. A process that
    ended was reaped into its parent's counters with all of its CPU, so what it
    had used before the first snapshot is taken off again."""
    used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
    used -= sum(ticks for pid, ticks in before.items() if pid not in after)
    return used / CLOCK_TICKS


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


@dataclass
class Run:
    """One measured run: throughput, ETRN latency, CPU per session by party."""

    rate: float
    latencies: list[float]
    errors: list[str]
    client_ms: float
    mta_ms: float
    bridge_ms: float | None

    def p(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1000


def measure(
    port: int, args: argparse.Namespace, daemon: int, bridge: subprocess.Popen[bytes] | None
) -> Run:
    asyncio.run(load(port, args.warmup, args.clients))
    client, mta = own_cpu(), tree_snapshot(daemon)
    bridge_before = cpu_seconds(bridge.pid) if bridge else 0.0
    rate, latencies, errors = asyncio.run(load(port, args.sessions, args.clients))
    per_session = 1000 / args.sessions
    return Run(
        rate,
        latencies,
        errors,
        (own_cpu() - client) * per_session,
        tree_cpu(mta, tree_snapshot(daemon)) * per_session,
        (cpu_seconds(bridge.pid) - bridge_before) * per_session if bridge else None,
    )


def row(label: str, run: Run, native: Run | None) -> None:
    ratio = f"{run.rate / native.rate:5.2f}x" if native else "    -"
    bridge = f" bridge {run.bridge_ms:.2f}" if run.bridge_ms is not None else ""
    errors = f"  errors {len(run.errors)}" + (f" (first: {run.errors[0]})" if run.errors else "")
    added = ""
    if native:
        added = f" ({run.p(0.5) - native.p(0.5):+.1f}/{run.p(0.99) - native.p(0.99):+.1f})"
    print(
        f"  {label:<22} {run.rate:7.1f}/s {ratio}"
        f"  ETRN p50/p99 {run.p(0.5):6.1f}/{run.p(0.99):6.1f} ms{added}"
        f"  CPU ms/session: clients {run.client_ms:.2f} MTA {run.mta_ms:.2f}{bridge}"
        f"  load {os.getloadavg()[0]:.1f}{errors}",
        flush=True,
    )


def summary(name: str, rounds: list[dict[str, Run]]) -> None:
    """Medians over the rounds; a run with errors (say, Sendmail refusing
    connections above its RefuseLA load average) leaves its round out."""
    natives = [runs.pop("native ETRN") for runs in rounds]
    print(f"{name}, {len(rounds)} rounds (median, range):")
    print(f"  {'native ETRN':<22} {spread([run.rate for run in natives], '/s', '.0f')}")
    for label in rounds[0]:
        pairs = [
            (runs[label], native)
            for runs, native in zip(rounds, natives, strict=True)
            if not runs[label].errors and not native.errors
        ]
        if not pairs:
            print(f"  {label:<22} no round without errors")
            continue
        ratios = [run.rate / native.rate for run, native in pairs]
        p50 = [run.p(0.5) - native.p(0.5) for run, native in pairs]
        p99 = [run.p(0.99) - native.p(0.99) for run, native in pairs]
        cpu = [run.bridge_ms or 0.0 for run, _ in pairs]
        left_out = f" ({len(rounds) - len(pairs)} rounds with errors left out)" * (
            len(pairs) < len(rounds)
        )
        print(
            f"  {label:<22} {spread(ratios, 'x', '.2f')} of native;"
            f" added ETRN latency p50 {spread(p50, ' ms', '+.1f')},"
            f" p99 {spread(p99, ' ms', '+.1f')}; bridge CPU {spread(cpu, ' ms', '.3f')} per ETRN"
            f"{left_out}"
        )


def spread(values: list[float], unit: str, form: str) -> str:
    return f"{statistics.median(values):{form}}{unit} ({min(values):{form}}..{max(values):{form}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--only", choices=MTAS, action="append")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--stub-spin-us",
        type=float,
        default=0.0,
        help="Postfix: one more stub row that spins this many microseconds per request",
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    subprocess.run(["bash", str(LAB / "all.sh"), "configure"], check=True, capture_output=True)
    subprocess.run(["bash", str(LAB / "all.sh"), "start"], check=True, capture_output=True)
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.clients} clients,"
        f" {args.sessions} sessions per run after {args.warmup} not counted,"
        f" bridge event loop {args.event_loop}; added ETRN latency over native in brackets"
    )
    workdir = Path(tempfile.mkdtemp(prefix="etrn-bridge-hooks-bench-"))
    try:
        for name in args.only or MTAS:
            mta = LabMta.from_env(name)
            mta.reset()
            env = lab_env(name)
            native_port = int(env[f"{name.upper()}_NATIVE_ETRN_PORT"])
            hook_port = int(env[f"{name.upper()}_HOOK_PORT"])
            daemon = int(DAEMON_PID_FILES[name].read_text().split()[0])
            backends = {
                "hook, log backend": {"type": "log"},
                f"hook, {name} backend": {
                    **mta.backend_options,
                    **({"flush_by_id": True} if name == "postfix" else {}),
                },
            }
            rounds: list[dict[str, Run]] = []
            for number in range(1, args.rounds + 1):
                print(f"{name}, round {number}:")
                native = measure(native_port, args, daemon, None)
                row("native ETRN", native, None)
                runs = {"native ETRN": native}
                if name == "postfix":
                    stubs = {"stub policy (floor)": 0.0}
                    if args.stub_spin_us:
                        stubs[f"stub spinning {args.stub_spin_us:g} us"] = args.stub_spin_us
                    for label, spin_us in stubs.items():
                        stub = start_stub(mta, spin_us)
                        try:
                            runs[label] = measure(hook_port, args, daemon, stub)
                        finally:
                            stop(stub)
                        row(label, runs[label], native)
                for label, backend in backends.items():
                    bridge = start_bridge(mta, workdir, backend, args.event_loop)
                    try:
                        runs[label] = measure(hook_port, args, daemon, bridge)
                    finally:
                        stop(bridge)
                    row(label, runs[label], native)
                rounds.append(runs)
            summary(name, rounds)
    finally:
        # The lab daemons outlive the namespace the bench runs in: stopped even when it fails.
        subprocess.run(["bash", str(LAB / "all.sh"), "stop"], check=False, capture_output=True)


if __name__ == "__main__":
    main()
