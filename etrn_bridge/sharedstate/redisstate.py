"""Shared state in Redis: limits, coalescing and flush slots across every node,
and the fan-out that flushes a target from every live node's queue.

Atomicity: every check-and-update is one Lua script (Redis runs a script alone,
and reads its clock with TIME inside it), so two nodes can never both pass a
limit that has one place left. Per-target coalescing takes a lease
(``run:<target>``): its holder leads the cluster flush, everyone else, on any
node, waits for the leader's result (``done:<flush id>``) or, inside the
cool-down, gets the last one (``last:<target>``). A flood for one target
therefore makes one flush per node.

Fan-out is Redis pub/sub, one channel per node: a flush request is worth
something only for ``fanout_timeout`` seconds, and PUBLISH says at once how
many subscribers got it, so a node that is gone is known without waiting. A
stream would replay requests to a node coming back long after its client had
its answer. The workers of one host share a node name: the first to claim a
request (SET NX) flushes, the others let it be. Reports come back on the
origin process's own reply channel, read by the same subscriber: no blocking
command whose answer a busy event loop could lose.

When Redis cannot be reached, ``on_redis_failure`` decides: ``local`` runs the
request through this process's own :class:`LocalState` (this node's queue, this
node's limits) and marks the audit record; ``tempfail`` answers 458. The client
reconnects by itself on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING

from etrn_bridge.handoff import start_detached
from etrn_bridge.policy.coalesce import CoalescedResult, FlushCoalescer
from etrn_bridge.policy.limits import DEFAULT_MAX_CONCURRENT_FLUSHES, Rate
from etrn_bridge.request import FlushResult
from etrn_bridge.sharedstate.base import FlushCall, PeerFlush, SharedStateUnavailable
from etrn_bridge.sharedstate.connection import SOCKET_TIMEOUT, connect, redis_errors
from etrn_bridge.sharedstate.fanout import (
    BadMessage,
    FlushRequest,
    Report,
    combine,
    decode_result,
    encode_result,
)
from etrn_bridge.sharedstate.local import LocalState
from etrn_bridge.sharedstate.nodes import (
    HEARTBEAT_INTERVAL,
    KEY_PREFIX,
    LIVE_KEY,
    NOW_MS,
    beat,
    flush_channel,
    leave,
)
from etrn_bridge.sharedstate.settings import ON_FAILURE_TEMPFAIL, ClusterSettings
from etrn_bridge.target import Target, TargetError, parse_target

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger("etrn_bridge.cluster")

# Count one event if fewer than ARGV[1] happened in the last ARGV[2] ms.
ADMIT_SCRIPT = (
    NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)
# Take a flush slot (max_concurrent_flushes over the cluster; a lease that
# expires, so a node that dies holding one does not keep it) and, with it,
# publish the flush request to every live node and this one. Returns
# {node, receivers, node, receivers, ...}, or false when no slot is free.
# KEYS slots, live nodes; ARGV holder, max slots, slot lease ms, request,
# channel prefix, this node.
LAUNCH = """
local function launch(slots, nodes_key, a)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if redis.call('ZCARD', slots) >= tonumber(a[2]) then return false end
  redis.call('ZADD', slots, now + tonumber(a[3]), a[1])
  local nodes = redis.call('ZRANGEBYSCORE', nodes_key, now, '+inf')
  local listed = false
  for _, node in ipairs(nodes) do if node == a[6] then listed = true end end
  if not listed then table.insert(nodes, a[6]) end
  local out = {}
  for _, node in ipairs(nodes) do
    table.insert(out, node)
    table.insert(out, redis.call('PUBLISH', a[5] .. node, a[4]))
  end
  return out
end
"""
LAUNCH_SCRIPT = (
    NOW_MS
    + LAUNCH
    + """
