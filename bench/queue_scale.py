"""ETRN at queue scale on the lab's Postfix: the bridge with and without the queue index
against Postfix's own ETRN.

Needs root and the lab (``bash tests/mta/lab/all.sh install``); run it inside
``tests/mta/lab/netns-run.sh``. Steps:

1. Queue QUEUED deferred messages over DOMAINS domains (``dNNNN.customer.test``,
   one recipient each, round robin) over a few parallel SMTP connections, and
   wait until Postfix has deferred them all (the kit's ``defer_transports``).
2. Floods of FLOOD concurrent ETRN, each for FLOOD different domains (so every
   flood moves mail that is still queued): Postfix's own ETRN (lab port
   POSTFIX_NATIVE_ETRN_PORT), then the bridge with ``index:`` (and, with
   ``--compare PYTHON``, a second bridge run by another checkout's interpreter,
   in alternating order), PAIRS times; last the bridge without the index. Reply
   time of each ETRN: every session connects and says EHLO, then one client
   thread sends all the ETRN commands and reads the replies with a selector,
   timing each from its own send to its reply (no client thread per session
   competing for the CPU); p50/p99; MTA listing runs on the request path (the
   audit's ``selected_from``: "listing" marks the request that started one).
3. ETRN-to-delivered for one domain (messages per domain): bridge(s) with the
   index vs Postfix's own ETRN, in alternating order, each round after the
   queue manager has gone idle (nothing in incoming/ or active/), median of ROUNDS.

The load average is printed with each figure. Prints figures, asserts nothing. Usage:
    python bench/queue_scale.py [--queued 20000] [--domains 2000] [--flood 100] [--rounds 5]
                                [--concurrency N] [--flush-socket] [--pairs N]
                                [--compare /path/to/other/.venv/bin/python] [--no-listing]
                                [--keep-queue] [--reuse-queue] [--profile FILE] [--workers N]
                                [--compare-workers N] [--floor]
    python bench/queue_scale.py --small      # 2,000 messages over 200 domains, flood 20

Measured on the shared 2-core lab machine: with the same code in both slots the
first bridge (this checkout's) answered slower than the --compare one, so run an
A/B both ways round (this bench under the other checkout's interpreter, with
``--compare`` naming this one) and compare the bridge CPU per session, which the
load of other jobs moves much less than the reply times.

``--floor`` adds two floods of bench/stub_etrn.py to each round: a Python ETRN
server that only asks flush(8) (no policy, index or audit), on a bare asyncio
Protocol and on aiosmtpd: the floor of any Python front end on this machine,
and of one on the bridge's SMTP library.

``--keep-queue`` leaves the queue (and the sink) as they are at the end, and
``--reuse-queue`` starts from such a queue: no injection, and the floods take
only domains whose mail is all still deferred (a 100,000-message queue takes
minutes to build).
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mta"))

from etrnflood import cpu_seconds, etrn_flood, read_reply
from mtalab import MTA_LAB, LabMta, lab_env

from etrn_bridge.backends.postfix import parse_postqueue_json
from etrn_bridge.queueindex.store import QueueIndex

LAB = Path(__file__).resolve().parents[1] / "tests" / "mta" / "lab"
WORKDIR = Path("/tmp/etrn-bridge-queue-scale")
INJECT_CONNECTIONS = 8
BRIDGE_PORT = 2590
# Every dNNNN.customer.test goes to the sink through the kit's deferred transport.
TRANSPORT_LINE = ".customer.test etrn-only:[127.0.0.1]:{sink}\n"
SPOOL = MTA_LAB / "postfix" / "spool"
# The queue manager is idle when these stay empty this long (seconds).
IDLE_QUIET = 0.3


def domain(number: int) -> str:
    return f"d{number:04d}.customer.test"


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


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


def deferred_by_domain(mta: LabMta) -> Counter[str]:
    """Deferred messages per recipient domain (one postqueue -j, outside every timing)."""
    out = subprocess.run([mta.program, "-j"], capture_output=True, check=True).stdout
    counts: Counter[str] = Counter()
    for message in parse_postqueue_json(out):
        if message.queue == "deferred":
            counts.update({r.rpartition("@")[2].lower() for r in message.recipients})
    return counts


def deferred_count(mta: LabMta) -> int:
    out = subprocess.run([mta.program, "-j"], capture_output=True, check=True).stdout
    return sum(b'"queue_name": "deferred"' in line for line in out.splitlines())


def wait_deferred(mta: LabMta, count: int) -> float:
    started = time.monotonic()
    while True:
        if deferred_count(mta) >= count:
            return time.monotonic() - started
        time.sleep(2)


def queue_manager_state() -> tuple[int, frozenset[str]]:
    """(files in active/, names in incoming/)."""
    active = sum(1 for _ in (SPOOL / "active").iterdir())
    return active, frozenset(path.name for path in (SPOOL / "incoming").iterdir())


def wait_idle(timeout: float = 300) -> None:
    """Until qmgr has nothing in active/ and incoming/ stays unchanged for IDLE_QUIET
    seconds: the deliveries an earlier flood started are over (and write no more
    sink files). Files left in incoming/ by a stop are not waited for: qmgr takes
    them at its next scan (or wakeup), unchanged until then."""
    deadline = time.monotonic() + timeout
    quiet_since, seen = time.monotonic(), queue_manager_state()
    while time.monotonic() < deadline:
        state = queue_manager_state()
        if state[0] or state != seen:
            quiet_since, seen = time.monotonic(), state
        elif time.monotonic() - quiet_since >= IDLE_QUIET:
            return
        time.sleep(0.05)
    raise TimeoutError("the queue manager did not go idle")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine_busy() -> float:
    """CPU seconds all processes of the machine have run so far (every core; proc(5))."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])  # idle, iowait
    return (sum(int(field) for field in fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_by_command() -> Counter[str]:
    """CPU seconds so far of every process on the machine, summed by command name."""
    ticks: Counter[str] = Counter()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name.startswith("kworker/"):
            continue  # renamed as their work changes: no per-name account
        fields = text.rsplit(")", 1)[1].split()
        ticks[name] += int(fields[11]) + int(fields[12])
    return Counter({name: n / os.sysconf("SC_CLK_TCK") for name, n in ticks.items()})


class Window:
    """CPU used between the first ETRN sent and the last reply read: the bridge's
    (``cpu``, when given) and the whole machine's, in seconds."""

    def __init__(self, cpu: Callable[[], float] | None) -> None:
        self._cpu = cpu
        self.bridge = self.machine = 0.0
        self.seconds = 0.0
        self.by_command: Counter[str] = Counter()

    def start(self) -> None:
        self.by_command = cpu_by_command()
        self.bridge = self._cpu() if self._cpu else 0.0
        self.machine = machine_busy()
        self.seconds = time.monotonic()

    def stop(self) -> None:
        self.bridge = (self._cpu() if self._cpu else 0.0) - self.bridge
        self.machine = machine_busy() - self.machine
        self.seconds = time.monotonic() - self.seconds
        after = cpu_by_command()
        after.subtract(self.by_command)
        self.by_command = +after

    def describe(self, count: int) -> str:
        bridge = f"bridge {self.bridge * 1000 / count:.2f} ms/ETRN, " if self._cpu else ""
        return (
            f"ETRN window {self.seconds * 1000:.0f} ms: {bridge}"
            f"machine {self.machine / self.seconds:.2f} cores busy; top: "
            + ", ".join(f"{n} {t * 1000:.0f}" for n, t in self.by_command.most_common(6))
            + " ms"
        )


def flood(
    port: int, targets: list[str], window: Window | None = None
) -> tuple[list[float], list[int]]:
    """Every session connects and says EHLO; then all ETRN commands go out from one
    thread and a selector reads the replies: each timed from its own send to its reply.
    ``window`` measures the CPU spent from the first send to the last reply."""
    window = window or Window(None)
    sessions: list[socket.socket] = []
    try:
        for _ in targets:
            sock = socket.create_connection(("127.0.0.1", port), timeout=600)
            sessions.append(sock)
            read_reply(sock)
            sock.sendall(b"EHLO client.test\r\n")
            read_reply(sock)
        window.start()
        replies = etrn_flood(sessions, targets, timeout=600)
        window.stop()
        times = [replies[sock][0] for sock in sessions]
        codes = [int(replies[sock][1][:3]) for sock in sessions]
        for sock in sessions:
            sock.setblocking(True)
            sock.sendall(b"QUIT\r\n")
        return times, codes
    finally:
        for sock in sessions:
            sock.close()


class StubEtrn:
    """bench/stub_etrn.py: a Python ETRN server that only asks flush(8), the floor
    rows (``--floor``), on a bare Protocol or on aiosmtpd; flooded like a bridge."""

    def __init__(self, use_aiosmtpd: bool) -> None:
        self.name = "floor-aiosmtpd" if use_aiosmtpd else "floor"
        self.port = BRIDGE_PORT + 9 - use_aiosmtpd
        stub = str(Path(__file__).with_name("stub_etrn.py"))
        flush = str(MTA_LAB / "postfix" / "spool" / "public" / "flush")
        self.process = subprocess.Popen(
            [sys.executable, stub, str(self.port), flush, *(["--aiosmtpd"] * use_aiosmtpd)],
            stdout=subprocess.PIPE,
            cwd=WORKDIR,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the stub ETRN server did not start")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)[0]

    def listings(self) -> str:
        return "-"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


class Bridge:
    """``etrn-bridge serve`` on the lab's Postfix, as production runs it: the
    postqueue binary itself (``-c`` selects the instance), no wrapper script.
    ``python``: the interpreter (so the checkout) that runs it."""

    def __init__(
        self,
        mta: LabMta,
        index: Path | None,
        name: str,
        args: argparse.Namespace,
        *,
        python: str = sys.executable,
        port: int = BRIDGE_PORT,
        profile: str | None = None,
        workers: int | None = None,
    ) -> None:
        postfix = MTA_LAB / "postfix"
        self.name, self.port = name, port
        self.audit = WORKDIR / f"{name}-audit.jsonl"
        self.audit.write_text("")
        config = WORKDIR / f"{name}.yaml"
        index_line = f'index: {{file: "{index}", reconcile: "1h"}}\n' if index else ""
        concurrency = args.concurrency
        slots = f", max_concurrent: {concurrency}" if concurrency else ""
        if args.flush_socket and index:
            slots += f', flush_socket: "{postfix}/spool/public/flush"'
        flushes = f", max_concurrent_flushes: {concurrency}" if concurrency else ""
        config.write_text(
            f'listen: ["127.0.0.1:{port}"]\n'
            f'backend: {{type: postfix, postqueue: "{postfix}/root/usr/sbin/postqueue", '
            f'args: ["-c", "{postfix}/etc"]{slots}}}\n'
            f'audit: {{file: "{self.audit}"}}\n'
            f'limits: {{per_target: "off", per_client: "off"{flushes}}}\n'
            # The whole flood comes from one address: past the default cap (50) it gets 421.
            f"connections: {{max_sessions_per_client: {2 * args.flood}}}\n"
            f"workers: {workers or args.workers}\n"
            f"{index_line}"
            "policy:\n  clients:\n    - id: bench\n      networks: [127.0.0.0/8]\n"
            '      targets: ["@customer.test"]\n'
        )
        self.stderr = WORKDIR / f"{name}.stderr"
        profiler = ["-m", "cProfile", "-o", profile] if profile else []
        self.process = subprocess.Popen(
            [python, *profiler, "-m", "etrn_bridge", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr.open("w"),
            # Not the checkout the bench runs from: "-m" puts the working directory
            # first on sys.path, and each interpreter must import its own checkout.
            cwd=WORKDIR,
            # The unpacked binaries find their libraries here (the bridge passes it on).
            env={**os.environ, "LD_LIBRARY_PATH": f"{postfix}/root/usr/lib/postfix"},
        )
        for _ in range(600):
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=1).quit()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"bridge did not start: {self.stderr.read_text()}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)[0]

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def listings(self) -> int:
        """Listing runs on the request path: the audit says which request started one."""
        return sum(record.get("selected_from") == "listing" for record in self.records())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        for line in self.stderr.read_text().splitlines():
            if "queue index reconciled" in line:
                print("   ", self.name, line.split(": ", 2)[-1])


def wait_reconciled(path: Path) -> float:
    started = time.monotonic()
    index = QueueIndex(path)
    while index.last_reconciled() is None:
        time.sleep(0.1)
    rows = index.stats().rows
    index.close()
    print(
        f"  index {path.name}: first reconciliation done after "
        f"{time.monotonic() - started:.1f} s, {rows} rows"
    )
    return time.monotonic() - started


def report(
    name: str, times: list[float], codes: list[int], listings: int | str, cpu: float | None = None
) -> float:
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    replies = {code: codes.count(code) for code in sorted(set(codes))}
    per_session = "" if cpu is None else f"  server CPU {cpu * 1000 / len(times):.2f} ms/session"
    print(
        f"  {name:23} p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms  "
        f"max {max(times) * 1000:6.1f} ms  replies {replies}  MTA listings {listings}"
        f"{per_session}  ({load()})"
    )
    return p99


def bridge_flood(bridge: Bridge | StubEtrn, name: str, targets: list[str]) -> tuple[float, float]:
    """A flood through ``bridge``: (p99, its CPU seconds per session: connect, EHLO,
    ETRN, QUIT; read once the sessions have ended)."""
    before = bridge.cpu_seconds()
    window = Window(bridge.cpu_seconds)
    times, codes = flood(bridge.port, targets, window)
    time.sleep(0.5)
    cpu = bridge.cpu_seconds() - before
    p99 = report(name, times, codes, bridge.listings(), cpu)
    print(f"    {window.describe(len(targets))}")
    return p99, cpu / len(targets)


def sink_clear(mta: LabMta) -> None:
    for path in mta.sink_dir.glob("*.eml"):
        path.unlink(missing_ok=True)  # the sink renames files as it finishes them


def delivered_to(mta: LabMta, name: str) -> int:
    """Messages for ``name`` at the sink (only this round's: the sink was emptied)."""
    suffix = f"@{name}".encode()
    count = 0
    for path in mta.sink_dir.glob("*.eml"):
        if path.name.startswith("."):  # sink.py's file being written (renamed when done)
            continue
        envelope = path.read_bytes().split(b"\r\n", 2)[1]
        count += sum(rcpt.strip().rstrip(b">").endswith(suffix) for rcpt in envelope.split(b","))
    return count


def wait_delivered(mta: LabMta, name: str, count: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if delivered_to(mta, name) >= count:
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"{count} messages for {name} not delivered")


def etrn_once(port: int, target: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        smtp.docmd("ETRN", target)


def to_delivered(mta: LabMta, port: int, name: str, count: int) -> float:
    wait_idle()
    sink_clear(mta)
    started = time.monotonic()
    etrn_once(port, name)
    return wait_delivered(mta, name, count) - started


def fresh_domains(mta: LabMta, args: argparse.Namespace, per_domain: int) -> list[str]:
    """Domains whose mail is all still deferred, in order."""
    counts = deferred_by_domain(mta)
    return [domain(n) for n in range(args.domains) if counts[domain(n)] >= per_domain]


def prepare_queue(mta: LabMta, args: argparse.Namespace) -> None:
    if args.reuse_queue:
        mta.script("sink-start")
        print(f"  reusing the queue: {deferred_count(mta)} deferred")
        return
    mta.reset()
    injected = inject(mta, args.queued, args.domains)
    settled = wait_deferred(mta, args.queued)
    print(
        f"  injected over SMTP ({INJECT_CONNECTIONS} connections) in {injected:.1f} s "
        f"({args.queued / injected:.0f} msg/s); all deferred {settled:.1f} s later"
    )


def start_indexed(mta: LabMta, args: argparse.Namespace) -> list[Bridge]:
    """The indexed bridge(s): this checkout's, and --compare's on the next port."""
    variants = [("this", sys.executable, args.workers)]
    if args.compare:
        variants.append(("compare", args.compare, args.compare_workers or args.workers))
    bridges: list[Bridge] = []
    for number, (name, python, workers) in enumerate(variants):
        index_file = WORKDIR / f"index-{name}.sqlite"
        for leftover in WORKDIR.glob(f"index-{name}.sqlite*"):
            leftover.unlink()
        profile = args.profile if name == "this" else None
        bridge = Bridge(
            mta,
            index_file,
            name,
            args,
            python=python,
            port=BRIDGE_PORT + 1 + number,
            profile=profile,
            workers=workers,
        )
        bridges.append(bridge)
        wait_reconciled(index_file)
    return bridges


def bench(args: argparse.Namespace) -> None:
    per_domain = args.queued // args.domains
    mta = LabMta.from_env("postfix")
    native_port = int(lab_env("postfix")["POSTFIX_NATIVE_ETRN_PORT"])
    route_subdomains(mta)
    print(
        f"Postfix lab, {args.queued} messages over {args.domains} domains "
        f"({per_domain} each), flood of {args.flood} ETRN for distinct domains, "
        f"bridge concurrency {args.concurrency or 'default (4)'}, "
        f"indexed bridge flushes with {'the flush socket' if args.flush_socket else 'postqueue -s'}"
        f", {args.workers} worker(s)"
        f"{f' (--compare: {args.compare_workers})' if args.compare_workers else ''}"
        f", {args.pairs} round(s) of floods ({load()})"
    )
    prepare_queue(mta, args)
    started = time.monotonic()
    fresh = fresh_domains(mta, args, per_domain)
    print(f"  one postqueue -j of the whole queue: {time.monotonic() - started:.2f} s")
    variants = 2 if args.compare else 1
    floods_needed = args.pairs * (1 + variants + 2 * args.floor) + (not args.no_listing)
    needed = floods_needed * args.flood + args.rounds * (1 + variants)
    if len(fresh) < needed:
        raise SystemExit(f"only {len(fresh)} domains are still all deferred, {needed} needed")
    bridges = start_indexed(mta, args)
    floors = [StubEtrn(use_aiosmtpd) for use_aiosmtpd in (False, True)] if args.floor else []
    pool = iter(fresh)

    def take(count: int) -> list[str]:
        return [next(pool) for _ in range(count)]

    p99s: dict[str, list[float]] = {"native": []}
    delivered: dict[str, list[float]] = {"native": []}
    cpus: dict[str, list[float]] = {}
    for floor in floors:
        p99s[floor.name], cpus[floor.name] = [], []
    try:
        for bridge in bridges:
            p99s[bridge.name], delivered[bridge.name], cpus[bridge.name] = [], [], []
        for pair in range(args.pairs):
            order = bridges if pair % 2 == 0 else bridges[::-1]
            wait_idle()
            window = Window(None)
            p99s["native"].append(
                report("Postfix's own ETRN", *flood(native_port, take(args.flood), window), "-")
            )
            print(f"    {window.describe(args.flood)}")
            for floor in floors:
                wait_idle()
                p99, cpu = bridge_flood(floor, floor.name, take(args.flood))
                p99s[floor.name].append(p99)
                cpus[floor.name].append(cpu)
            for bridge in order:
                wait_idle()
                p99, cpu = bridge_flood(bridge, f"bridge, index ({bridge.name})", take(args.flood))
                p99s[bridge.name].append(p99)
                cpus[bridge.name].append(cpu)
        for r in range(args.rounds):
            ports = [("native", native_port)] + [(b.name, b.port) for b in bridges]
            for name, port in ports if r % 2 == 0 else ports[::-1]:
                delivered[name].append(to_delivered(mta, port, take(1)[0], per_domain))
    finally:
        for bridge in bridges:
            bridge.stop()
        for floor in floors:
            floor.stop()
    listing_p99 = None
    if not args.no_listing:
        wait_idle()
        bridge = Bridge(mta, None, "listing", args)
        try:
            listing_p99, _ = bridge_flood(bridge, "bridge, no index", take(args.flood))
        finally:
            bridge.stop()
    native_p99 = statistics.median(p99s["native"])
    for name, values in p99s.items():
        if name == "native":
            continue
        ratios = [b / n for b, n in zip(values, p99s["native"], strict=True)]
        kind = "no bridge" if name in {floor.name for floor in floors} else "index"
        print(
            f"  p99 ratio to Postfix's own, {kind} ({name}): "
            f"median {statistics.median(ratios):.2f}x "
            f"(per round {', '.join(f'{x:.2f}' for x in ratios)}); server CPU per session "
            f"median {statistics.median(cpus[name]) * 1000:.2f} ms "
            f"({', '.join(f'{x * 1000:.2f}' for x in cpus[name])})"
        )
    if listing_p99 is not None:
        print(f"  p99 ratio to Postfix's own, no index: {listing_p99 / native_p99:.1f}x")
    n = statistics.median(delivered["native"])
    for name, values in delivered.items():
        print(
            f"  ETRN -> last of {per_domain} delivered, {name}: "
            f"median {statistics.median(values) * 1000:.1f} ms"
            f" (rounds {', '.join(f'{v * 1000:.0f}' for v in values)} ms), ratio to native "
            f"{statistics.median(values) / n:.2f}"
        )
    if args.keep_queue:
        wait_idle()  # nothing left in active/ when Postfix stops
    else:
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
    parser.add_argument("--pairs", type=int, default=1, help="rounds of floods (native, bridges)")
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
    parser.add_argument(
        "--compare",
        metavar="PYTHON",
        help="also run an indexed bridge with this interpreter (another checkout's venv), "
        "interleaved with this one",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="the bridges' workers: (serving processes)"
    )
    parser.add_argument(
        "--compare-workers", type=int, help="workers of the --compare bridge (default: --workers)"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also flood bench/stub_etrn.py, a Python ETRN server that only asks flush(8) "
        "(on a bare Protocol, and on aiosmtpd)",
    )
    parser.add_argument("--no-listing", action="store_true", help="no flood without the index")
    parser.add_argument("--keep-queue", action="store_true", help="leave the queue at the end")
    parser.add_argument(
        "--reuse-queue", action="store_true", help="start from the queue a --keep-queue run left"
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile this checkout's bridge")
    args = parser.parse_args()
    if args.small:
        args.queued, args.domains, args.flood = 2_000, 200, 20
    WORKDIR.mkdir(exist_ok=True)
    run_on_lab(args)


if __name__ == "__main__":
    main()
