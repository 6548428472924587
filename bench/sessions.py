"""ETRN sessions per second, CPU and memory of ``etrn-bridge serve`` on loopback.

    python bench/sessions.py [--sessions 2000] [--concurrency 1 50] [--idle 1000]
                             [--workers 1 2] [--loop asyncio uvloop]
    python bench/sessions.py --server-port 2527 --domain customer.test   # another server

Starts the server (log backend, audit to a file, INFO logging to a file) as a
subprocess once per combination of ``--workers`` and ``--loop``, then runs the
load generator in ANOTHER process (this file with ``--generate``): asyncio raw
sockets doing connect, EHLO, ETRN, QUIT. Prints one table row per server:
sessions/s per concurrency, the server's CPU per session at the highest
concurrency (all its processes: less noisy than the rate on 2 shared cores),
its memory after the load and while holding ``--idle`` idle sessions (after
EHLO), as PSS summed over the server's processes. ``--server-port`` measures a server already
running on 127.0.0.1 (e.g. Postfix's smtpd) with the same generator instead.
DESIGN.md's reference points on 2 cores: Postfix smtpd 1.8k-3.1k sessions/s,
bare aiosmtpd 1.5k-2.1k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HOST = "127.0.0.1"
FD_LIMIT = 8192
CONFIG = {
    "listen": [f"{HOST}:0"],
    "hostname": "bench.test",
    "backend": {"type": "log"},
    "limits": {"per_client": "off", "per_target": "off"},
    "session": {"max_etrn": 100},
    # Every load comes from one loopback address: lift the per-client caps.
    "connections": {"max_sessions": 20000, "max_sessions_per_client": 20000},
    "policy": {
        "clients": [{"id": "bench", "networks": ["127.0.0.0/8"], "targets": ["customer.example"]}]
    },
}


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))


# Load generator (runs in its own process) -------------------------------------


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def one_session(port: int, etrn: bytes) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    await read_reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await read_reply(reader)
    writer.write(etrn)
    reply = await read_reply(reader)
    if not reply.startswith(b"250"):
        raise RuntimeError(f"unexpected reply {reply!r}")
    writer.write(b"QUIT\r\n")
    await read_reply(reader)
    writer.close()


async def run_load(port: int, domain: str, concurrency: int, sessions: int) -> float:
    remaining = sessions
    etrn = f"ETRN {domain}\r\n".encode()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one_session(port, etrn)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sessions / (time.perf_counter() - started)


async def hold_idle(port: int, count: int) -> None:
    """Open ``count`` sessions, EHLO each, report, wait for a line on stdin, close."""
    streams = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(HOST, port)
        await read_reply(reader)
        writer.write(b"EHLO idle.client\r\n")
        await read_reply(reader)
        streams.append(writer)
    print("idle", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for writer in streams:
        writer.close()


def generate(args: argparse.Namespace) -> None:
    raise_fd_limit()
    if args.mode == "idle":
        asyncio.run(hold_idle(args.port, args.count))
    else:
        rate = asyncio.run(run_load(args.port, args.domain, args.concurrency[0], args.count))
        print(json.dumps({"sessions_per_second": rate}), flush=True)


# Driver ------------------------------------------------------------------------


def server_pids(pid: int) -> list[int]:
    """The server and its workers (``workers: N`` forks them from the first process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def pss_kib(pids: list[int]) -> int:
    """Proportional set size: pages the workers share with their parent count once."""
    total = 0
    for pid in pids:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
        assert match, pid
        total += int(match[1])
    return total


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        # utime and stime are fields 14 and 15, counted after the ")" that ends comm.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_server(directory: Path, extra: dict[str, object]) -> tuple[subprocess.Popen[bytes], int]:
    config = {**CONFIG, **extra, "audit": {"file": str(directory / "audit.jsonl")}}
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    log = directory / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(path)],
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
        preexec_fn=raise_fd_limit,  # noqa: PLW1509 (no threads in this process yet)
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"ready, listening on \S+:(\d+)", log.read_text())
        if match:
            return server, int(match[1])
        if server.poll() is not None:
            raise SystemExit("server failed:\n" + log.read_text())
        time.sleep(0.05)
    raise SystemExit("server did not start")


def generator(port: int, domain: str, *args: str) -> list[str]:
    return [sys.executable, __file__, "--generate", "--port", str(port), "--domain", domain, *args]


def load(port: int, domain: str, concurrency: int, sessions: int) -> float:
    command = generator(port, domain, "--concurrency", str(concurrency), "--count", str(sessions))
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(result.stdout)["sessions_per_second"])


def measure(args: argparse.Namespace, port: int, pids: list[int] | None) -> list[str]:
    """One table row's cells: sessions/s per concurrency, then CPU and memory when known."""
    # Warm up (imports, first allocations, every worker) so runs compare steady states.
    load(port, args.domain, 10, 400)
    cells = []
    cpu_before = cpu_seconds(pids) if pids else 0.0
    for concurrency in args.concurrency:
        if pids:
            cpu_before = cpu_seconds(pids)
        cells.append(f"{load(port, args.domain, concurrency, args.sessions):.0f}")
    if not pids:
        return [*cells, "-", "-", "-"]
    cpu = (cpu_seconds(pids) - cpu_before) / args.sessions
    cells.append(f"{cpu * 1e6:.0f}")
    cells.append(f"{pss_kib(pids) / 1024:.1f}")
    idle = subprocess.Popen(
        generator(port, args.domain, "--mode", "idle", "--count", str(args.idle)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert idle.stdout is not None and idle.stdin is not None
    assert idle.stdout.readline().strip() == "idle"
    time.sleep(0.5)
    cells.append(f"{pss_kib(pids) / 1024:.1f}")
    idle.stdin.write("done\n")
    idle.stdin.close()
    idle.wait(30)
    return cells


def drive(args: argparse.Namespace) -> None:
    columns = [f"{c} clients/s" for c in args.concurrency]
    columns += [f"CPU us/session ({args.concurrency[-1]})", "MiB", f"MiB +{args.idle} idle"]
    print(f"{args.sessions} sessions per run; memory: PSS summed over the server's processes")
    print(f"| {'server':<22} | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    rows: list[tuple[str, int | None, dict[str, object]]] = []
    if args.server_port:
        rows.append((f"127.0.0.1:{args.server_port}", args.server_port, {}))
    else:
        rows += [
            (f"workers {w}, {loop}", None, {"workers": w, "event_loop": loop})
            for w in args.workers
            for loop in args.loop
        ]
    for name, external_port, extra in rows:
        if external_port is not None:
            cells = measure(args, external_port, None)
        else:
            with tempfile.TemporaryDirectory() as directory:
                server, port = start_server(Path(directory), extra)
                try:
                    cells = measure(args, port, server_pids(server.pid))
                finally:
                    server.terminate()
                    server.wait(30)
        padded = (f"{cell:>{len(title)}}" for cell, title in zip(cells, columns, strict=True))
        print(f"| {name:<22} | " + " | ".join(padded) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="load", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    loops = ["asyncio", "uvloop"]
    parser.add_argument("--loop", nargs="+", choices=loops, default=loops)
    parser.add_argument("--server-port", type=int, help="measure this running server instead")
    parser.add_argument("--domain", default="customer.example", help="the ETRN argument")
    args = parser.parse_args()
    if args.generate:
        generate(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
