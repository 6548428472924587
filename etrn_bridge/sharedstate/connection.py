"""A redis-py asyncio client for the ``cluster.redis`` URL, tuned to fail fast.

redis-py (the ``redis`` package) is imported only when a cluster is configured:
a single host needs no Redis client at all (``pip install 'etrn-bridge[cluster]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from etrn_bridge.sharedstate.settings import SENTINEL_SCHEMES, parse_sentinel_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Seconds a Redis command or connect may take before Redis counts as unreachable
# (on_redis_failure applies): a partition must not hold an ETRN reply for long.
SOCKET_TIMEOUT = 1.0


class RedisMissing(OSError):
    """redis-py is not installed (serve says so and does not start)."""

    def __init__(self) -> None:
        super().__init__("cluster: needs redis-py (pip install 'etrn-bridge[cluster]')")


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis command raises when Redis cannot be reached or answers an error."""
    try:
        from redis.exceptions import RedisError  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise RedisMissing from None
    return (RedisError, OSError)


def connect(url: str) -> Redis:
    """A client; it connects on first use and reconnects by itself after a failure."""
    try:
        from redis.asyncio import Redis  # noqa: PLC0415 (optional extra)
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.asyncio.sentinel import Sentinel  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415
    except ImportError:
        raise RedisMissing from None
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        # One immediate retry: after a Redis restart the pooled connection is dead,
        # the retry opens a new one; more retries would only delay the fallback.
        "retry": Retry(NoBackoff(), 1),
    }
    scheme = urlsplit(url).scheme
    if scheme not in SENTINEL_SCHEMES:
        return Redis.from_url(url, **options)
    address = parse_sentinel_url(url)
    parts = urlsplit(url)
    auth = {"username": parts.username, "password": parts.password}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels),
        sentinel_kwargs={**options, **auth},
        ssl=scheme.startswith("rediss"),
        **options,
        **auth,
    )
    master: Redis = sentinel.master_for(address.service, db=address.db)
    return master
