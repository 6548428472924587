"""The Redis shared state against a real redis-server, several nodes in one process.

Each :class:`RedisState` is one node; its flushes for the cluster are counted
by the ``flush_for_peer`` it is started with (the service's in real life).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest
import redis.asyncio
import trustme
from rediskit import RedisSentinel, RedisServer, free_port

from etrn_bridge.policy.coalesce import CoalescedResult
from etrn_bridge.policy.limits import Rate
from etrn_bridge.request import FlushResult
from etrn_bridge.sharedstate.base import SharedStateUnavailable
from etrn_bridge.sharedstate.nodes import flush_channel
from etrn_bridge.sharedstate.redisstate import RedisState
from etrn_bridge.sharedstate.settings import ClusterSettings
from etrn_bridge.target import Target, parse_target

TARGET = parse_target("customer.example")
MINUTE = Rate(1, 60.0)
StartNode = Callable[..., Awaitable["Node"]]


class Node:
    """One RedisState and the flushes it ran for the cluster."""

    def __init__(
        self,
        url: str,
        name: str,
        flush_seconds: float = 0.0,
        on_failure: str = "local",
        fanout_timeout: float = 2.0,
    ) -> None:
        settings = ClusterSettings(url, name, fanout_timeout, on_failure)
        self.state = RedisState(settings, max_concurrent=4)
        self.flushed: list[tuple[str, Mapping[str, object]]] = []
        self.local_flushes = 0
        self.flush_seconds = flush_seconds
        self.active: set[str] | None = None  # shared by the nodes of a test to see overlap
        self.most_active = 0

    async def flush_for_peer(self, target: Target, context: Mapping[str, object]) -> FlushResult:
        self.flushed.append((str(target), context))
        if self.active is not None:
            self.active.add(str(target))
            self.most_active = max(self.most_active, len(self.active))
        await asyncio.sleep(self.flush_seconds)
        if self.active is not None:
            self.active.discard(str(target))
        return FlushResult(started=True, pending=1, queue_ids=(f"Q{len(self.flushed)}",))

    async def local_flush(self) -> FlushResult:
        self.local_flushes += 1
        return FlushResult(started=True, pending=7)

    async def run(
        self, target: Target = TARGET, cooldown: Rate | None = MINUTE, slots: int = 4
    ) -> CoalescedResult:
        return await self.state.run(target, cooldown, slots, self.local_flush, "s1")


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[StartNode]:
    made: list[Node] = []

    async def start(name: str, **options: object) -> Node:
        node = Node(redis_server.url, name, **options)  # type: ignore[arg-type]
        await node.state.start(node.flush_for_peer)
        made.append(node)
        return node

    yield start
    for node in made:
        await node.state.close()


async def wait_subscribed(url: str, names: list[str]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        for _ in range(200):
            counts = dict(await client.pubsub_numsub(*(flush_channel(n) for n in names)))
            if all(counts.get(flush_channel(n).encode(), 0) > 0 for n in names):
                await asyncio.sleep(1.1)  # and a heartbeat written
                return
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    raise AssertionError("nodes not subscribed")


async def test_per_client_is_atomic_across_nodes(
    nodes: StartNode, redis_server: RedisServer
) -> None:
    one, two = await nodes("mx1"), await nodes("mx2")
    rate = Rate(10, 60.0)
    admitted = await asyncio.gather(
        *(node.state.admit("192.0.2.1", rate) for node in [one, two] * 50)
    )
    assert admitted.count(True) == 10
    assert await one.state.admit("192.0.2.2", rate)  # another client has its own window


async def test_flood_from_two_nodes_makes_one_flush_per_node(
    nodes: StartNode, redis_server: RedisServer
) -> None:
    one = await nodes("mx1", flush_seconds=0.2)
    two = await nodes("mx2", flush_seconds=0.2)
    await wait_subscribed(redis_server.url, ["mx1", "mx2"])
    results = await asyncio.gather(*(node.run() for node in [one, two] * 100))
    assert [len(one.flushed), len(two.flushed)] == [1, 1]
    assert sum(not r.coalesced for r in results) == 1
    assert {r.result.pending for r in results} == {2}  # one from each node
    # Inside the cool-down, later requests get the last result without a flush.
    later = await two.run()
    assert later.coalesced and later.result.pending == 2 and len(two.flushed) == 1
    (leader,) = [r for r in results if not r.coalesced]
    assert leader.audit["nodes_answered"] == ["mx1", "mx2"]
    origin = one.flushed[0][1]
    assert origin["flush_id"] == leader.audit["flush_id"]


async def test_max_concurrent_flushes_hold_across_nodes(
    nodes: StartNode, redis_server: RedisServer
) -> None:
    one = await nodes("mx1", flush_seconds=0.1)
    two = await nodes("mx2", flush_seconds=0.1)
    active: set[str] = set()
    one.active = two.active = active
    await wait_subscribed(redis_server.url, ["mx1", "mx2"])
    targets = [parse_target(f"c{n}.example") for n in range(6)]
    results = await asyncio.gather(
        *(node.run(target, None, 1) for node, target in zip([one, two] * 3, targets, strict=True))
    )
    assert all(r.result.started for r in results)
    assert len(one.flushed) == len(two.flushed) == 6
    assert max(one.most_active, two.most_active) == 1  # one target at a time, cluster-wide


async def test_no_slot_free_within_fanout_timeout_is_a_failure(
    nodes: StartNode, redis_server: RedisServer
) -> None:
    """max_concurrent_flushes 1: while mx1's fan-out holds the only slot, mx2 waits its
    fanout_timeout (0.5 s) for it, then gives up (458), flushing nothing."""
    one = await nodes("mx1", flush_seconds=5.0, fanout_timeout=3.0)
    two = await nodes("mx2", fanout_timeout=0.5)
    await wait_subscribed(redis_server.url, ["mx1", "mx2"])
    first = asyncio.create_task(one.run(parse_target("a.example"), None, 1))
    while not one.flushed:  # a.example's fan-out is out: it holds the slot
        await asyncio.sleep(0.01)
    second = await two.run(parse_target("b.example"), None, 1)
    assert not second.result.started
    assert second.result.detail == "no cluster flush slot free in time"
    assert [target for target, _ in one.flushed + two.flushed] == ["a.example", "a.example"]
    assert (await first).audit["nodes_missing"] == ["mx1"]  # still flushing at 3 s


async def test_a_failed_flush_opens_no_cooldown(
    nodes: StartNode, redis_server: RedisServer
) -> None:
    one = await nodes("mx1")
    await wait_subscribed(redis_server.url, ["mx1"])

    async def failing(target: Target, context: Mapping[str, object]) -> FlushResult:
        one.flushed.append((str(target), context))
        return FlushResult(started=False, detail="down")

    one.state._flush_for_peer = failing  # the MTA is down for a while
    assert not (await one.run()).result.started
    assert not (await one.run()).result.started
    assert len(one.flushed) == 2


async def test_hostile_messages_on_the_channel_are_dropped(
    nodes,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = await nodes("mx1")
    await wait_subscribed(redis_server.url, ["mx1"])
    client = redis.asyncio.Redis.from_url(redis_server.url)
    hostile = [
        b"\xff\x00garbage",
        b'{"id": "x", "target": "*", "origin_node": "a", "origin_session": "s"}',
        b'{"id": "x", "target": "Customer.Example", "origin_node": "a", "origin_session": "s"}',
        b'{"id": "x", "target": "a b", "origin_node": "a", "origin_session": "s"}',
        b"[1, 2]",
        b'{"id": "x", "target": "customer.example", "origin_node": "a", "origin_session": "s",'
        b' "reply_to": "elsewhere"}',
    ]
    with caplog.at_level(logging.WARNING, "etrn_bridge.cluster"):
        for raw in hostile:
            await client.publish(flush_channel("mx1"), raw)
        await client.aclose()
        result = await one.run()  # still serving
    assert result.result.pending == 1 and one.flushed == [("customer.example", one.flushed[0][1])]
    assert sum("flush request dropped" in r.message for r in caplog.records) == len(hostile)


async def test_redis_unreachable_local_fallback(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    node = Node(url, "mx1")
    await node.state.start(node.flush_for_peer)
    try:
        assert await node.state.admit("192.0.2.1", MINUTE)
        assert not await node.state.admit("192.0.2.1", MINUTE)  # this node's own window
        ran = await node.run()
        assert ran.audit == {"cluster_fallback": "local"}
        assert (ran.result.pending, node.local_flushes, node.flushed) == (7, 1, [])
        assert (await node.run()).coalesced  # this node's own cool-down
    finally:
        await node.state.close()


async def test_redis_unreachable_tempfail(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    node = Node(url, "mx1", on_failure="tempfail")
    await node.state.start(node.flush_for_peer)
    try:
        with pytest.raises(SharedStateUnavailable) as caught:
            await node.state.admit("192.0.2.1", MINUTE)
        assert caught.value.audit == {"cluster_fallback": "tempfail"}
        with pytest.raises(SharedStateUnavailable):
            await node.run()
        assert node.local_flushes == 0
    finally:
        await node.state.close()


async def test_reconnects_when_redis_returns(nodes: StartNode, redis_server: RedisServer) -> None:
    one = await nodes("mx1")
    await wait_subscribed(redis_server.url, ["mx1"])
    redis_server.kill()
    assert (await one.run(cooldown=None)).audit == {"cluster_fallback": "local"}
    redis_server.start()
    await wait_subscribed(redis_server.url, ["mx1"])
    ran = await one.run(cooldown=None)
    assert ran.audit["nodes_answered"] == ["mx1"] and len(one.flushed) == 1


async def test_through_sentinel(redis_server: RedisServer, tmp_path: Path) -> None:
    """redis+sentinel://: the master Sentinel names is the one used."""
    sentinel = RedisSentinel(tmp_path / "sentinel", redis_server, "etrnmaster").start()
    node = Node(sentinel.url, "mx1")
    try:
        await node.state.start(node.flush_for_peer)
        assert await node.state.admit("192.0.2.1", MINUTE)
        assert not await node.state.admit("192.0.2.1", MINUTE)
        ran = await node.run()
        assert ran.audit["nodes_answered"] == ["mx1"] and len(node.flushed) == 1
        direct = redis.asyncio.Redis.from_url(redis_server.url)
        assert await direct.exists("etrn-bridge:client:192.0.2.1")  # on the master
        await direct.aclose()
    finally:
        await node.state.close()
        sentinel.stop()


async def test_over_tls(tmp_path: Path) -> None:
    """rediss://: the server's certificate is verified (here against a test CA)."""
    ca = trustme.CA()
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    server = RedisServer(tmp_path / "redis", tls=(cert, key, ca_file)).start()
    node = Node(server.url, "mx1")
    untrusted = Node(server.url.partition("?")[0], "mx2")  # no CA: the system's
    try:
        await node.state.start(node.flush_for_peer)
        ran = await node.run()
        assert ran.audit["nodes_answered"] == ["mx1"] and len(node.flushed) == 1
        assert await untrusted.state.admit("192.0.2.1", MINUTE)  # its own window...
        assert not await untrusted.state.admit("192.0.2.1", MINUTE)
        assert (await untrusted.run()).audit == {"cluster_fallback": "local"}  # ...not Redis
    finally:
        await node.state.close()
        await untrusted.state.close()
        server.stop()
