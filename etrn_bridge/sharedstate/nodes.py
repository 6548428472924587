"""Who is in the cluster: heartbeats with expiry, the live nodes, what doctor shows.

Each node writes ``hb:<node>`` (its own clock and Redis's, expiring after
HEARTBEAT_TTL) and its name in the ``nodes`` set scored by Redis's time. Every
time is Redis's own (``TIME`` inside the scripts), so the nodes' clocks never
decide who is alive; the difference of the two is the node's clock skew.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

KEY_PREFIX = "etrn-bridge:"
NODES_KEY = KEY_PREFIX + "nodes"
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
        HEARTBEAT_SCRIPT, 2, heartbeat_key(node), NODES_KEY, node, now_ms, ttl_ms, pid, SEEN_FOR_MS
    )


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
    return seen
