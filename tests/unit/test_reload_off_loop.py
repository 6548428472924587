"""A reload builds the new policy in a worker thread: the event loop keeps
running while a big policy loads, and the swap happens in one step on the loop."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

from etrn_bridge.audit import AuditLog
from etrn_bridge.config import load_config
from etrn_bridge.request import Identity, Request, Status
from etrn_bridge.service import Service
from etrn_bridge.switching import BUSY_SWITCH_INTERVAL

ENTRIES = 2_000


def write_policy(path: Path, target: str, entries: int = ENTRIES) -> None:
    lines = ["policy:", "  clients:"]
    for index in range(entries):
        lines += [
            f"    - id: c{index}",
            f"      networks: ['10.{index // 256}.{index % 256}.0/24']",
            f"      targets: ['d{index}.example', '@e{index}.example']",
        ]
    lines += ["    - id: lo", "      networks: ['127.0.0.0/8']", f"      targets: ['{target}']"]
    path.write_text("\n".join(lines) + "\n")


async def allowed(service: Service, target: str) -> bool:
    outcome = await service.handle(Request(Identity("127.0.0.1"), target))
    return outcome.status is not Status.DENIED


async def test_the_loop_runs_while_a_big_policy_loads(tmp_path: Path) -> None:
    config_path = tmp_path / "etrn.yaml"
    write_policy(config_path, "old.example")
    config = load_config(config_path)
    service = Service.from_config(config, AuditLog(tmp_path / "audit.jsonl"))
    write_policy(config_path, "new.example")

    task = service.reload_in_background(config_path)
    answered_meanwhile = 0
    while not task.done():
        # Requests are answered with the old policy until the swap.
        assert await allowed(service, "old.example")
        answered_meanwhile += 1
        await asyncio.sleep(0.001)

    assert task.result() is True
    assert answered_meanwhile > 1  # a load on the loop would have answered none
    assert await allowed(service, "new.example")
    assert not await allowed(service, "old.example")


async def test_reloads_apply_in_the_order_they_were_started(tmp_path: Path) -> None:
    big, small = tmp_path / "big.yaml", tmp_path / "small.yaml"
    write_policy(big, "first.example")
    write_policy(small, "second.example", entries=10)
    audit_file = tmp_path / "audit.jsonl"
    service = Service.from_config(load_config(small), AuditLog(audit_file))

    # The small file would be built first; it must still be the one left in force.
    first = service.reload_in_background(big)
    second = service.reload_in_background(small)
    assert await asyncio.gather(first, second) == [True, True]

    assert await allowed(service, "second.example")
    assert not await allowed(service, "first.example")
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [r["file"] for r in records if r["event"] == "reload"] == [str(big), str(small)]


async def test_an_invalid_file_keeps_the_policy_in_force(tmp_path: Path) -> None:
    config_path = tmp_path / "etrn.yaml"
    write_policy(config_path, "kept.example", entries=10)
    audit_file = tmp_path / "audit.jsonl"
    service = Service.from_config(load_config(config_path), AuditLog(audit_file))
    config_path.write_text("policy: {clients: [{id: x, targets: ['bad..name']}]}\n")

    assert await service.reload_in_background(config_path) is False

    assert await allowed(service, "kept.example")
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    (record,) = [r for r in records if r["event"] == "reload"]
    assert record["ok"] is False and any("bad..name" in error for error in record["errors"])


async def test_the_build_and_the_release_run_with_a_short_switch_interval(
    tmp_path: Path,
) -> None:
    """While the worker builds (and the release thread frees), the loop waits for
    the GIL a short interval at each socket call; afterwards the default is back."""
    config_path = tmp_path / "etrn.yaml"
    write_policy(config_path, "old.example")
    service = Service.from_config(load_config(config_path), AuditLog(tmp_path / "audit.jsonl"))
    default = sys.getswitchinterval()

    task = service.reload_in_background(config_path)
    seen = set()
    while not task.done():
        seen.add(sys.getswitchinterval())
        await asyncio.sleep(0)
    assert await task
    for thread in threading.enumerate():
        if thread.name == "release":
            thread.join()

    assert BUSY_SWITCH_INTERVAL in seen
    assert sys.getswitchinterval() == default
