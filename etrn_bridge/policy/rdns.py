"""Forward-confirmed reverse DNS: the host names a client address may be called by.

A PTR record is whatever the owner of the address block wants it to be, so a
name counts only when its forward lookup (A/AAAA) contains the client address
again. Lookups have a timeout and are cached for a bounded time in a bounded
cache; any DNS failure yields no name, so it can never allow anything.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from etrn_bridge.policy.index import client_address
from etrn_bridge.policy.limits import BoundedLru
from etrn_bridge.policy.model import canonical_hostname

log = logging.getLogger("etrn_bridge.rdns")

DEFAULT_TIMEOUT = 3.0  # seconds for the PTR and all forward lookups together
DEFAULT_TTL = 300.0  # the stdlib resolver does not tell the records' TTL: cap it here
NEGATIVE_TTL = 60.0  # failures are retried sooner
DEFAULT_CACHE_SIZE = 10_000
MAX_PTR_NAMES = 8  # a PTR set larger than this is abuse, not configuration


class Resolver(Protocol):
    """The DNS lookups FCrDNS needs; raise OSError (or time out) on failure."""

    async def reverse(self, address: str) -> Sequence[str]:
        """PTR names of an address."""
        ...

    async def forward(self, name: str) -> Sequence[str]:
        """A and AAAA addresses of a name, as text."""
        ...


class SystemResolver:
    """The C library's resolver (/etc/hosts, then DNS), run in the default executor."""

    async def reverse(self, address: str) -> Sequence[str]:
        loop = asyncio.get_running_loop()
        name, aliases, _ = await loop.run_in_executor(None, socket.gethostbyaddr, address)
        return [name, *aliases]

    async def forward(self, name: str) -> Sequence[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]


class ForwardConfirmedRdns:
    def __init__(
        self,
        resolver: Resolver | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver: Resolver = resolver or SystemResolver()
        self.timeout = timeout
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: BoundedLru[str, tuple[float, tuple[str, ...]]] = BoundedLru(cache_size)
        self._clock = clock

    async def verified_names(self, address: str) -> tuple[str, ...]:
        """Names whose PTR and A/AAAA records agree on ``address``; () on any failure."""
        key = str(client_address(address))
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            names = await asyncio.wait_for(self._confirm(key), self.timeout)
        except (TimeoutError, OSError, UnicodeError, ValueError) as exc:
            log.info("rdns: %s: lookup failed: %s", key, exc or type(exc).__name__)
            names = ()
        self._cache.put(key, (now + (self.ttl if names else self.negative_ttl), names))
        return names

    async def _confirm(self, address: str) -> tuple[str, ...]:
        wanted = client_address(address)
        ptr_names = await self.resolver.reverse(address)
        claimed = list(dict.fromkeys(canonical_hostname(n) for n in ptr_names))
        confirmed = []
        for name in claimed[:MAX_PTR_NAMES]:
            try:
                forward = await self.resolver.forward(name)
            except OSError:
                continue  # this name does not resolve; another PTR name may
            if any(_same_address(text, wanted) for text in forward):
                confirmed.append(name)
        return tuple(confirmed)


def _same_address(text: str, wanted: object) -> bool:
    try:
        return client_address(text.split("%", 1)[0]) == wanted
    except ValueError:
        return False
