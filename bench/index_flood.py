"""CPU per ETRN of the indexed flush path, without an MTA: floods of concurrent ETRN
for different domains against ``etrn-bridge serve`` (postfix backend, queue index,
``flush_socket``) and a stand-in flush(8) in a process of its own.

    python bench/index_flood.py [--queued 20000] [--domains 2000] [--flood 100]
                                [--floods 20] [--workers 1] [--python PYTHON]...

Each ``--python`` (default: this interpreter) runs its own bridge, so checkouts
can be compared; the floods alternate between them. Every session connects and
says EHLO, then one client thread sends all ETRN commands and reads the replies
with a selector (as ``bench/queue_scale.py`` does). The bridge's CPU (every
process, from /proc) is read just before the first ETRN is sent and just after
the last reply: "window" is the CPU of the ETRN commands alone, "session" that of
the whole sessions (connect, greeting, EHLO, ETRN, QUIT). Between floods the
marks are cleared through a connection of its own, as a writer of another
process (the milter) would. The index is filled directly (no listing: the
bridge's reconciliation is claimed ahead, for an hour). Prints figures, asserts
nothing; the figures are CPU, which other jobs on the machine move less than
reply times.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from etrnflood import cpu_seconds, etrn_flood, read_reply

from etrn_bridge.queueindex.store import IndexedMessage, QueueIndex

HOST = "127.0.0.1"
# The stand-in flush(8): the server's announcement, then status=0 for any request
# (attr_print0 framing, as etrn_bridge/backends/postfix_flush.py reads it).
FLUSH_SERVER = r"""
import asyncio, sys
ANNOUNCE = b"protocol\0queue_flush_protocol\0\0"
STATUS = b"status\0" + b"0\0\0"
async def serve(reader, writer):
    writer.write(ANNOUNCE)
    try:
        await reader.readuntil(b"\0\0")
        writer.write(STATUS)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1], backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def domain(number: int) -> str:
    return f"d{number:04d}.customer.test"


def fill_index(path: Path, queued: int, domains: int) -> None:
    index = QueueIndex(path)
    messages = [
        IndexedMessage(f"{n:011X}", (f"u{n}@{domain(n % domains)}",), 1000) for n in range(queued)
    ]
    now = time.time()
    index.reconcile(messages, now)
    index.claim_reconcile(3600)  # the bridge's first reconciliation waits an hour
    index.close()


def clear_marks(path: Path) -> None:
    index = QueueIndex(path)
    with index._write() as db:
        db.execute("UPDATE message SET flushed = NULL WHERE flushed IS NOT NULL")
    index.close()


def used(before: tuple[float, float], pid: int) -> tuple[float, float]:
    after = cpu_seconds(pid)
    return after[0] - before[0], after[1] - before[1]


CpuPair = tuple[float, float]  # (the processes, their event-loop threads)


def flood(
    port: int, targets: list[str], pid: int
) -> tuple[list[float], set[int], CpuPair, CpuPair]:
    """(reply times, reply codes, window CPU, session CPU) of one flood."""
    before_sessions = cpu_seconds(pid)
    sessions = []
    for _ in targets:
        sock = socket.create_connection((HOST, port), timeout=60)
        sessions.append(sock)
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
    before_window = cpu_seconds(pid)
    replies = etrn_flood(sessions, targets, timeout=60)
    window = used(before_window, pid)
    for sock in sessions:
        sock.setblocking(True)
        sock.sendall(b"QUIT\r\n")
        read_reply(sock)
        sock.close()
    time.sleep(0.2)  # the bridge ends the sessions
    session = used(before_sessions, pid)
    return (
        [replies[s][0] for s in sessions],
        {int(replies[s][1][:3]) for s in sessions},
        window,
        session,
    )


