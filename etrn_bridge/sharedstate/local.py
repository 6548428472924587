"""Shared state kept in this process: one host, one worker (the default)."""

from __future__ import annotations

from etrn_bridge.policy.coalesce import CoalescedResult, FlushCoalescer
from etrn_bridge.policy.limits import DEFAULT_MAX_CONCURRENT_FLUSHES, Rate, SlidingWindow
from etrn_bridge.sharedstate.base import FlushCall, PeerFlush
from etrn_bridge.target import Target


class LocalState:
    """Per-client sliding windows and the flush coalescer of this process."""

    def __init__(self, max_concurrent: int = DEFAULT_MAX_CONCURRENT_FLUSHES) -> None:
        self.client_rates = SlidingWindow()
        self.coalescer = FlushCoalescer(max_concurrent)

    async def start(self, flush_for_peer: PeerFlush) -> None:
        """No other node can ask this one for anything."""

    async def close(self) -> None:
        """Nothing held."""

    async def admit(self, client: str, rate: Rate) -> bool:
        return self.client_rates.admit(client, rate)

    async def run(
        self,
        target: Target,
        cooldown: Rate | None,
        max_concurrent: int,
        flush: FlushCall,
        session: str,
    ) -> CoalescedResult:
        self.coalescer.resize(max_concurrent)
        return await self.coalescer.run(target, cooldown, flush)
