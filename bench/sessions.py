"""ETRN sessions per second and memory of ``etrn-bridge serve`` on loopback.

    python bench/sessions.py [--sessions 2000] [--concurrency 1 50] [--idle 1000]

Starts the server (log backend, audit to a file, INFO logging to a file) as a
subprocess, then runs the load generator in ANOTHER process (this file with
``--generate``): asyncio raw sockets doing connect, EHLO, ETRN, QUIT. Prints
sessions/s per concurrency, the server's peak RSS (VmHWM) and its RSS while
holding ``--idle`` idle sessions (after EHLO). DESIGN.md's reference points on
2 cores: Postfix smtpd 1.8k-3.1k sessions/s, bare aiosmtpd 1.5k-2.1k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def one_session(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    await read_reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await read_reply(reader)
    writer.write(b"ETRN customer.example\r\n")
    reply = await read_reply(reader)
    if not reply.startswith(b"250"):
        raise RuntimeError(f"unexpected reply {reply!r}")
    writer.write(b"QUIT\r\n")
    await read_reply(reader)
    writer.close()


async def run_load(port: int, concurrency: int, sessions: int) -> float:
    remaining = sessions

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one_session(port)

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
        rate = asyncio.run(run_load(args.port, args.concurrency[0], args.count))
        print(json.dumps({"sessions_per_second": rate}), flush=True)


# Driver ------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, field
    return int(match[1])


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


def generator(port: int, *args: str) -> list[str]:
    return [sys.executable, __file__, "--generate", "--port", str(port), *args]


def drive(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server, port = start_server(Path(directory), {})
        try:
            print(f"server pid {server.pid}, port {port}, {args.sessions} sessions per run")
            # Warm up (imports, first allocations) so runs compare steady states.
            subprocess.run(
                generator(port, "--concurrency", "10", "--count", "200"),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            for concurrency in args.concurrency:
                result = subprocess.run(
                    generator(
                        port, "--concurrency", str(concurrency), "--count", str(args.sessions)
                    ),
                    check=True,
                    capture_output=True,
                    text=True,
                )
                rate = json.loads(result.stdout)["sessions_per_second"]
                print(f"concurrency {concurrency:>3}: {rate:8.0f} sessions/s")
            print(f"peak RSS after load: {proc_status_kib(server.pid, 'VmHWM') / 1024:.1f} MiB")
            baseline = proc_status_kib(server.pid, "VmRSS")
            idle = subprocess.Popen(
                generator(port, "--mode", "idle", "--count", str(args.idle)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert idle.stdout is not None and idle.stdin is not None
            assert idle.stdout.readline().strip() == "idle"
            time.sleep(0.5)
            rss = proc_status_kib(server.pid, "VmRSS")
            print(
                f"RSS with {args.idle} idle sessions: {rss / 1024:.1f} MiB "
                f"(+{(rss - baseline) / 1024:.1f} MiB, {(rss - baseline) / args.idle:.1f} KiB each)"
            )
            idle.stdin.write("done\n")
            idle.stdin.close()
            idle.wait(30)
            print(f"peak RSS overall: {proc_status_kib(server.pid, 'VmHWM') / 1024:.1f} MiB")
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="load", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    if args.generate:
        generate(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