class Bridge:
    def __init__(
        self, python: str, number: int, workdir: Path, flush: Path, args: argparse.Namespace
    ) -> None:
        self.name = f"{number}:{python}"
        self.index = workdir / f"index-{number}.sqlite"
        fill_index(self.index, args.queued, args.domains)
        listener = socket.socket()
        listener.bind((HOST, 0))
        self.port = listener.getsockname()[1]
        listener.close()
        config = workdir / f"bridge-{number}.yaml"
        config.write_text(
            f'listen: ["{HOST}:{self.port}"]\n'
            f'backend: {{type: postfix, postqueue: /bin/false, flush_socket: "{flush}",'
            f" max_concurrent: {args.flood}}}\n"
            f'audit: {{file: "{workdir}/audit-{number}.jsonl"}}\n'
            f'limits: {{per_target: "off", per_client: "off", '
            f"max_concurrent_flushes: {args.flood}}}\n"
            f"connections: {{max_sessions_per_client: {2 * args.flood}}}\n"
            f"workers: {args.workers}\n"
            f'index: {{file: "{self.index}", reconcile: "1h"}}\n'
            "policy:\n  clients:\n    - id: bench\n      networks: [127.0.0.0/8]\n"
            '      targets: ["@customer.test"]\n'
        )
        self.stderr = (workdir / f"bridge-{number}.stderr").open("w")
        self.process = subprocess.Popen(
            [python, "-m", "etrn_bridge", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            cwd=workdir,  # each interpreter imports its own checkout
        )
        for _ in range(400):
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.windows: list[CpuPair] = []
        self.sessions: list[CpuPair] = []
        self.p50s: list[float] = []
        self.p99s: list[float] = []

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.stderr.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=20_000)
    parser.add_argument("--domains", type=int, default=2_000)
    parser.add_argument("--flood", type=int, default=100)
    parser.add_argument("--floods", type=int, default=20, help="floods per bridge")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--python", action="append", help="interpreter of a bridge (repeatable)")
    args = parser.parse_args()
    pythons = [os.path.abspath(python) for python in args.python or [sys.executable]]
    with tempfile.TemporaryDirectory(prefix="index-flood-") as tmp:
        workdir = Path(tmp)
        flush = workdir / "flush"
        server = subprocess.Popen(
            [sys.executable, "-c", FLUSH_SERVER, str(flush)], stdout=subprocess.PIPE
        )
        assert server.stdout is not None
        server.stdout.readline()
        bridges = [Bridge(python, n, workdir, flush, args) for n, python in enumerate(pythons)]
        try:
            for round_number in range(args.floods):
                first = round_number * args.flood % args.domains
                targets = [domain((first + n) % args.domains) for n in range(args.flood)]
                order = bridges if round_number % 2 == 0 else bridges[::-1]
                for bridge in order:
                    clear_marks(bridge.index)
                    times, codes, window, session = flood(bridge.port, targets, bridge.process.pid)
                    if codes != {253}:
                        raise SystemExit(f"{bridge.name}: replies {codes}")
                    bridge.windows.append(window)
                    bridge.sessions.append(session)
                    bridge.p50s.append(percentile(times, 0.5))
                    bridge.p99s.append(percentile(times, 0.99))
        finally:
            for bridge in bridges:
                bridge.stop()
            server.terminate()
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"{args.queued} indexed over {args.domains} domains, {args.floods} floods of "
            f"{args.flood} ETRN per bridge, {args.workers} worker(s) (load {load})"
        )
        for bridge in bridges:
            etrn = args.floods * args.flood
            window = [sum(cpu[n] for cpu in bridge.windows) * 1000 / etrn for n in (0, 1)]
            session = [sum(cpu[n] for cpu in bridge.sessions) * 1000 / etrn for n in (0, 1)]
            print(
                f"  {bridge.name}: CPU per ETRN window {window[0]:.3f} ms (loop {window[1]:.3f}),"
                f" per session {session[0]:.3f} ms (loop {session[1]:.3f});"
                f" p50 median {statistics.median(bridge.p50s) * 1000:.1f} ms,"
                f" p99 median {statistics.median(bridge.p99s) * 1000:.1f} ms"
                f" ({min(bridge.p99s) * 1000:.1f}-{max(bridge.p99s) * 1000:.1f})"
            )


if __name__ == "__main__":
    main()
