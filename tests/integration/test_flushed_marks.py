"""Flushed ids marked in the queue index once per event-loop turn: the postfix
backend with a real SQLite index and a stand-in flush(8) on a real unix socket."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from etrn_bridge.backends.base import create_backend
from etrn_bridge.backends.mta import MtaBackend
from etrn_bridge.backends.postfix_flush import encode
from etrn_bridge.backends.reconcile import with_index
from etrn_bridge.queueindex.settings import IndexSettings
from etrn_bridge.queueindex.store import IndexedMessage, QueueIndex
from etrn_bridge.target import parse_target

DOMAINS = ("a.test", "b.test", "c.test")


async def flush_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode({"protocol": "queue_flush_protocol"}))
    await reader.readuntil(b"\0\0")
    writer.write(encode({"status": "0"}))
    await writer.drain()
    writer.close()


def indexed_backend(tmp_path: Path, socket: Path) -> tuple[MtaBackend, QueueIndex]:
    path = tmp_path / "index.sqlite"
    setup = QueueIndex(path)
    messages = [
        IndexedMessage(f"{domain[0].upper()}{n}", (f"u{n}@{domain}",), 100)
        for domain in DOMAINS
        for n in range(3)
    ]
    setup.reconcile(messages, time.time())
    backend = with_index(
        create_backend({"type": "postfix", "postqueue": "/bin/false", "flush_socket": str(socket)}),
        IndexSettings(path, 3600.0),
    )
    assert isinstance(backend, MtaBackend)
    return backend, setup


def writes(path: Path) -> int:
    """Messages marked flushed in the file, read through a connection of its own."""
    with sqlite3.connect(path) as db:
        return int(
            db.execute("SELECT count(*) FROM message WHERE flushed IS NOT NULL").fetchone()[0]
        )


async def test_concurrent_flushes_are_marked_together_and_never_counted_twice(
    tmp_path: Path,
) -> None:
    socket = tmp_path / "flush"
    server = await asyncio.start_unix_server(flush_service, str(socket))
    backend, setup = indexed_backend(tmp_path, socket)
    try:
        flushes = [asyncio.ensure_future(backend.flush(parse_target(d))) for d in DOMAINS]
        while not backend._marks or not backend._marks.pending:
            await asyncio.sleep(0)  # until the first flush has ended
        # Before the marks reach the file, the backend already leaves those ids out.
        assert writes(setup.path) == 0
        assert await backend.pending(parse_target("a.test")) == 0
        results = await asyncio.gather(*flushes)
        assert [r.pending for r in results] == [3, 3, 3]
        # Each flush returned once its ids were in the file: others see them.
        assert writes(setup.path) == 9
        assert setup.select(parse_target("c.test")) == []
        assert (await backend.flush(parse_target("b.test"))).pending == 0  # 251: nothing run
        assert not backend._marks.pending
    finally:
        server.close()
        await server.wait_closed()
        setup.close()
        assert backend.index is not None
        backend.index.close()


async def test_a_locked_index_costs_only_the_marks(tmp_path: Path) -> None:
    socket = tmp_path / "flush"
    server = await asyncio.start_unix_server(flush_service, str(socket))
    backend, setup = indexed_backend(tmp_path, socket)
    other = sqlite3.connect(setup.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a reconciliation holding the write lock
    try:
        result = await backend.flush(parse_target("a.test"))  # the mark gives up soon
        assert result.started and result.pending == 3
        assert backend._marks is not None and not backend._marks.pending
        other.execute("ROLLBACK")
        assert writes(setup.path) == 0  # not marked: counted again, never a failure
        assert (await backend.flush(parse_target("a.test"))).pending == 3
    finally:
        other.close()
        server.close()
        await server.wait_closed()
        setup.close()
        assert backend.index is not None
        backend.index.close()
