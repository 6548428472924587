"""Several processes write and read one queue index file at the same time (real fork)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from etrn_bridge.queueindex.store import IndexedMessage, QueueIndex
from etrn_bridge.target import parse_target

MESSAGES_PER_WRITER = 300


def writer(path: str, name: str, start: multiprocessing.synchronize.Event) -> None:
    index = QueueIndex(Path(path))
    start.wait()
    for n in range(MESSAGES_PER_WRITER):
        index.record(f"{name}{n:05d}", [f"u{n}@{name}.customer.test", "x@other.test"], n)
        if n % 10 == 9:
            index.forget([f"{name}{n - 9:05d}"])  # and some go away again
    index.close()


def reader(
    path: str, start: multiprocessing.synchronize.Event, counts: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    index = QueueIndex(Path(path))
    start.wait()
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        selected = index.select(parse_target("@customer.test"))
        # every row read is whole: all its recipients, never half a record()
        assert all(len(message.recipients) == 2 for message in selected)
        seen.append(len(selected))
        if len(selected) == 2 * (MESSAGES_PER_WRITER - MESSAGES_PER_WRITER // 10):
            break
    counts.put(seen)
    index.close()


def test_two_writers_and_a_reader_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "index.sqlite")
    QueueIndex(Path(path)).close()
    context = multiprocessing.get_context("fork")
    start = context.Event()
    counts = context.Queue()
    processes = [
        context.Process(target=writer, args=(path, "a", start)),
        context.Process(target=writer, args=(path, "b", start)),
        context.Process(target=reader, args=(path, start, counts)),
    ]
    for process in processes:
        process.start()
    start.set()
    seen = counts.get(timeout=60)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    expected = 2 * (MESSAGES_PER_WRITER - MESSAGES_PER_WRITER // 10)
    assert seen[-1] == expected
    index = QueueIndex(Path(path))
    assert index.stats().rows == expected
    assert index.select(parse_target("a.customer.test"))[0] == IndexedMessage(
        "a00001", ("u1@a.customer.test", "x@other.test"), 1
    )
    index.close()


def test_an_index_opened_before_fork_is_reopened_in_the_child(tmp_path: Path) -> None:
    index = QueueIndex(tmp_path / "index.sqlite")
    index.record("P1", ["user@customer.test"], 1)
    context = multiprocessing.get_context("fork")

    def child() -> None:
        index.record("C1", ["user@customer.test"], 2)
        index.close()

    process = context.Process(target=child)
    process.start()
    process.join(timeout=30)
    assert process.exitcode == 0
    assert [m.queue_id for m in index.select(parse_target("customer.test"))] == ["C1", "P1"]
    index.close()
