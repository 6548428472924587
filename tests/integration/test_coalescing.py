"""Coalescing and rate limits through the real listener (real loopback sockets, real runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncsmtp import etrn_session, write_counting_flush
from bridgekit import Bridge

CONCURRENT_ETRN = 200


def command_backend(tmp_path: Path, seconds: float = 0.5) -> tuple[dict[str, Any], Path]:
    runs = tmp_path / "runs.txt"
    script = write_counting_flush(tmp_path / "flush.sh", runs, seconds)
    return {"type": "command", "argv": [str(script), "{target}"], "timeout": 10}, runs


async def etrn_many(bridge: Bridge, argument: str, count: int) -> list[str]:
    sessions = [etrn_session(bridge.host, bridge.port, argument) for _ in range(count)]
    return [reply for reply, _ in await asyncio.gather(*sessions)]


async def test_concurrent_etrn_for_one_target_make_one_backend_run(
    tmp_path: Path, start_bridge: Callable[..., Bridge]
) -> None:
    backend, runs = command_backend(tmp_path)
    bridge = start_bridge(
        {
            "backend": backend,
            "limits": {"per_target": "1/60s", "per_client": "off"},
            # 200 customers at once, all from one loopback address here.
            "connections": {"max_sessions_per_client": CONCURRENT_ETRN},
        }
    )
    replies = await etrn_many(bridge, "customer.example", CONCURRENT_ETRN)

    assert runs.read_text().splitlines() == ["customer.example"]
    assert replies == ["250 2.0.0 OK, queuing for node customer.example started"] * len(replies)
    records = bridge.etrn_records()
    assert len(records) == CONCURRENT_ETRN
    assert [r["coalesced"] for r in records].count(False) == 1
    assert {(r["status"], r["reply"]) for r in records} == {("started", 250)}


async def test_etrn_within_cooldown_is_coalesced_and_after_it_runs_again(
    tmp_path: Path, start_bridge: Callable[..., Bridge]
) -> None:
    backend, runs = command_backend(tmp_path, seconds=0)
    bridge = start_bridge(
        {"backend": backend, "limits": {"per_target": "1/1s", "per_client": "off"}}
    )
    first = await etrn_many(bridge, "customer.example", 1)
    second = await etrn_many(bridge, "customer.example", 1)
    await asyncio.sleep(1.2)
    third = await etrn_many(bridge, "customer.example", 1)

    assert first == second == third
    assert len(runs.read_text().splitlines()) == 2
    assert [r["coalesced"] for r in bridge.etrn_records()] == [False, True, False]


async def test_client_over_its_rate_gets_459_rate_limited(
    start_bridge: Callable[..., Bridge],
) -> None:
    bridge = start_bridge({"limits": {"per_client": "3/60s"}})
    client = bridge.session()
    codes = [client.command(f"ETRN h{i}.customer.net").code for i in range(4)]
    over = client.command("ETRN customer.example")

    assert codes == [250, 250, 250, 459]
    assert over.text == "459 4.7.1 Node customer.example not allowed: rate limited"
    statuses = [r["status"] for r in bridge.etrn_records()]
    assert statuses == ["started"] * 3 + ["rate_limited"] * 2
