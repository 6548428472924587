"""ETRN-to-delivery time through the bridge vs each MTA's own flush, and pending() cost.

Needs root and the lab (``bash tests/mta/lab/all.sh install``). For each MTA:

1. latency: queue MESSAGES messages for customer.test (plus the substring
   traps), send ``ETRN customer.test`` to a running ``etrn-bridge serve``, and
   time until the last customer.test message is at the sink; then the same
   with the MTA's native path (Postfix's own ETRN on its smtpd, ``exim -Rf``,
   ``sendmail -qR@``). Median of ROUNDS rounds, and the ratio.
2. ``pending()`` with QUEUED messages in the queue (injected over SMTP on a few
   parallel connections): the cost of one exact count from the MTA's listing.

Prints figures, asserts nothing. Usage:
    python bench/mta_flush.py [--queued 10000] [--rounds 5] [--messages 5]
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mta"))

from mtalab import MTAS, LabMta, lab_env

from etrn_bridge.target import parse_target

LAB = Path(__file__).resolve().parents[1] / "tests" / "mta" / "lab"
TRAPS = ("user@mycustomer.test", "user@customer.test.evil", "customer.test@noflush.test")
INJECT_CONNECTIONS = 4
# Exim closes a connection after smtp_accept_max_per_connection (default 1000) messages.
MESSAGES_PER_CONNECTION = 500


def wait_count(mta: LabMta, count: int, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(r.endswith("@customer.test") for r in mta.received()) >= count:
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"{mta.name}: {count} messages not delivered")


def queue_round(mta: LabMta, messages: int) -> None:
    mta.reset()
    mta.inject(tuple(f"u{i}@customer.test" for i in range(messages)) + TRAPS)


def etrn(port: int, argument: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("ETRN", argument)
    return code


def start_bridge(mta: LabMta, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    options = ", ".join(f"{k}: {v}" for k, v in mta.backend_options.items())
    config = workdir / f"{mta.name}.yaml"
    config.write_text(
        f'listen: ["127.0.0.1:{port}"]\nbackend: {{{options}}}\n'
        # every round is a new flush of the same target: no coalescing window
        'limits: {per_target: "off", per_client: "off"}\n'
        "policy:\n  clients:\n    - id: bench\n      networks: [127.0.0.0/8]\n"
        '      targets: ["customer.test"]\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            smtplib.SMTP("127.0.0.1", port, timeout=1).quit()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bridge did not start")


def native(mta: LabMta, native_etrn_port: int) -> None:
    if mta.name == "postfix":
        etrn(native_etrn_port, "customer.test")
    elif mta.name == "exim":
        subprocess.run([mta.program, "-Rf", "customer.test"], check=True)  # waits for delivery
    else:
        subprocess.run([mta.program, "-qR@customer.test"], check=True)


def latency(mta: LabMta, bridge_port: int, native_port: int, rounds: int, messages: int) -> None:
    bridged, direct = [], []
    for _ in range(rounds):
        queue_round(mta, messages)
        t0 = time.monotonic()
        code = etrn(bridge_port, "customer.test")
        bridged.append(wait_count(mta, messages) - t0)
        assert code == 253, code
        queue_round(mta, messages)
        t0 = time.monotonic()
        native(mta, native_port)
        direct.append(wait_count(mta, messages) - t0)
    b, d = statistics.median(bridged), statistics.median(direct)
    print(
        f"{mta.name:8} ETRN -> last of {messages} at sink: bridge {b * 1000:7.1f} ms, "
        f"native {d * 1000:7.1f} ms, ratio {b / d:4.2f}"
    )


def inject_bulk(mta: LabMta, count: int) -> float:
    """count messages, alternating customer.test and other domains, over a few connections."""
    domains = ("customer.test", "mycustomer.test", "sub.customer.test", "noflush.test")

    def batch(first: int) -> None:
        body = b"Subject: bulk\r\n\r\nbulk\r\n"
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, local_hostname="client.test") as smtp:
            for i in range(first, min(first + MESSAGES_PER_CONNECTION, count)):
                smtp.sendmail("sender@client.test", [f"u{i}@{domains[i % 4]}"], body)

    t0 = time.monotonic()
    with ThreadPoolExecutor(INJECT_CONNECTIONS) as pool:
        list(pool.map(batch, range(0, count, MESSAGES_PER_CONNECTION)))
    return time.monotonic() - t0


def pending_cost(mta: LabMta, queued: int, rounds: int) -> None:
    mta.reset()
    injected = inject_bulk(mta, queued)
    mta.wait_queued(queued, timeout=600)
    backend = mta.backend()
    target = parse_target("customer.test")
    times, counts = [], set()
    for _ in range(rounds):
        t0 = time.monotonic()
        counts.add(asyncio.run(backend.pending(target)))
        times.append(time.monotonic() - t0)
    print(
        f"{mta.name:8} pending(customer.test) with {queued} queued: "
        f"{statistics.median(times) * 1000:7.1f} ms (count {sorted(counts)}; "
        f"injected in {injected:.1f} s, {queued / injected:.0f} msg/s)"
    )
    mta.script("clear-queue")


def postfix_flush_choice(mta: LabMta, rounds: int) -> None:
    """What the per-id fallback costs next to one postqueue -s (nothing queued)."""
    mta.reset()
    s, i = [], []
    for _ in range(rounds):
        t0 = time.monotonic()
        subprocess.run([mta.program, "-s", "customer.test"], check=True)
        s.append(time.monotonic() - t0)
        t0 = time.monotonic()
        subprocess.run([mta.program, "-i", "0123456789A"], check=True)
        i.append(time.monotonic() - t0)
    print(
        f"postfix  postqueue -s: {statistics.median(s) * 1000:.1f} ms per domain; "
        f"postqueue -i: {statistics.median(i) * 1000:.1f} ms per message"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--only", choices=MTAS, action="append")
    args = parser.parse_args()
    subprocess.run(["bash", str(LAB / "all.sh"), "configure"], check=True, capture_output=True)
    subprocess.run(["bash", str(LAB / "all.sh"), "start"], check=True, capture_output=True)
    mtas = {name: LabMta.from_env(name) for name in MTAS}
    native_port = int(lab_env("postfix")["POSTFIX_NATIVE_ETRN_PORT"])
    workdir = Path("/tmp/etrn-bridge-bench")
    workdir.mkdir(exist_ok=True)
    for offset, name in enumerate(args.only or MTAS):
        mta = mtas[name]
        bridge = start_bridge(mta, workdir, 2580 + offset)
        try:
            latency(mta, 2580 + offset, native_port, args.rounds, args.messages)
        finally:
            bridge.terminate()
            bridge.wait()
        if name == "postfix":
            postfix_flush_choice(mta, args.rounds)
        pending_cost(mta, args.queued, args.rounds)


if __name__ == "__main__":
    main()
