"""``workers: 2``: real worker processes share the port, the audit file and the signals."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bridgekit import Bridge, SmtpClient

SESSIONS = 400
CONCURRENCY = 16
WAIT = 10.0


def worker_pids(bridge: Bridge) -> set[int]:
    children = Path(f"/proc/{bridge.process.pid}/task/{bridge.process.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def audit_records(bridge: Bridge) -> list[dict[str, object]]:
    """Every line parsed on its own: a torn or interleaved line fails json.loads."""
    lines = bridge.audit_path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends in the middle of a record"
    return [json.loads(line) for line in lines[:-1]]


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def one_session(bridge: Bridge, number: int) -> tuple[int, str]:
    client = SmtpClient(bridge.host, bridge.port)
    try:
        assert client.ehlo(f"client{number}.test").code == 250
        code = client.command("ETRN customer.example").code
        assert client.command("QUIT").code == 221
    finally:
        client.close()
    return code, f"client{number}.test"


def test_two_workers_serve_audit_reload_and_stop(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"workers": 2})
    wait_for(lambda: len(bridge.log_lines) > 0 and len(worker_pids(bridge)) == 2)
    workers = worker_pids(bridge)
    wait_for(lambda: sum("ready, listening on" in line for line in bridge.log_lines) == 2)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(lambda n: one_session(bridge, n), range(SESSIONS)))
    assert all(code == 250 for code, _ in results)

    wait_for(lambda: len(bridge.etrn_records()) == SESSIONS)
    etrn = [r for r in audit_records(bridge) if r["event"] == "etrn"]
    assert sorted(str(r["helo"]) for r in etrn) == sorted(helo for _, helo in results)
    assert all(r["reply"] == 250 for r in etrn)
    # Session ids start with a random prefix per process: both workers served.
    prefixes = {str(r["session"])[:6] for r in etrn}
    assert len(prefixes) == 2

    bridge.send_signal(signal.SIGHUP)
    wait_for(lambda: sum(r["event"] == "reload" for r in audit_records(bridge)) == 2)
    reopened = [line for line in bridge.log_lines if "SIGHUP: audit file re-opened" in line]
    assert {int(line.split("[")[1].split("]")[0]) for line in reopened} == workers

    assert bridge.stop() == 0
    assert any("all workers stopped" in line for line in bridge.log_lines)
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the parent"


def test_a_worker_that_dies_stops_the_others(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"workers": 2})
    wait_for(lambda: len(worker_pids(bridge)) == 2)
    victim, survivor = sorted(worker_pids(bridge))
    os.kill(victim, signal.SIGKILL)
    assert bridge.process.wait(WAIT) == 1
    assert not os.path.exists(f"/proc/{survivor}")
    bridge.wait_for_log(rf"worker {victim} ended \(status -9\): stopping the others")
