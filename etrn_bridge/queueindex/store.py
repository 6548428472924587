"""Queued messages by recipient domain, in one SQLite file shared by several processes.

The MTA's own listing reads every queue file; this store answers "which
queued messages does ``customer.example`` (or ``@customer.example``) cover?"
with one index range scan. Facts come from writers that see mail as it is
queued (the milter, the Exim data-ACL feed) and from the reconciler, which
replaces drift with what the MTA's listing says. Stale rows are harmless: the
backends flush by id, and an id that is gone is skipped by every MTA.

Concurrency: WAL journal (readers never wait for the writer), ``busy_timeout``
for writers that meet another writer, every write one short transaction, so
the bridge's workers, the milter and the reconciler can share the file. One
:class:`QueueIndex` holds one connection behind a lock: any number of threads
may share it (libmilter's callback threads); a forked child opens its own.

Domains are stored as reversed labels with a trailing dot
(``sub.customer.test`` -> ``test.customer.sub.``), so a subtree is the range
``[test.customer., test.customer/)``: '/' is the character after '.'.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from etrn_bridge.target import Target, TargetKind, recipient_domain

# Milliseconds a writer waits for another writer's transaction before failing.
# Each transaction here is short; a whole reconciliation at 100,000 messages
# stays well below this.
BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 1
# Seconds a claimed reconciliation may take before another process may claim it
# again (the claimer died, or its listing failed); a finished one waits the period.
RECONCILE_LEASE = 600.0
# Stored for recipients without a usable domain: never selected, still listed.
NO_DOMAIN = ""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    queue_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    recorded REAL NOT NULL,  -- wall clock of the last record(): newer than a listing, kept
    flushed REAL             -- wall clock of the last flush; NULL once the MTA lists it again
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recipient (
    queue_id TEXT NOT NULL,
    address TEXT NOT NULL,
    rdomain TEXT NOT NULL,   -- reversed labels and a trailing dot
    PRIMARY KEY (queue_id, address)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipient_by_domain ON recipient (rdomain, queue_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL) WITHOUT ROWID;
"""
# meta keys: when the last successful reconciliation's listing began, and when one was last claimed.
RECONCILED = "reconciled"
CLAIMED = "claimed"


@dataclass(frozen=True, slots=True)
class IndexedMessage:
    """One queued message as the index knows it: all its recipients, not only the covered."""

    queue_id: str
    recipients: tuple[str, ...]
    size: int
    held: bool = False


class IndexStats(NamedTuple):
    rows: int  # messages in the index
    reconcile_age: float | None  # seconds since the last reconciliation's listing; None: never


class ReconcileResult(NamedTuple):
    added: int
    updated: int
    removed: int


def reversed_domain(domain: str) -> str:
    """``sub.customer.test`` -> ``test.customer.sub.`` (the stored, range-scannable form)."""
    return ".".join(reversed(domain.split("."))) + "."


def _domain_key(address: str) -> str:
    domain = recipient_domain(address)
    return NO_DOMAIN if domain is None else reversed_domain(domain)


