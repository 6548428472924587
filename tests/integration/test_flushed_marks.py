"""Flushed ids marked in the queue index once per event-loop turn: the postfix
backend with a real SQLite index and a stand-in flush(8) on a real unix socket."""

from __future__ import annotations

import asyncio
import logging
import socket as socket_module
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from bridgekit import Bridge

from etrn_bridge.backends import mta
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


@pytest.fixture
async def indexed(tmp_path: Path) -> AsyncIterator[tuple[MtaBackend, QueueIndex]]:
    """The backend on an index of 3 messages for each of DOMAINS, a stand-in flush(8),
    and a connection of the test's own to the index file."""
    socket = tmp_path / "flush"
    server = await asyncio.start_unix_server(flush_service, str(socket))
    backend, setup = indexed_backend(tmp_path, socket)
    try:
        yield backend, setup
    finally:
        server.close()
        await server.wait_closed()
        setup.close()
        assert backend.index is not None
        backend.index.close()


@pytest.fixture
def other_writer(indexed: tuple[MtaBackend, QueueIndex]) -> Iterator[sqlite3.Connection]:
    """A writer of another process (a reconciliation) holding the index's write lock."""
    other = sqlite3.connect(indexed[1].path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        other.close()


async def test_concurrent_flushes_are_marked_together_and_never_counted_twice(
    indexed: tuple[MtaBackend, QueueIndex],
) -> None:
    backend, setup = indexed
    flushes = [asyncio.ensure_future(backend.flush(parse_target(d))) for d in DOMAINS]
    while not backend._marks or backend._marks.idle:
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
    assert backend._marks.idle


async def test_a_locked_index_costs_only_the_marks(
    indexed: tuple[MtaBackend, QueueIndex],
    other_writer: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, setup = indexed
    with caplog.at_level(logging.WARNING, "etrn_bridge.backend"):
        result = await backend.flush(parse_target("a.test"))  # the mark gives up soon
    assert result.started and result.pending == 3
    assert backend._marks is not None and backend._marks.idle
    # Not lost silently: the log says which file and how many.
    assert any(
        "3 flushed ids not marked" in r.getMessage() and str(setup.path) in r.getMessage()
        for r in caplog.records
    )
    other_writer.execute("ROLLBACK")
    assert writes(setup.path) == 0  # not marked: counted again, never a failure
    assert (await backend.flush(parse_target("a.test"))).pending == 3


async def test_a_mark_waiting_for_a_lock_leaves_the_loop_running(
    indexed: tuple[MtaBackend, QueueIndex],
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write waits for another writer off the loop: meanwhile the loop runs (here it
    is the loop that releases the lock), and flushes that end meanwhile are written
    next, none lost."""
    monkeypatch.setattr(mta, "MARK_BUSY_TIMEOUT_MS", 30_000)  # read at the first flush
    backend, setup = indexed
    first = asyncio.ensure_future(backend.flush(parse_target("a.test")))
    while (marks := backend._marks) is None or not marks._in_flight:
        await asyncio.sleep(0.001)  # until a.test's write waits for the lock
    second = asyncio.ensure_future(backend.flush(parse_target("b.test")))
    while not marks.unwritten("B0"):
        await asyncio.sleep(0.001)  # until b.test's flush has ended: queued behind
    assert marks.unwritten("A0") and not first.done() and not second.done()
    assert await backend.pending(parse_target("a.test")) == 0  # left out meanwhile
    assert writes(setup.path) == 0
    other_writer.execute("ROLLBACK")  # from the loop: it was never blocked
    assert [(await first).pending, (await second).pending] == [3, 3]
    assert writes(setup.path) == 6 and marks.idle
    assert setup.select(parse_target("b.test")) == []


def serve_flush_requests(listener: socket_module.socket) -> None:
    """A stand-in flush(8) for a bridge process: announcement, then status=0."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return  # closed: the test is over
        with connection:
            connection.sendall(encode({"protocol": "queue_flush_protocol"}))
            received = b""
            while not received.endswith(b"\0\0"):
                chunk = connection.recv(1024)
                if not chunk:
                    break
                received += chunk
            connection.sendall(encode({"status": "0"}))


def test_marks_are_in_the_file_when_the_replies_go_out_even_if_serve_stops_then(
    tmp_path: Path, start_bridge: Callable[..., Bridge]
) -> None:
    """``etrn-bridge serve``: concurrent ETRN answered 253, then SIGTERM at once; every
    flushed id is marked in the file, so another process (the milter's quota) sees it."""
    flush = tmp_path / "flush"
    listener = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    listener.bind(str(flush))
    listener.listen(16)
    threading.Thread(target=serve_flush_requests, args=(listener,), daemon=True).start()
    index = QueueIndex(tmp_path / "index.sqlite")
    index.reconcile(
        [
            IndexedMessage(f"{name[0].upper()}{n}", (f"u{n}@{name}",), 100)
            for name in ("a.customer.net", "b.customer.net", "c.customer.net")
            for n in range(3)
        ],
        time.time(),
    )
    index.claim_reconcile(3600)  # the bridge's own reconciliation waits an hour
    index.close()
    bridge = start_bridge(
        {
            "backend": {"type": "postfix", "postqueue": "/bin/false", "flush_socket": str(flush)},
            "index": {"file": str(tmp_path / "index.sqlite"), "reconcile": "1h"},
        }
    )
    try:
        sessions = [bridge.session() for _ in range(3)]
        for client, name in zip(sessions, "abc", strict=True):
            client.send(f"ETRN {name}.customer.net")
        assert [client.read_reply().code for client in sessions] == [253, 253, 253]
        assert bridge.stop() == 0
        assert writes(tmp_path / "index.sqlite") == 9
    finally:
        listener.close()
