"""The interface the service holds: admit a client, run (or join) a target's flush."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from etrn_bridge.policy.coalesce import CoalescedResult
from etrn_bridge.policy.limits import Rate
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target

# This node's own flush of the target (the service's backend, guarded).
FlushCall = Callable[[], Awaitable[FlushResult]]
# A flush another node asked this one for: the service runs and audits it with
# the context it is given (origin node and session, flush id).
PeerFlush = Callable[[Target, Mapping[str, object]], Awaitable[FlushResult]]


class SharedStateUnavailable(Exception):
    """The shared state cannot be reached and the configuration says tempfail (458)."""

    def __init__(self, reason: str, audit: Mapping[str, object]) -> None:
        super().__init__(reason)
        self.audit = dict(audit)


class SharedState(Protocol):
    async def start(self, flush_for_peer: PeerFlush) -> None:
        """Begin serving other nodes (heartbeat, flush requests); in the serving loop."""

    async def close(self) -> None:
        """Stop serving other nodes and let go of connections."""

    async def admit(self, client: str, rate: Rate) -> bool:
        """Count one ETRN for ``client`` if ``rate`` allows it; False when it does not."""

    async def run(
        self,
        target: Target,
        cooldown: Rate | None,
        max_concurrent: int,
        flush: FlushCall,
        session: str,
    ) -> CoalescedResult:
        """Flush ``target`` (or join a flush of it running or just run), under
        ``cooldown`` and at most ``max_concurrent`` flushes at a time."""
