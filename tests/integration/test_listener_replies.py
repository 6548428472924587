"""251/252/253 over the wire: an in-process listener with a small real backend that counts.

The MTA backends report pending counts against real queues (tests/mta); here a
Backend implementation with a fixed queue shows the listener carries each
count to the right RFC 1985 reply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bridgekit import BASE_CONFIG, write_config

from etrn_bridge.audit import AuditLog
from etrn_bridge.config import ListenAddress, load_config
from etrn_bridge.frontends.listener import Listener
from etrn_bridge.frontends.sockets import bind_listeners
from etrn_bridge.request import FlushResult
from etrn_bridge.service import Service
from etrn_bridge.target import Target


class FixedQueueBackend:
    """A queue with a known number of messages per node; "flushing" reports the count."""

    name = "fixed-queue"

    def __init__(self, queue: dict[str, int | None], exact: bool = True) -> None:
        self.queue = queue
        self.exact = exact

    async def flush(self, target: Target) -> FlushResult:
        count = self.queue.get(target.name)
        return FlushResult(started=True, pending=count, pending_exact=self.exact)

    async def pending(self, target: Target) -> int | None:
        return self.queue.get(target.name)


async def etrn_over_smtp(backend: FixedQueueBackend, tmp_path: Path, argument: str) -> str:
    config = load_config(write_config(tmp_path, BASE_CONFIG))
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = Service(config.policy, backend, audit, config.limits)
    listener = Listener(config, service, passwords=None, tls_context=None)
    sockets = bind_listeners([ListenAddress("127.0.0.1", 0)])
    await listener.serve(sockets)
    try:
        reader, writer = await asyncio.open_connection(*sockets[0].getsockname()[:2])
        await reader.readline()
        writer.write(b"EHLO client.test\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        writer.write(f"ETRN {argument}\r\n".encode())
        reply = (await reader.readline()).decode().rstrip()
        writer.write(b"QUIT\r\n")
        await reader.readline()
        writer.close()
    finally:
        await listener.stop(grace=1)
        audit.close()
    return reply


@pytest.mark.parametrize(
    ("queue", "exact", "reply"),
    [
        (
            {"customer.example": 0},
            True,
            "251 2.0.0 OK, no messages waiting for node customer.example",
        ),
        (
            {"customer.example": 7},
            True,
            "253 2.0.0 OK, 7 pending messages for node customer.example started",
        ),
        (
            {"customer.example": 7},
            False,
            "252 2.0.0 OK, pending messages for node customer.example started",
        ),
        ({}, True, "250 2.0.0 OK, queuing for node customer.example started"),
    ],
)
async def test_pending_counts_reach_the_reply(
    tmp_path: Path, queue: dict[str, int | None], exact: bool, reply: str
) -> None:
    assert (
        await etrn_over_smtp(FixedQueueBackend(queue, exact), tmp_path, "customer.example") == reply
    )
