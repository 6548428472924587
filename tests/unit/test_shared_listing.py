"""The single-flight listing: concurrent requests share one run."""

from __future__ import annotations

import asyncio
import time

import pytest

from etrn_bridge.backends.listing import SharedListing


class Producer:
    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail

    async def __call__(self) -> list[int]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("listing failed")
        return [self.calls]


async def test_a_flood_shares_one_run_in_flight() -> None:
    listing: SharedListing[list[int]] = SharedListing(max_age=0.0)
    produce = Producer()
    results = await asyncio.gather(*(listing.get("-j", produce) for _ in range(100)))
    assert produce.calls == 1 and listing.runs == 1
    assert {tuple(found) for found, _ in results} == {(1,)}
    assert sum(not shared for _, shared in results) == 1  # one caller started it


async def test_different_keys_run_separately() -> None:
    listing: SharedListing[list[int]] = SharedListing(max_age=10.0)
    produce = Producer()
    await asyncio.gather(listing.get("-bp", produce), listing.get("-bp -qGacme", produce))
    assert produce.calls == 2


async def test_a_recent_run_is_reused_an_old_one_is_not() -> None:
    listing: SharedListing[list[int]] = SharedListing(max_age=0.2)
    produce = Producer(delay=0.0)
    assert await listing.get("-j", produce) == ([1], False)
    assert await listing.get("-j", produce) == ([1], True)
    await asyncio.sleep(0.25)
    assert await listing.get("-j", produce) == ([2], False)


async def test_a_run_that_began_after_the_request_arrived_is_fresh_enough() -> None:
    """A request that waited for a flush slot still shares the flood's listing."""
    listing: SharedListing[list[int]] = SharedListing(max_age=0.0)
    produce = Producer(delay=0.0)
    arrived = time.monotonic()
    await asyncio.sleep(0.05)
    assert await listing.get("-j", produce, arrived) == ([1], False)
    await asyncio.sleep(0.05)
    assert await listing.get("-j", produce, arrived) == ([1], True)  # began after it arrived
    assert await listing.get("-j", produce) == ([2], False)  # a request arriving now: too old


async def test_max_age_zero_shares_only_the_run_in_flight() -> None:
    listing: SharedListing[list[int]] = SharedListing(max_age=0.0)
    produce = Producer(delay=0.0)
    await listing.get("-j", produce)
    await asyncio.sleep(0.001)
    await listing.get("-j", produce)
    assert produce.calls == 2


async def test_a_failed_run_fails_its_waiters_and_is_not_replayed() -> None:
    listing: SharedListing[list[int]] = SharedListing(max_age=10.0)
    failing = Producer(fail=True)
    results = await asyncio.gather(
        *(listing.get("-j", failing) for _ in range(3)), return_exceptions=True
    )
    assert failing.calls == 1 and all(isinstance(r, RuntimeError) for r in results)
    assert await listing.get("-j", Producer(delay=0.0)) == ([1], False)


async def test_a_cancelled_caller_does_not_cancel_the_shared_run() -> None:
    listing: SharedListing[list[int]] = SharedListing(max_age=0.0)
    produce = Producer(delay=0.1)
    first = asyncio.ensure_future(listing.get("-j", produce))
    second = asyncio.ensure_future(listing.get("-j", produce))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == ([1], True)
    assert produce.calls == 1