class QueueIndex:
    """The index file. Every method is safe to call from several threads at once."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        # Opened at first use, so a process that drops privileges after reading its
        # config creates the file (and its -wal/-shm) as the user that will write it.
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    # -- connection ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Opening meets SQLITE_BUSY without the busy handler at PRAGMA journal_mode
        # when another process holds a lock at that moment (two processes opening
        # a new file, or one closing its last connection and checkpointing; the
        # two-writer test met it about once in 6-40 runs): retried here within the
        # same busy timeout.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # explicit BEGIN/COMMIT below
            check_same_thread=False,  # shared under self._lock
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            db.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a power cut may lose the last transactions, never corrupt
            # the file; the next reconciliation restores what was lost.
            db.execute("PRAGMA synchronous = NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                # IF NOT EXISTS throughout: two processes creating the file at once both succeed.
                db.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._connection is None or self._pid != os.getpid():
                # A connection inherited over fork must not be used (nor closed) by the child.
                self._connection = self._connect()
                self._pid = os.getpid()
            yield self._connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE: no upgrade deadlock)."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    # -- writers ----------------------------------------------------------------------------

    def record(
        self, queue_id: str, recipients: Sequence[str], size: int, *, held: bool = False
    ) -> None:
        """Upsert one queued message with all its recipients (replacing what was known)."""
        with self._write() as db:
            _upsert(db, IndexedMessage(queue_id, tuple(recipients), size, held), time.time())

    def forget(self, queue_ids: Iterable[str]) -> None:
        """Remove messages (delivered, bounced, deleted); unknown ids are ignored."""
        rows = [(queue_id,) for queue_id in queue_ids]
        with self._write() as db:
            db.executemany("DELETE FROM recipient WHERE queue_id = ?", rows)
            db.executemany("DELETE FROM message WHERE queue_id = ?", rows)

    def set_held(self, queue_id: str, held: bool) -> None:
        with self._write() as db:
            db.execute("UPDATE message SET held = ? WHERE queue_id = ?", (int(held), queue_id))

    def mark_flushed(self, queue_ids: Iterable[str]) -> None:
        """These were just flushed: not selected again until the MTA lists them again.

        So a delivered message is never counted twice; one deferred again comes
        back with the next reconciliation (or the next record()).
        """
        now = time.time()
        with self._write() as db:
            db.executemany(
                "UPDATE message SET flushed = ? WHERE queue_id = ?",
                ((now, queue_id) for queue_id in queue_ids),
            )

    # -- readers ----------------------------------------------------------------------------

    def select(self, target: Target) -> list[IndexedMessage]:
        """The messages with a recipient the node (or @node subtree) covers, held ones
        included, flushed ones left out; ordered by queue id."""
        low, high = _domain_range(target)
        with self._locked() as db:
            rows = db.execute(
                "SELECT m.queue_id, m.size, m.held, r.address FROM message m"
                " JOIN recipient r ON r.queue_id = m.queue_id"
                " WHERE m.flushed IS NULL AND m.queue_id IN"
                "  (SELECT queue_id FROM recipient WHERE rdomain >= ? AND rdomain < ?)"
                " ORDER BY m.queue_id, r.address",
                (low, high),
            ).fetchall()
        return _messages(rows)

    def domain_usage(self, domain: str) -> tuple[int, int]:
        """(messages, bytes) queued with a recipient in exactly ``domain`` (lower-case A-label)."""
        key = reversed_domain(domain)
        with self._locked() as db:
            messages, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM message WHERE flushed IS NULL"
                " AND queue_id IN (SELECT queue_id FROM recipient WHERE rdomain = ?)",
                (key,),
            ).fetchone()
        return int(messages), int(size)

    def last_reconciled(self) -> float | None:
        """Wall clock at which the last reconciliation's listing began; None: never."""
        with self._locked() as db:
            return _meta(db, RECONCILED)

    def stats(self) -> IndexStats:
        with self._locked() as db:
            rows = db.execute("SELECT count(*) FROM message").fetchone()[0]
            reconciled = _meta(db, RECONCILED)
        return IndexStats(int(rows), None if reconciled is None else time.time() - reconciled)

    # -- reconciliation ---------------------------------------------------------------------

    def claim_reconcile(self, interval: float, lease: float = RECONCILE_LEASE) -> float:
        """Take the next reconciliation if none was claimed within ``interval`` seconds.

        0.0: the caller runs it now. Otherwise the seconds until one is due. One
        claim per interval over every process sharing the file: at most one
        listing per interval, whoever runs it. A claim that did not end in a
        reconciliation (its process died, its listing failed) expires after
        ``lease`` seconds when that is shorter.
        """
        now = time.time()
        with self._write() as db:
            claimed, reconciled = _meta(db, CLAIMED), _meta(db, RECONCILED)
            if claimed is not None:
                finished = reconciled is not None and reconciled >= claimed
                due = claimed + (interval if finished else min(interval, lease))
                if now < due:
                    return due - now
            _set_meta(db, CLAIMED, now)
        return 0.0

    def reconcile(self, listed: Iterable[IndexedMessage], listing_began: float) -> ReconcileResult:
        """Make the index say what the MTA's listing said at ``listing_began`` (wall clock).

        Rows recorded after the listing began are newer than it and kept as they
        are; every other row not listed is removed, listed ones are added or
        updated (recipients already delivered drop out).
        """
        wanted = {message.queue_id: message for message in listed}
        added = updated = removed = 0
        with self._write() as db:
            known = _known(db)
            gone = [
                (queue_id,)
                for queue_id, (recorded, _) in known.items()
                if queue_id not in wanted and recorded < listing_began
            ]
            db.executemany("DELETE FROM recipient WHERE queue_id = ?", gone)
            db.executemany("DELETE FROM message WHERE queue_id = ?", gone)
            removed = len(gone)
            for queue_id, listed_message in wanted.items():
                old = known.get(queue_id)
                if old is None and listed_message.held:
                    continue  # held by someone else (the operator): not ours to flush
                # Held is the feeds' fact (held until ETRN, released by it): a listing
                # cannot tell that hold from the operator's, so known rows keep theirs.
                message = replace(listed_message, held=old is not None and old[1].held)
                if old is None:
                    added += 1
                elif old[0] >= listing_began:
                    continue  # a writer saw it after the listing began: that fact is newer
                elif _same(old[1], message):
                    # still queued as known: a flush since the listing began may have delivered it
                    db.execute(
                        "UPDATE message SET flushed = NULL WHERE queue_id = ? AND flushed < ?",
                        (queue_id, listing_began),
                    )
                    continue
                else:
                    updated += 1
                _upsert(db, message, listing_began)
            _set_meta(db, RECONCILED, listing_began)
        return ReconcileResult(added, updated, removed)


