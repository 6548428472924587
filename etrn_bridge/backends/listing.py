"""One MTA queue listing shared by every request that needs it (single flight).

Listing the queue reads every queue file: with 20,000 messages ``postqueue -j``
takes about a second. A flood of ETRN for N different domains needs the same
listing N times; here they share one run in flight, and a run that began at
most ``max_age`` seconds before the request arrived is reused, so the flood
costs O(1) listings even when its requests wait their turn for a flush slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Listed = TypeVar("Listed")


@dataclass(frozen=True, slots=True)
class _Run(Generic[Listed]):
    began: float  # monotonic
    task: asyncio.Future[Listed]


class SharedListing(Generic[Listed]):
    """Runs a listing per key at most once at a time; ``runs`` counts the runs started."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.runs = 0
        self._latest: dict[Hashable, _Run[Listed]] = {}

    async def get(
        self,
        key: Hashable,
        produce: Callable[[], Awaitable[Listed]],
        arrived: float | None = None,
    ) -> tuple[Listed, bool]:
        """The listing for ``key`` and whether it was shared (not started for this caller).

        A run still in flight is joined; a finished one is reused when it began
        at most ``max_age`` before ``arrived`` (when the request came; default:
        now) and did not fail. A caller that is cancelled does not cancel the
        run the others wait for.
        """
        now = time.monotonic()
        latest = self._latest.get(key)
        if latest is not None and self._usable(latest, now if arrived is None else arrived):
            return await asyncio.shield(latest.task), True
        run = _Run(now, asyncio.ensure_future(produce()))
        self._latest[key] = run
        self.runs += 1
        return await asyncio.shield(run.task), False

    def _usable(self, run: _Run[Listed], arrived: float) -> bool:
        if not run.task.done():
            return True
        if run.task.cancelled() or run.task.exception() is not None:
            return False  # a failed listing is retried by the next request, not replayed
        return run.began >= arrived - self.max_age
