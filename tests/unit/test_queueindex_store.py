"""The queue index store on real SQLite files (tmp_path)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etrn_bridge.queueindex.store import (
    BUSY_TIMEOUT_MS,
    IndexedMessage,
    QueueIndex,
    reversed_domain,
)
from etrn_bridge.target import parse_target


@pytest.fixture
def index(tmp_path: Path) -> Iterator[QueueIndex]:
    store = QueueIndex(tmp_path / "index.sqlite")
    yield store
    store.close()


def ids(messages: list[IndexedMessage]) -> list[str]:
    return [message.queue_id for message in messages]


def fill(index: QueueIndex) -> None:
    index.record("A1", ["user@customer.test", "USER@Customer.Test"], 100)
    index.record("A2", ["user@sub.customer.test"], 200)
    index.record("A3", ["user@mycustomer.test"], 300)
    index.record("A4", ["user@customer.test.evil"], 400)
    index.record("A5", ["customer.test@noflush.test"], 500)
    index.record("A6", ["x@customer.test", "y@other.test"], 600, held=True)


def test_reversed_domain() -> None:
    assert reversed_domain("sub.customer.test") == "test.customer.sub."
    assert reversed_domain("test") == "test."


def test_node_selects_exactly_that_domain(index: QueueIndex) -> None:
    fill(index)
    selected = index.select(parse_target("customer.test"))
    assert ids(selected) == ["A1", "A6"]
    assert selected[0] == IndexedMessage("A1", ("USER@Customer.Test", "user@customer.test"), 100)
    assert selected[1].held and selected[1].recipients == ("x@customer.test", "y@other.test")


def test_subtree_is_the_domain_and_its_subdomains_only(index: QueueIndex) -> None:
    fill(index)
    assert ids(index.select(parse_target("@customer.test"))) == ["A1", "A2", "A6"]
    assert ids(index.select(parse_target("@test"))) == ["A1", "A2", "A3", "A5", "A6"]
    assert ids(index.select(parse_target("@evil"))) == ["A4"]
    assert ids(index.select(parse_target("noflush.test"))) == ["A5"]
    assert index.select(parse_target("nothing.test")) == []


def test_queue_targets_are_not_served(index: QueueIndex) -> None:
    with pytest.raises(ValueError, match="#acme"):
        index.select(parse_target("#acme"))


def test_idn_recipient_is_stored_as_a_label(index: QueueIndex) -> None:
    index.record("B1", ["kunde@bücher.test"], 10)
    assert ids(index.select(parse_target("xn--bcher-kva.test"))) == ["B1"]
    assert ids(index.select(parse_target("BÜCHER.test."))) == ["B1"]


def test_recipient_without_domain_is_kept_but_never_selected(index: QueueIndex) -> None:
    index.record("C1", ["postmaster", "a@customer.test"], 10)
    assert index.select(parse_target("customer.test"))[0].recipients == (
        "a@customer.test",
        "postmaster",
    )


def test_record_replaces_recipients_and_forget_removes(index: QueueIndex) -> None:
    fill(index)
    index.record("A1", ["user@other.test"], 111)
    assert ids(index.select(parse_target("customer.test"))) == ["A6"]
    index.forget(["A6", "NOSUCH"])
    assert index.select(parse_target("customer.test")) == []
    assert index.stats().rows == 5


def test_set_held(index: QueueIndex) -> None:
    fill(index)
    index.set_held("A1", True)
    assert index.select(parse_target("customer.test"))[0].held
    index.set_held("A1", False)
    assert not index.select(parse_target("customer.test"))[0].held


def test_flushed_messages_are_not_selected_or_counted_again(index: QueueIndex) -> None:
    fill(index)
    index.mark_flushed(["A1"])
    assert ids(index.select(parse_target("customer.test"))) == ["A6"]
    assert index.domain_usage("customer.test") == (1, 600)
    index.record("A1", ["user@customer.test"], 100)  # a writer sees it queued again
    assert ids(index.select(parse_target("customer.test"))) == ["A1", "A6"]


def test_domain_usage_counts_messages_and_bytes_of_exactly_that_domain(
    index: QueueIndex,
) -> None:
    fill(index)
    assert index.domain_usage("customer.test") == (2, 700)
    assert index.domain_usage("sub.customer.test") == (1, 200)
    assert index.domain_usage("nothing.test") == (0, 0)


def test_stats(index: QueueIndex) -> None:
    assert index.stats() == (0, None)
    fill(index)
    index.reconcile([], time.time() - 10)  # everything recorded after the listing: kept
    rows, age = index.stats()
    assert rows == 6 and age is not None and 9 < age < 60


def test_reconcile_adds_missing_updates_changed_and_removes_gone(index: QueueIndex) -> None:
    fill(index)
    time.sleep(0.01)
    listing_began = time.time()
    listed = [
        IndexedMessage("A1", ("user@customer.test", "USER@Customer.Test"), 100),  # same
        IndexedMessage("A2", ("other@sub.customer.test",), 200),  # recipient changed
        IndexedMessage("N1", ("new@customer.test",), 50),  # missing
    ]
    result = index.reconcile(listed, listing_began)
    assert result == (1, 1, 4)
    assert ids(index.select(parse_target("@customer.test"))) == ["A1", "A2", "N1"]
    assert index.select(parse_target("sub.customer.test"))[0].recipients == (
        "other@sub.customer.test",
    )
    assert index.stats().rows == 3


def test_reconcile_keeps_what_a_writer_recorded_after_the_listing_began(
    index: QueueIndex,
) -> None:
    listing_began = time.time()
    time.sleep(0.01)
    index.record("LATE", ["user@customer.test"], 10)  # queued while the MTA was listing
    index.reconcile([], listing_began)
    assert ids(index.select(parse_target("customer.test"))) == ["LATE"]


def test_reconcile_brings_back_a_flushed_message_still_queued(index: QueueIndex) -> None:
    index.record("D1", ["user@customer.test"], 10)
    index.mark_flushed(["D1"])
    time.sleep(0.01)
    listing_began = time.time()  # listed after the flush: it was deferred again
    index.reconcile([IndexedMessage("D1", ("user@customer.test",), 10)], listing_began)
    assert ids(index.select(parse_target("customer.test"))) == ["D1"]


def test_reconcile_does_not_undo_a_flush_after_the_listing_began(index: QueueIndex) -> None:
    index.record("D1", ["user@customer.test"], 10)
    time.sleep(0.01)
    listing_began = time.time()
    index.mark_flushed(["D1"])  # flushed while the MTA was listing: maybe delivered now
    index.reconcile([IndexedMessage("D1", ("user@customer.test",), 10)], listing_began)
    assert index.select(parse_target("customer.test")) == []


def test_claim_reconcile_once_per_interval(tmp_path: Path) -> None:
    first = QueueIndex(tmp_path / "i.sqlite")
    second = QueueIndex(tmp_path / "i.sqlite")
    assert first.claim_reconcile(60) == 0.0
    wait = second.claim_reconcile(60)
    assert 59 < wait <= 60
    assert first.claim_reconcile(0.0) == 0.0  # interval over: claimable again
    first.close()
    second.close()


def test_an_abandoned_claim_expires_after_its_lease(tmp_path: Path) -> None:
    first = QueueIndex(tmp_path / "i.sqlite")
    assert first.claim_reconcile(3600, lease=0.05) == 0.0  # ... and its process dies
    assert first.claim_reconcile(3600, lease=0.05) > 0
    time.sleep(0.06)
    assert first.claim_reconcile(3600, lease=0.05) == 0.0
    first.reconcile([], time.time())  # this one finishes: the whole period now
    time.sleep(0.06)
    assert first.claim_reconcile(3600, lease=0.05) > 3500
    first.close()


def test_threads_share_one_index(index: QueueIndex) -> None:
    def write(thread: int) -> None:
        for n in range(50):
            index.record(f"T{thread}-{n}", [f"u{n}@t{thread}.customer.test"], n)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(index.select(parse_target("@customer.test"))) == 200


def test_file_is_wal_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    store = QueueIndex(path)
    store.record("E1", ["user@customer.test"], 1)
    store.close()
    reopened = QueueIndex(path)
    assert ids(reopened.select(parse_target("customer.test"))) == ["E1"]
    reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_database_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not an SQLite file" * 100)
    index = QueueIndex(path)
    with pytest.raises(sqlite3.DatabaseError):
        index.stats()


def test_readers_never_wait_for_a_writer_and_a_short_timeout_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    setup = QueueIndex(path)
    setup.record("F1", ["user@customer.test"], 1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a reconciliation holding the write lock
    other.execute("DELETE FROM message")
    quick = QueueIndex(path, busy_timeout_ms=50)
    try:
        assert ids(quick.select(parse_target("customer.test"))) == ["F1"]  # WAL: last commit
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            quick.mark_flushed(["F1"])
    finally:
        other.execute("ROLLBACK")
        other.close()
        quick.close()
        setup.close()


def test_reconcile_keeps_the_feeds_hold_and_never_takes_one_from_a_listing(
    index: QueueIndex,
) -> None:
    # The milter held A1; a listing cannot tell its hold from the operator's.
    index.record("A1", ["x@customer.test"], 100, held=True)
    listed = [
        IndexedMessage("A1", ("x@customer.test",), 100, held=False),
        IndexedMessage("A2", ("y@customer.test",), 100, held=True),  # the operator's hold
    ]
    index.reconcile(listed, time.time() + 1)

    # A2 is not the index's business: an ETRN must not release the operator's hold.
    held = {m.queue_id: m.held for m in index.select(parse_target("customer.test"))}
    assert held == {"A1": True}


def test_an_index_with_a_short_busy_timeout_gives_up_on_a_held_lock(tmp_path: Path) -> None:
    # The flushed marks' own connection waits briefly; the index's default is long.
    path = tmp_path / "index.sqlite"
    index = QueueIndex(path)
    index.record("G1", ["user@customer.test"], 1)
    marks = QueueIndex(path, busy_timeout_ms=50)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a reconciliation holding the write lock
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            marks.mark_flushed(["G1"])
        assert time.monotonic() - started < 5
        with index._locked() as db:
            assert db.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    finally:
        other.execute("ROLLBACK")
        other.close()
    marks.mark_flushed(["G1"])
    assert index.select(parse_target("customer.test")) == []
    index.close()
    marks.close()
