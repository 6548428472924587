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

    python bench/hooks.py [--sessions 1000] [--clients 50] [--only postfix]
                          [--event-loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mta"))

from mtalab import MTAS, LabMta, lab_env

LAB = Path(__file__).resolve().parents[1] / "tests" / "mta" / "lab"
HOST = "127.0.0.1"
SESSION_TIMEOUT = 60.0  # a session the MTA never finishes counts as an error
HOOKS = {
    "postfix": ("postfix_policy", "postfix"),
    "exim": ("exim", "Debian-exim"),
    "sendmail": ("sendmail", "root"),
}


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (proc(5) stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def row(label: str, rate: float, latencies: list[float], errors: list[str], base: float) -> None:
    ratio = f"{rate / base:5.2f}x" if base else "    -"
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    print(
        f"  {label:<28} {rate:8.1f} sessions/s {ratio}  ETRN p50 {p50:7.2f} ms"
        f"  p99 {p99:8.2f} ms  errors {len(errors)}" + (f" (first: {errors[0]})" if errors else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--only", choices=MTAS, action="append")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    subprocess.run(["bash", str(LAB / "all.sh"), "configure"], check=True, capture_output=True)
    subprocess.run(["bash", str(LAB / "all.sh"), "start"], check=True, capture_output=True)
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.clients} clients,"
        f" {args.sessions} sessions per row, bridge event loop {args.event_loop}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="etrn-bridge-hooks-bench-"))
    for name in args.only or MTAS:
        mta = LabMta.from_env(name)
        mta.reset()
        env = lab_env(name)
        native_port = int(env[f"{name.upper()}_NATIVE_ETRN_PORT"])
        hook_port = int(env[f"{name.upper()}_HOOK_PORT"])
        print(f"{name}:")
        rate, latencies, errors = asyncio.run(load(native_port, args.sessions, args.clients))
        row("native ETRN", rate, latencies, errors, 0.0)
        native_rate = rate
        native_p50, native_p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        backends = {
            "hook, log backend": {"type": "log"},
            f"hook, {name} backend": {
                **mta.backend_options,
                **({"flush_by_id": True} if name == "postfix" else {}),
            },
        }
        for label, backend in backends.items():
            bridge = start_bridge(mta, workdir, backend, args.event_loop)
            try:
                cpu_before = cpu_seconds(bridge.pid)
                rate, latencies, errors = asyncio.run(load(hook_port, args.sessions, args.clients))
                cpu = cpu_seconds(bridge.pid) - cpu_before
            finally:
                stop(bridge)
            row(label, rate, latencies, errors, native_rate)
            added_p50 = (percentile(latencies, 0.5) - native_p50) * 1000
            added_p99 = (percentile(latencies, 0.99) - native_p99) * 1000
            print(
                f"  {'':<28} added ETRN latency p50 {added_p50:+.2f} ms, p99 {added_p99:+.2f} ms;"
                f" bridge CPU {cpu / args.sessions * 1000:.2f} ms per ETRN"
            )
    subprocess.run(["bash", str(LAB / "all.sh"), "stop"], check=False, capture_output=True)


if __name__ == "__main__":
    main()