local out = launch(KEYS[1], KEYS[2], ARGV)
if out then return out end
return 0
"""
)
# KEYS run, recent, last, slots, live nodes; ARGV the six of LAUNCH, then the
# lease ms, cool-down count and window ms. A flush running -> {running, its
# id}; the cool-down full and a last result -> {recent, result}; else take the
# lease and launch -> {lead, node, receivers, ...} or {queued} (no slot yet).
BEGIN_SCRIPT = (
    NOW_MS
    + LAUNCH
    + """
local running = redis.call('GET', KEYS[1])
if running then return {'running', running} end
if tonumber(ARGV[8]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[9]))
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[8]) then
    local last = redis.call('GET', KEYS[3])
    if last then return {'recent', last} end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[7])
local out = launch(KEYS[4], KEYS[5], ARGV)
if not out then return {'queued'} end
table.insert(out, 1, 'lead')
return out
"""
)
# KEYS run, recent, last, done, slots. Publish the result for the waiters, give
# back the slot and the lease, and when the flush started open the cool-down
# (as the local coalescer does).
FINISH_SCRIPT = (
    NOW_MS
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[6])
if ARGV[3] == '1' and tonumber(ARGV[4]) > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]) - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
end
return 1
"""
)
SLOTS_KEY = KEY_PREFIX + "slots"
REPLY_PREFIX = KEY_PREFIX + "reply:"
# Waiting for a slot or for another node's result is polled at this pace (seconds).
POLL_INTERVAL = 0.02
# Seconds a flush's result (for late waiters) and its claims are kept.
RESULT_TTL = 60.0
# Waiting for the slot takes at most fanout_timeout, the fan-out another:
# the lease covers both and this margin.
LEASE_MARGIN = 5.0
# Pause before re-subscribing after Redis went away.
RESUBSCRIBE_DELAY = 0.5


