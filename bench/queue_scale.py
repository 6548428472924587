"""ETRN at queue scale on the lab's Postfix: the bridge with and without the queue index
against Postfix's own ETRN.

Needs root and the lab (``bash tests/mta/lab/all.sh install``); run it inside
``tests/mta/lab/netns-run.sh``. Steps:

1. Queue QUEUED deferred messages over DOMAINS domains (``dNNNN.customer.test``,
   one recipient each, round robin) over a few parallel SMTP connections, and
   wait until Postfix has deferred them all (the kit's ``defer_transports``).
2. Three floods of FLOOD concurrent ETRN, each for FLOOD different domains
   (so every flood moves mail that is still queued): Postfix's own ETRN (lab
   port POSTFIX_NATIVE_ETRN_PORT), the bridge with ``index:``, the bridge
   without. Reply time of each ETRN (command sent -> reply read, all sent at
   once behind a barrier): p50/p99; MTA listing runs on the request path (the
   audit's ``selected_from``: "listing" marks the request that started one).
3. ETRN-to-delivered for one domain (MESSAGES_PER_DOMAIN messages): bridge with
   the index vs Postfix's own ETRN, median of ROUNDS.

Prints figures, asserts nothing. Usage:
    python bench/queue_scale.py [--queued 20000] [--domains 2000] [--flood 100] [--rounds 5]
                                [--concurrency N] [--flush-socket]
    python bench/queue_scale.py --small      # 2,000 messages over 200 domains, flood 20
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mta"))

from mtalab import MTA_LAB, LabMta, lab_env

from etrn_bridge.queueindex.store import QueueIndex

LAB = Path(__file__).resolve().parents[1] / "tests" / "mta" / "lab"
WORKDIR = Path("/tmp/etrn-bridge-queue-scale")
INJECT_CONNECTIONS = 8
BRIDGE_PORT = 2590
# Every dNNNN.customer.test goes to the sink through the kit's deferred transport.
TRANSPORT_LINE = ".customer.test etrn-only:[127.0.0.1]:{sink}\n"


def domain(number: int) -> str:
    return f"d{number:04d}.customer.test"


def postfix_command(*argv: str) -> None:
    subprocess.run([str(MTA_LAB / "postfix" / "bin" / argv[0]), *argv[1:]], check=True)


def route_subdomains(mta: LabMta) -> None:
    transport = MTA_LAB / "postfix" / "etc" / "transport"
    line = TRANSPORT_LINE.format(sink=mta.sink_port)
    if line not in transport.read_text():
        with transport.open("a") as table:
            table.write(line)
    postfix_command("postfix", "reload")
    time.sleep(1)


def inject(mta: LabMta, queued: int, domains: int) -> float:
    body = b"Subject: queue scale\r\n\r\nqueued for a flush\r\n"

    def connection(first: int) -> None:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, local_hostname="client.test") as smtp:
            for n in range(first, queued, INJECT_CONNECTIONS):
                smtp.sendmail("sender@client.test", [f"u{n}@{domain(n % domains)}"], body)

    started = time.monotonic()
    with ThreadPoolExecutor(INJECT_CONNECTIONS) as pool:
        list(pool.map(connection, range(INJECT_CONNECTIONS)))
    return time.monotonic() - started


def deferred_count(mta: LabMta) -> int:
    out = subprocess.run([mta.program, "-j"], capture_output=True, check=True).stdout
    return sum(b'"queue_name": "deferred"' in line for line in out.splitlines())


def wait_deferred(mta: LabMta, count: int) -> float:
    started = time.monotonic()
    while True:
        if deferred_count(mta) >= count:
            return time.monotonic() - started
        time.sleep(2)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def flood(port: int, targets: list[str]) -> tuple[list[float], list[int]]:
    """All sessions connect and EHLO, then send ETRN together; per-ETRN reply time."""
    barrier = threading.Barrier(len(targets))

    def one(target: str) -> tuple[float, int]:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=600) as smtp:
            smtp.ehlo()
            barrier.wait()
            started = time.monotonic()
            code, _ = smtp.docmd("ETRN", target)
            return time.monotonic() - started, code

    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(one, targets))
    return [t for t, _ in results], [c for _, c in results]


class Bridge:
    """``etrn-bridge serve`` on the lab's Postfix, as production runs it: the
    postqueue binary itself (``-c`` selects the instance), no wrapper script."""

    def __init__(
        self,
        mta: LabMta,
        index: Path | None,
        name: str,
        concurrency: int | None,
        flush_socket: bool = False,
    ) -> None:
        postfix = MTA_LAB / "postfix"
        self.audit = WORKDIR / f"{name}-audit.jsonl"
        self.audit.write_text("")
        config = WORKDIR / f"{name}.yaml"
        index_line = f'index: {{file: "{index}", reconcile: "1h"}}\n' if index else ""
        slots = f", max_concurrent: {concurrency}" if concurrency else ""
        if flush_socket:
            slots += f', flush_socket: "{postfix}/spool/public/flush"'
        flushes = f", max_concurrent_flushes: {concurrency}" if concurrency else ""
        config.write_text(
            f'listen: ["127.0.0.1:{BRIDGE_PORT}"]\n'
            f'backend: {{type: postfix, postqueue: "{postfix}/root/usr/sbin/postqueue", '
            f'args: ["-c", "{postfix}/etc"]{slots}}}\n'
            f'audit: {{file: "{self.audit}"}}\n'
            f'limits: {{per_target: "off", per_client: "off"{flushes}}}\n'
            f"{index_line}"
            "policy:\n  clients:\n    - id: bench\n      networks: [127.0.0.0/8]\n"
            '      targets: ["@customer.test"]\n'
        )
        self.stderr = WORKDIR / f"{name}.stderr"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr.open("w"),
            # The unpacked binaries find their libraries here (the bridge passes it on).
            env={**os.environ, "LD_LIBRARY_PATH": f"{postfix}/root/usr/lib/postfix"},
        )
        for _ in range(600):
            try:
                smtplib.SMTP("127.0.0.1", BRIDGE_PORT, timeout=1).quit()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"bridge did not start: {self.stderr.read_text()}")

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def listings(self) -> int:
        """Listing runs on the request path: the audit says which request started one."""
        return sum(record.get("selected_from") == "listing" for record in self.records())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        for line in self.stderr.read_text().splitlines():
            if "queue index reconciled" in line:
                print("   ", line.split(": ", 2)[-1])


def wait_reconciled(path: Path) -> float:
    started = time.monotonic()
    index = QueueIndex(path)
    while index.last_reconciled() is None:
        time.sleep(0.1)
    rows = index.stats().rows
    index.close()
    print(
        f"  index: first reconciliation done after {time.monotonic() - started:.1f} s, {rows} rows"
    )
    return time.monotonic() - started


def report(name: str, times: list[float], codes: list[int], listings: int | str) -> float:
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    replies = {code: codes.count(code) for code in sorted(set(codes))}
    print(
        f"  {name:22} p50 {p50 * 1000:8.1f} ms  p99 {p99 * 1000:8.1f} ms  "
        f"max {max(times) * 1000:8.1f} ms  replies {replies}  MTA listings {listings}"
    )
    return p99


def sink_clear(mta: LabMta) -> None:
    for path in mta.sink_dir.glob("*.eml"):
        path.unlink(missing_ok=True)  # the sink renames files as it finishes them


def wait_delivered(mta: LabMta, name: str, count: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(r.endswith("@" + name) for r in mta.received()) >= count:
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"{count} messages for {name} not delivered")


def etrn_once(port: int, target: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        smtp.docmd("ETRN", target)


def to_delivered(mta: LabMta, port: int, name: str, count: int) -> float:
    sink_clear(mta)
    started = time.monotonic()
    etrn_once(port, name)
    return wait_delivered(mta, name, count) - started


def bench(args: argparse.Namespace) -> None:
    per_domain = args.queued // args.domains
    mta = LabMta.from_env("postfix")
    native_port = int(lab_env("postfix")["POSTFIX_NATIVE_ETRN_PORT"])
    route_subdomains(mta)
    mta.reset()
    print(
        f"Postfix lab, {args.queued} messages over {args.domains} domains "
        f"({per_domain} each), flood of {args.flood} ETRN for distinct domains, "
        f"bridge concurrency {args.concurrency or 'default (4)'}, "
        f"indexed bridge flushes with {'the flush socket' if args.flush_socket else 'postqueue -s'}"
    )
    injected = inject(mta, args.queued, args.domains)
    settled = wait_deferred(mta, args.queued)
    print(
        f"  injected over SMTP ({INJECT_CONNECTIONS} connections) in {injected:.1f} s "
        f"({args.queued / injected:.0f} msg/s); all deferred {settled:.1f} s later"
    )
    started = time.monotonic()
    deferred_count(mta)
    print(f"  one postqueue -j of the whole queue: {time.monotonic() - started:.2f} s")
    floods = [[domain(n) for n in range(k * args.flood, (k + 1) * args.flood)] for k in range(3)]
    native_p99 = report("Postfix's own ETRN", *flood(native_port, floods[0]), "-")

    index_file = WORKDIR / "index.sqlite"
    for leftover in WORKDIR.glob("index.sqlite*"):
        leftover.unlink()
    bridge = Bridge(mta, index_file, "indexed", args.concurrency, args.flush_socket)
    try:
        wait_reconciled(index_file)
        times, codes = flood(BRIDGE_PORT, floods[1])
        index_p99 = report("bridge, index", times, codes, bridge.listings())
        first = 3 * args.flood
        bridged = [
            to_delivered(mta, BRIDGE_PORT, domain(first + 2 * r), per_domain)
            for r in range(args.rounds)
        ]
        native = [
            to_delivered(mta, native_port, domain(first + 2 * r + 1), per_domain)
            for r in range(args.rounds)
        ]
    finally:
        bridge.stop()
    bridge = Bridge(mta, None, "listing", args.concurrency)
    try:
        times, codes = flood(BRIDGE_PORT, floods[2])
        listing_p99 = report("bridge, no index", times, codes, bridge.listings())
    finally:
        bridge.stop()
    print(
        f"  p99 ratio to Postfix's own: index {index_p99 / native_p99:.1f}x, "
        f"no index {listing_p99 / native_p99:.1f}x"
    )
    b, n = statistics.median(bridged), statistics.median(native)
    print(
        f"  ETRN -> last of {per_domain} delivered (median of {args.rounds}): "
        f"bridge with index {b * 1000:.1f} ms, Postfix's own {n * 1000:.1f} ms, ratio {b / n:.2f}"
    )
    started = time.monotonic()
    mta.script("clear-queue")
    print(f"  queue cleared in {time.monotonic() - started:.1f} s")


def run_on_lab(args: argparse.Namespace) -> None:
    """Postfix started with the subdomains routed; stopped and re-configured after,
    so no daemon outlives the network namespace the bench ran in."""
    subprocess.run(["bash", str(LAB / "all.sh"), "configure"], check=True, capture_output=True)
    subprocess.run(["bash", str(LAB / "postfix.sh"), "start"], check=True, capture_output=True)
    try:
        bench(args)
    finally:
        subprocess.run(["bash", str(LAB / "postfix.sh"), "stop"], check=False)
        subprocess.run(["bash", str(LAB / "postfix.sh"), "configure"], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=20_000)
    parser.add_argument("--domains", type=int, default=2_000)
    parser.add_argument("--flood", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--concurrency",
        type=int,
        help="backend.max_concurrent and limits.max_concurrent_flushes (default: the bridge's, 4)",
    )
    parser.add_argument("--small", action="store_true", help="2,000 messages, 200 domains")
    parser.add_argument(
        "--flush-socket",
        action="store_true",
        help="the indexed bridge asks flush(8) over its socket instead of running postqueue -s",
    )
    args = parser.parse_args()
    if args.small:
        args.queued, args.domains, args.flood = 2_000, 200, 20
    if args.domains < 3 * args.flood + 2 * args.rounds:
        parser.error("--domains must cover three floods and the delivery rounds")
    WORKDIR.mkdir(exist_ok=True)
    run_on_lab(args)


if __name__ == "__main__":
    main()