def _upsert(db: sqlite3.Connection, message: IndexedMessage, recorded: float) -> None:
    db.execute(
        "INSERT INTO message (queue_id, size, held, recorded, flushed) VALUES (?, ?, ?, ?, NULL)"
        " ON CONFLICT (queue_id) DO UPDATE SET size = excluded.size, held = excluded.held,"
        " recorded = excluded.recorded, flushed = NULL",
        (message.queue_id, int(message.size), int(message.held), recorded),
    )
    db.execute("DELETE FROM recipient WHERE queue_id = ?", (message.queue_id,))
    db.executemany(
        "INSERT OR IGNORE INTO recipient (queue_id, address, rdomain) VALUES (?, ?, ?)",
        ((message.queue_id, address, _domain_key(address)) for address in message.recipients),
    )


def _same(known: IndexedMessage, listed: IndexedMessage) -> bool:
    """Same recipients and hold state (sizes differ: Exim lists "1.2K", a writer knows bytes)."""
    return sorted(known.recipients) == sorted(listed.recipients) and known.held == listed.held


def _known(db: sqlite3.Connection) -> dict[str, tuple[float, IndexedMessage]]:
    """Every row: (recorded, the message as stored)."""
    recorded = {
        queue_id: (stamp, size, held)
        for queue_id, stamp, size, held in db.execute(
            "SELECT queue_id, recorded, size, held FROM message"
        )
    }
    addresses: dict[str, list[str]] = {}
    for queue_id, address in db.execute(
        "SELECT queue_id, address FROM recipient ORDER BY queue_id, address"
    ):
        addresses.setdefault(queue_id, []).append(address)
    return {
        queue_id: (
            stamp,
            IndexedMessage(queue_id, tuple(addresses.get(queue_id, ())), size, bool(held)),
        )
        for queue_id, (stamp, size, held) in recorded.items()
    }


def _messages(rows: Iterable[tuple[str, int, int, str]]) -> list[IndexedMessage]:
    grouped: dict[str, tuple[int, int, list[str]]] = {}
    for queue_id, size, held, address in rows:
        grouped.setdefault(queue_id, (size, held, []))[2].append(address)
    return [
        IndexedMessage(queue_id, tuple(addresses), size, bool(held))
        for queue_id, (size, held, addresses) in grouped.items()
    ]


def _domain_range(target: Target) -> tuple[str, str]:
    """[low, high) of stored domains a node or @node covers."""
    key = reversed_domain(target.name)
    if target.kind is TargetKind.NODE:
        return key, key + "\x00"
    if target.kind is TargetKind.SUBTREE:
        return key, key[:-1] + "/"
    raise ValueError(f"the queue index selects nodes and @nodes, not {target}")


def _meta(db: sqlite3.Connection, key: str) -> float | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else float(row[0])


def _set_meta(db: sqlite3.Connection, key: str, value: float) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