class RedisState:
    def __init__(
        self, settings: ClusterSettings, max_concurrent: int = DEFAULT_MAX_CONCURRENT_FLUSHES
    ) -> None:
        self.settings = settings
        self.node = settings.node
        self.fallback = LocalState(max_concurrent)
        # This node's own flushes for the cluster: one per target at a time.
        self._node_flushes = FlushCoalescer(max_concurrent)
        self._joining: dict[str, asyncio.Future[CoalescedResult]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._flush_for_peer: PeerFlush | None = None
        self._reachable = True
        self._errors = redis_errors()
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        # Reports for the flushes this process leads, by flush id.
        self._reports: dict[str, asyncio.Queue[Report]] = {}
        self._reply_channel = ""  # this process's own, made in start (after fork)
        self._subscribed = asyncio.Event()

    # The client is made in the serving loop: workers fork after the service exists.
    @property
    def client(self) -> Redis:
        if self._client is None:
            self._client = connect(self.settings.redis)
            self._scripts = {
                name: self._client.register_script(text)
                for name, text in (
                    ("admit", ADMIT_SCRIPT),
                    ("begin", BEGIN_SCRIPT),
                    ("finish", FINISH_SCRIPT),
                    ("launch", LAUNCH_SCRIPT),
                )
            }
        return self._client

    def _script(self, name: str) -> AsyncScript:
        _ = self.client
        return self._scripts[name]

    async def start(self, flush_for_peer: PeerFlush) -> None:
        self._flush_for_peer = flush_for_peer
        self._reply_channel = f"{REPLY_PREFIX}{self.node}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._heartbeat()), loop.create_task(self._listen())]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        if self._loops:
            try:
                await leave(self.client, self.node)
            except self._errors as exc:  # its heartbeat expires anyway
                self._unreachable_quietly(exc)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # Limits -------------------------------------------------------------------

    async def admit(self, client: str, rate: Rate) -> bool:
        try:
            admitted = await self._script("admit")(
                keys=[f"{KEY_PREFIX}client:{client}"],
                args=[rate.count, _ms(rate.window), uuid.uuid4().hex],
            )
        except self._errors as exc:
            self._unreachable(exc)
            return await self.fallback.admit(client, rate)
        self._reached()
        return bool(admitted)

    # Coalescing and fan-out -----------------------------------------------------

    async def run(
        self,
        target: Target,
        cooldown: Rate | None,
        max_concurrent: int,
        flush: FlushCall,
        session: str,
    ) -> CoalescedResult:
        """One cluster flush per target at a time, shared by this process's requests."""
        key = str(target)
        joined = self._joining.get(key)
        if joined is not None:
            # shield: a client that disconnects must not cancel everyone's flush.
            return replace(await asyncio.shield(joined), coalesced=True)
        # Detached (handoff.py): a client that disconnects must not cancel everyone's flush.
        run, handed = start_detached(self._run(target, cooldown, max_concurrent, flush, session))
        self._joining[key] = run
        try:
            return await handed
        finally:
            # Forgotten before its caller goes on: the next request starts a new flush.
            if run.done():
                self._forget_join(key, run)
            else:  # the caller left first
                run.add_done_callback(lambda done: self._forget_join(key, done))

    def _forget_join(self, key: str, run: asyncio.Future[CoalescedResult]) -> None:
        if self._joining.get(key) is run:
            del self._joining[key]

    async def _run(
        self,
        target: Target,
        cooldown: Rate | None,
        max_concurrent: int,
        flush: FlushCall,
        session: str,
    ) -> CoalescedResult:
        self._node_flushes.resize(max_concurrent)
        try:
            ran = await self._coordinate(target, cooldown, max_concurrent, session)
        except self._errors as exc:
            self._unreachable(exc)
            ran = await self.fallback.run(target, cooldown, max_concurrent, flush, session)
            return replace(ran, audit={**ran.audit, "cluster_fallback": "local"})
        self._reached()
        return ran

    async def _coordinate(
        self, target: Target, cooldown: Rate | None, max_concurrent: int, session: str
    ) -> CoalescedResult:
        timeout = self.settings.fanout_timeout
        await self._wait_subscribed()
        for _ in range(2):  # a second look when the node leading it vanished
            flush_id = f"{self.node}.{uuid.uuid4().hex[:16]}"
            launch = self._launch_args(flush_id, target, max_concurrent, session)
            self._reports[flush_id] = asyncio.Queue()
            try:
                verdict, *value = await self._script("begin")(
                    keys=[*_target_keys(target), SLOTS_KEY, LIVE_KEY],
                    args=[
                        *launch,
                        _ms(2 * timeout + LEASE_MARGIN),
                        cooldown.count if cooldown else 0,
                        _ms(cooldown.window) if cooldown else 0,
                    ],
                )
                if verdict == b"lead":
                    return await self._lead(target, flush_id, cooldown, value)
                if verdict == b"queued":
                    return await self._lead_when_slot_free(target, flush_id, cooldown, launch)
            finally:
                del self._reports[flush_id]
            if verdict == b"recent":
                return _joined(value[0])
            done = await self._await_result(value[0].decode(), target, 2 * timeout + 1.0)
            if done is not None:
                return done
        result = FlushResult(started=True, detail="a flush of this target is running elsewhere")
        return CoalescedResult(result, coalesced=True, audit={"cluster_wait": "timeout"})

    def _launch_args(
        self, flush_id: str, target: Target, max_concurrent: int, session: str
    ) -> list[str | int]:
        request = FlushRequest(
            flush_id, str(target), self.node, session, self._reply_channel
        ).encode()
        slot_lease = _ms(2 * self.settings.fanout_timeout + LEASE_MARGIN)
        return [flush_id, max_concurrent, slot_lease, request, flush_channel(""), self.node]

    async def _await_result(
        self, flush_id: str, target: Target, timeout: float
    ) -> CoalescedResult | None:
        """The leader's result; None when its lease went without one (it vanished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(_done_key(flush_id))
                pipe.get(_target_keys(target)[0])
                done, holder = await pipe.execute()
            if done is not None:
                return _joined(done)
            if holder is None or holder.decode() != flush_id:
                return None
            await asyncio.sleep(POLL_INTERVAL)
        result = FlushResult(started=True, detail="a flush of this target is running elsewhere")
        return CoalescedResult(
            result, coalesced=True, audit={"flush_id": flush_id, "cluster_wait": "timeout"}
        )

    async def _lead_when_slot_free(
        self, target: Target, flush_id: str, cooldown: Rate | None, launch: list[str | int]
    ) -> CoalescedResult:
        """Holding the lease, wait (at most fanout_timeout) for a flush slot."""
        deadline = time.monotonic() + self.settings.fanout_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            published = await self._script("launch")(keys=[SLOTS_KEY, LIVE_KEY], args=launch)
            if published:
                return await self._lead(target, flush_id, cooldown, published)
        result = FlushResult(started=False, detail="no cluster flush slot free in time")
        await self._finish(target, flush_id, result, cooldown)
        return CoalescedResult(result, coalesced=False, audit={"flush_id": flush_id})

    async def _lead(
        self, target: Target, flush_id: str, cooldown: Rate | None, published: list[bytes | int]
    ) -> CoalescedResult:
        """The request is out (``published``: node, receivers, ...): collect the reports.
        From here on some node may be flushing: an error is no reason to flush again."""
        receivers = {
            bytes(node).decode(): int(count)
            for node, count in zip(published[::2], published[1::2], strict=True)
        }
        nodes = sorted(receivers)
        asked = [node for node in nodes if receivers[node]]
        reports = await self._collect(flush_id, asked)
        result = combine(nodes, reports)
        audit: dict[str, object] = {
            "flush_id": flush_id,
            "nodes_asked": nodes,
            "nodes_answered": sorted(reports),
            "nodes_missing": [node for node in nodes if node not in reports],
        }
        if not await self._finish(target, flush_id, result, cooldown):
            audit["cluster_error"] = "result not stored"
        return CoalescedResult(result, coalesced=False, audit=audit)

    async def _collect(self, flush_id: str, asked: list[str]) -> dict[str, FlushResult]:
        """The reports of ``asked`` that arrive within fanout_timeout."""
        queue = self._reports[flush_id]
        reports: dict[str, FlushResult] = {}
        deadline = time.monotonic() + self.settings.fanout_timeout
        while len(reports) < len(asked):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                report = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
            if report.node in asked:
                reports[report.node] = report.result
        return reports

    async def _wait_subscribed(self) -> None:
        """Reports come back through the subscription: no lead without it."""
        if self._subscribed.is_set():
            return
        try:
            await asyncio.wait_for(self._subscribed.wait(), SOCKET_TIMEOUT)
        except TimeoutError:
            raise ConnectionError("not subscribed to Redis") from None

    async def _finish(
        self, target: Target, flush_id: str, result: FlushResult, cooldown: Rate | None
    ) -> bool:
        try:
            await self._script("finish")(
                keys=[*_target_keys(target), _done_key(flush_id), SLOTS_KEY],
                args=[
                    flush_id,
                    encode_result(result, node=self.node, flush_id=flush_id),
                    1 if result.started else 0,
                    cooldown.count if cooldown else 0,
                    _ms(cooldown.window) if cooldown else 0,
                    _ms(RESULT_TTL),
                ],
            )
        except self._errors as exc:
            self._unreachable_quietly(exc)
            return False
        return True

    # Serving the other nodes ------------------------------------------------------

    async def _heartbeat(self) -> None:
        pid = os.getpid()
        while True:
            try:
                await beat(self.client, self.node, pid)
            except self._errors as exc:
                self._unreachable_quietly(exc)
            except Exception:  # a bug must not end the heartbeats: the node would vanish
                log.exception("cluster: heartbeat failed")
            else:
                self._reached()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _listen(self) -> None:
        requests = flush_channel(self.node).encode()
        channels = (requests.decode(), self._reply_channel)
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                confirmed = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        confirmed += 1
                        if confirmed == len(channels):
                            self._subscribed.set()
                    elif message["type"] == "message" and message["channel"] == requests:
                        self._spawn(self._answer(message["data"]))
                    elif message["type"] == "message":
                        self._take_report(message["data"])
            except self._errors as exc:
                self._unreachable_quietly(exc)
            except Exception:  # a bug must not end the subscription: subscribe again
                log.exception("cluster: subscriber failed")
            finally:
                self._subscribed.clear()
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except self._errors as exc:
                    self._unreachable_quietly(exc)
            await asyncio.sleep(RESUBSCRIBE_DELAY)

    def _take_report(self, raw: bytes) -> None:
        try:
            report = decode_result(raw)
        except BadMessage as exc:
            log.warning("cluster: report dropped: %s", exc)
            return
        queue = self._reports.get(report.flush_id or "")
        if queue is not None:  # else too late: that flush has been answered
            queue.put_nowait(report)

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, raw: bytes) -> None:
        """A flush request from a node (this one included): flush, audit, report."""
        try:
            request = FlushRequest.decode(raw)
            target = parse_target(request.target)
            if str(target) != request.target:
                raise BadMessage(f"target {request.target!r} is not in canonical form")
            if not request.reply_to.startswith(REPLY_PREFIX):
                raise BadMessage(f"reply channel {request.reply_to!r} is not a bridge's")
        except (BadMessage, TargetError) as exc:
            log.warning("cluster: flush request dropped: %s", exc)
            return
        flush_for_peer = self._flush_for_peer
        if flush_for_peer is None:
            return
        try:
            claim = f"{KEY_PREFIX}claim:{request.flush_id}:{self.node}"
            if not await self.client.set(claim, os.getpid(), nx=True, px=_ms(RESULT_TTL)):
                return  # another worker of this node has it
        except self._errors as exc:
            self._unreachable_quietly(exc)
            return
        context = {
            "node": self.node,
            "flush_id": request.flush_id,
            "origin_node": request.origin_node,
            "origin_session": request.origin_session,
        }
        ran = await self._node_flushes.run(target, None, lambda: flush_for_peer(target, context))
        report = encode_result(ran.result, node=self.node, flush_id=request.flush_id)
        try:
            await self.client.publish(request.reply_to, report)
        except self._errors as exc:
            self._unreachable_quietly(exc)

    # Reachability -------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> None:
        """Log the outage once; with tempfail, refuse the request (458)."""
        tempfail = self.settings.on_redis_failure == ON_FAILURE_TEMPFAIL
        if self._reachable:
            self._reachable = False
            then = "answering 458" if tempfail else "flushing this node only, with its own limits"
            log.warning("cluster: Redis unreachable (%s): %s until it is back", exc, then)
        if tempfail:
            raise SharedStateUnavailable(
                "cluster state unreachable", {"cluster_fallback": ON_FAILURE_TEMPFAIL}
            ) from exc

    def _unreachable_quietly(self, exc: BaseException) -> None:
        if self._reachable:
            self._reachable = False
            log.warning("cluster: Redis unreachable (%s)", exc)

    def _reached(self) -> None:
        if not self._reachable:
            self._reachable = True
            log.warning("cluster: Redis reachable again: limits and flushes are shared")


def _target_keys(target: Target) -> list[str]:
    name = str(target)
    return [f"{KEY_PREFIX}run:{name}", f"{KEY_PREFIX}recent:{name}", f"{KEY_PREFIX}last:{name}"]


def _done_key(flush_id: str) -> str:
    return f"{KEY_PREFIX}done:{flush_id}"


def _joined(raw: bytes) -> CoalescedResult:
    """Another request's cluster flush result, for a request that joined it."""
    try:
        report = decode_result(raw)
    except BadMessage as exc:
        log.warning("cluster: stored flush result unreadable: %s", exc)
        result = FlushResult(started=True, detail="stored result unreadable")
        return CoalescedResult(result, coalesced=True)
    audit = {"flush_id": report.flush_id, "flush_origin": report.node}
    return CoalescedResult(report.result, coalesced=True, audit=audit)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
