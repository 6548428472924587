"""Rate windows, the bounded LRU, and flush coalescing (unit level; the listener test
tests/integration/test_coalescing.py proves it end to end)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from etrn_bridge.audit import AuditLog
from etrn_bridge.config import parse_config
from etrn_bridge.policy.coalesce import FlushCoalescer
from etrn_bridge.policy.limits import BoundedLru, Rate, SlidingWindow, parse_rate
from etrn_bridge.request import FlushResult, Identity, Request, Status
from etrn_bridge.service import Service


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1/60s", Rate(1, 60.0)),
        ("10/1m", Rate(10, 60.0)),
        ("3/500ms", Rate(3, 0.5)),
        ("2/1.5h", Rate(2, 5400.0)),
        ("off", None),
    ],
)
def test_parse_rate(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/60s", "1/60", "1/0s", "ten/60s", ""])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_sliding_window() -> None:
    now = [0.0]
    window = SlidingWindow(clock=lambda: now[0])
    rate = Rate(2, 10.0)
    assert window.admit("a", rate)
    assert window.admit("a", rate)
    assert not window.admit("a", rate)
    assert window.admit("b", rate)
    now[0] = 10.0
    assert window.admit("a", rate)


def test_lru_forgets_the_least_recently_used() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    assert len(lru) == 2


async def test_concurrent_requests_share_one_run() -> None:
    coalescer = FlushCoalescer(max_concurrent=4)
    runs = 0

    async def flush() -> FlushResult:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return FlushResult(started=True, pending=3)

    results = await asyncio.gather(*(coalescer.run("t", None, flush) for _ in range(50)))
    assert runs == 1
    assert [r.coalesced for r in results].count(False) == 1
    assert {r.result.pending for r in results} == {3}
    assert coalescer.running == 0


async def test_cooldown_coalesces_success_but_retries_failure() -> None:
    coalescer = FlushCoalescer(max_concurrent=1)
    outcomes = [FlushResult(started=False), FlushResult(started=True), FlushResult(started=False)]

    async def flush() -> FlushResult:
        return outcomes.pop(0)

    cooldown = Rate(1, 60.0)
    first = await coalescer.run("t", cooldown, flush)
    second = await coalescer.run("t", cooldown, flush)
    third = await coalescer.run("t", cooldown, flush)
    assert (first.result.started, first.coalesced) == (False, False)
    assert (second.result.started, second.coalesced) == (True, False)
    assert (third.result.started, third.coalesced) == (True, True)
    assert len(outcomes) == 1


async def test_global_cap_on_concurrent_runs() -> None:
    coalescer = FlushCoalescer(max_concurrent=2)
    active = peak = 0

    async def flush() -> FlushResult:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return FlushResult(started=True)

    await asyncio.gather(*(coalescer.run(f"t{i}", None, flush) for i in range(10)))
    assert peak == 2


async def test_cancelled_waiter_does_not_cancel_the_shared_run() -> None:
    coalescer = FlushCoalescer(max_concurrent=1)
    done = asyncio.Event()

    async def flush() -> FlushResult:
        await asyncio.sleep(0.05)
        done.set()
        return FlushResult(started=True)

    first = asyncio.ensure_future(coalescer.run("t", None, flush))
    await asyncio.sleep(0.01)
    first.cancel()
    second = await coalescer.run("t", None, flush)
    assert second.coalesced and done.is_set()


LIMITED = """
tls: {cert: cert.pem, key: key.pem, client_ca: ca.pem}
auth: {passwords_file: passwords}
limits: {per_target: "1/60s", per_client: "2/60s"}
policy:
  clients:
    - id: local
      networks: ["127.0.0.0/8"]
      targets: ["@example.org"]
    - id: generous
      networks: ["127.0.0.0/8"]
      users: [vip]
      targets: ["@vip.example"]
      limits: {per_client: "off", per_target: "off"}
"""


async def test_service_rate_limits_per_client_and_audits_it(tmp_path: Path) -> None:
    service = Service.from_config(
        parse_config(LIMITED, tmp_path / "etrn.yaml"), AuditLog(tmp_path / "audit.jsonl")
    )
    statuses = [
        (await service.handle(Request(Identity("127.0.0.1"), f"h{i}.example.org"))).status
        for i in range(3)
    ]
    assert statuses == [Status.STARTED, Status.STARTED, Status.RATE_LIMITED]
    other = await service.handle(Request(Identity("127.0.0.2"), "h0.example.org"))
    assert other.status is Status.STARTED and other.coalesced  # cool-down of h0
    vip = Identity("127.0.0.1", auth_user="vip")
    overridden = [await service.handle(Request(vip, "a.vip.example")) for _ in range(3)]
    assert [(o.status, o.coalesced) for o in overridden] == [(Status.STARTED, False)] * 3
