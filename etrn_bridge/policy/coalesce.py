"""Flush coalescing and the global cap on concurrent backend runs.

A second ETRN for a target whose flush is still running, or that was flushed
successfully within its cool-down window, starts no new backend run: it gets
the result of the run that is running or just ran. A flood of 1,000 ETRN for
one domain therefore makes one backend run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace

from etrn_bridge.handoff import start_detached
from etrn_bridge.policy.limits import DEFAULT_STATE_CAPACITY, BoundedLru, Rate, SlidingWindow
from etrn_bridge.request import FlushResult


@dataclass(frozen=True, slots=True)
class CoalescedResult:
    result: FlushResult
    coalesced: bool
    # Fields for the request's audit record (shared state: nodes asked, fallback).
    audit: Mapping[str, object] = field(default_factory=dict)


class FlushCoalescer:
    def __init__(self, max_concurrent: int, capacity: int = DEFAULT_STATE_CAPACITY) -> None:
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        # Runs in progress; bounded by the requests waiting on them, so never evicted.
        self._running: dict[Hashable, asyncio.Future[FlushResult]] = {}
        self._recent_runs = SlidingWindow(capacity)
        self._last_result: BoundedLru[Hashable, FlushResult] = BoundedLru(capacity)

    def resize(self, max_concurrent: int) -> None:
        """A new cap (reload); runs holding a slot of the old one finish as they are."""
        if max_concurrent != self.max_concurrent:
            self._slots = asyncio.Semaphore(max_concurrent)
            self.max_concurrent = max_concurrent

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(
        self,
        key: Hashable,
        cooldown: Rate | None,
        flush: Callable[[], Awaitable[FlushResult]],
    ) -> CoalescedResult:
        running = self._running.get(key)
        if running is not None:
            # shield: a client that disconnects must not cancel everyone's flush.
            return CoalescedResult(_shared(await asyncio.shield(running)), coalesced=True)
        if cooldown is not None and self._recent_runs.full(key, cooldown):
            last = self._last_result.get(key)
            if last is not None:
                return CoalescedResult(_shared(last), coalesced=True)
        # Detached: a client that disconnects must not cancel everyone's flush.
        run, handed = start_detached(self._run_in_slot(flush))
        self._running[key] = run
        try:
            result = await handed
        finally:
            if run.done():
                self._forget_run(key, run, cooldown)
            else:
                run.add_done_callback(lambda done: self._forget_run(key, done, cooldown))
        return CoalescedResult(result, coalesced=False)

    def _forget_run(
        self, key: Hashable, run: asyncio.Future[FlushResult], cooldown: Rate | None
    ) -> None:
        if self._running.get(key) is run:
            del self._running[key]
        if run.cancelled() or run.exception() is not None:
            return
        result = run.result()
        # Only a flush that started opens a cool-down: after a failure the next ETRN retries.
        if cooldown is not None and result.started:
            self._recent_runs.record(key, cooldown)
            self._last_result.put(key, result)

    async def _run_in_slot(self, flush: Callable[[], Awaitable[FlushResult]]) -> FlushResult:
        slots = self._slots
        await slots.acquire()
        try:
            result = await flush()
        except BaseException:
            slots.release()
            raise
        if result.completion is None:
            slots.release()
        else:
            # The MTA still delivers after the reply (Exim -R): the slot is held until it ends.
            result.completion.add_done_callback(lambda _: slots.release())
        return result


def _shared(result: FlushResult) -> FlushResult:
    # The first request's completion is audited once, by the first request.
    return replace(result, completion=None) if result.completion is not None else result
