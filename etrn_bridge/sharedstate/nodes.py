"""Who is in the cluster: heartbeats with expiry, the live nodes, what doctor shows.

Each node writes ``hb:<node>`` (its own clock and Redis's, expiring after
HEARTBEAT_TTL), its name in ``live`` scored by when that expires, and in
``nodes`` (every node seen, for doctor) scored by Redis's time. Every time is
Redis's own (``TIME`` inside the scripts), so the nodes' clocks never decide
who is alive; the difference of the two is the node's clock skew. A node that
stops leaves ``live`` at once; one that dies drops out after HEARTBEAT_TTL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

KEY_PREFIX = "etrn-bridge:"
NODES_KEY = KEY_PREFIX + "nodes"
LIVE_KEY = KEY_PREFIX + "live"
HEARTBEAT_INTERVAL = 1.0
# A node that missed this many seconds of heartbeats is not asked to flush.
HEARTBEAT_TTL = 3.0
# Nodes that stopped are still shown by doctor for a day.
SEEN_FOR_MS = 86_400_000

NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

HEARTBEAT_SCRIPT = (
    NOW_MS
    + """
redis.call('HSET', KEYS[1], 'node_ms', ARGV[2], 'redis_ms', now, 'pid', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return now
"""
)


def heartbeat_key(node: str) -> str:
    return f"{KEY_PREFIX}hb:{node}"


def flush_channel(node: str) -> str:
    return f"{KEY_PREFIX}flush:{node}"


async def beat(client: Redis, node: str, pid: int) -> None:
    ttl_ms = int(HEARTBEAT_TTL * 1000)
    now_ms = int(time.time() * 1000)
    await client.eval(
        HEARTBEAT_SCRIPT,
        3,
        heartbeat_key(node),
        NODES_KEY,
        LIVE_KEY,
        node,
        now_ms,
        ttl_ms,
        pid,
        SEEN_FOR_MS,
    )


async def leave(client: Redis, node: str) -> None:
    """A node that stops is not asked to flush any more (its last heartbeat stays)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.zrem(LIVE_KEY, node)
        pipe.delete(heartbeat_key(node))
        await pipe.execute()


@dataclass(frozen=True, slots=True)
class NodeSeen:
    node: str
    last_heartbeat: float  # seconds ago, by Redis's clock
    alive: bool
    skew: float | None  # the node's clock minus Redis's, seconds (None: heartbeat expired)
    pid: int | None


async def nodes_seen(client: Redis) -> list[NodeSeen]:
    seconds, micros = await client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    seen = []
    members: Any = await client.zrange(NODES_KEY, 0, -1, withscores=True)
    for raw, score in members:
        node = raw.decode("utf-8", "replace")
        fields = await client.hgetall(heartbeat_key(node))
        node_ms, redis_ms, pid = (fields.get(key) for key in (b"node_ms", b"redis_ms", b"pid"))
        skew = None
        if node_ms is not None and redis_ms is not None:
            skew = (int(node_ms) - int(redis_ms)) / 1000
        seen.append(
            NodeSeen(
                node,
                (now_ms - float(score)) / 1000,
                bool(fields),
                skew,
                int(pid) if pid is not None else None,
            )
        )
    return sorted(seen, key=lambda found: found.node)
