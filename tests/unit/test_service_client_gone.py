"""The service audits each request once, whatever happens to its caller (issue 7.1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from etrn_bridge.audit import AuditLog
from etrn_bridge.backends.log import LogBackend
from etrn_bridge.config import parse_config
from etrn_bridge.request import FlushResult, Identity, Request
from etrn_bridge.service import Service
from etrn_bridge.target import Target

CONFIG = "policy: {clients: [{id: lo, networks: [127.0.0.0/8], targets: [a.example]}]}"


class SlowBackend(LogBackend):
    """Takes as long as its gate stays closed; counts its runs."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.runs = 0

    async def flush(self, target: Target) -> FlushResult:
        self.runs += 1
        await self.gate.wait()
        return FlushResult(started=True)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def service_with(tmp_path: Path, backend: SlowBackend) -> tuple[Service, Path]:
    policy = parse_config(CONFIG, tmp_path / "etrn.yaml").policy
    audit_file = tmp_path / "audit.jsonl"
    return Service(policy, backend, AuditLog(audit_file)), audit_file


async def test_cancelled_caller_leaves_the_flush_running_and_audited(tmp_path: Path) -> None:
    backend = SlowBackend()
    service, audit_file = service_with(tmp_path, backend)
    caller = asyncio.ensure_future(service.handle(Request(Identity("127.0.0.1"), "a.example")))
    await asyncio.sleep(0.01)
    caller.cancel()  # the client closed its connection
    await asyncio.sleep(0.01)
    assert backend.runs == 1 and records(audit_file) == []  # still running, not yet audited
    backend.gate.set()
    await service.drain()
    (record,) = records(audit_file)
    assert (record["reply"], record["client_gone"], record["cut"]) == (250, True, False)


async def test_drain_cuts_what_outlives_its_timeout_and_audits_it_as_cut(tmp_path: Path) -> None:
    backend = SlowBackend()
    service, audit_file = service_with(tmp_path, backend)
    caller = asyncio.ensure_future(service.handle(Request(Identity("127.0.0.1"), "a.example")))
    await asyncio.sleep(0.01)
    await service.drain(timeout=0.05)
    assert caller.cancelled()
    (record,) = records(audit_file)
    assert (record["target"], record["client_gone"], record["cut"]) == ("a.example", True, True)
    assert record["reply"] == 458


async def test_a_caller_that_waits_gets_one_record_without_client_gone(tmp_path: Path) -> None:
    backend = SlowBackend()
    backend.gate.set()
    service, audit_file = service_with(tmp_path, backend)
    await service.handle(Request(Identity("127.0.0.1"), "a.example"))
    await service.drain()
    (record,) = records(audit_file)
    assert (record["client_gone"], record["cut"]) == (False, False)
