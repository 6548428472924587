"""What the Postfix, Exim and Sendmail backends share: options, listing, selection.

Each MTA backend does the same three steps: find the queued messages (from the
queue index when one is configured, else from the MTA's own listing, one run
shared by concurrent requests), select those with a recipient the target
covers (exact domain comparison, never a substring), then flush exactly
those. This module owns the steps; a subclass owns only the MTA's argv and
output format.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self

import jsonschema

from etrn_bridge.backends.base import BackendOptionError
from etrn_bridge.backends.listing import SharedListing
from etrn_bridge.backends.process import ProgramResult, run_program
from etrn_bridge.queueindex.store import IndexedMessage, QueueIndex
from etrn_bridge.request import REQUEST_ARRIVED, FlushResult
from etrn_bridge.target import Target, TargetKind, recipient_domain

# Which recipient domains (lower-case A-labels) a target selects.
DomainPredicate = Callable[[str], bool]

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CONCURRENT = 4
# A listing that began up to this many seconds before a request arrived still
# answers it: a burst of ETRN shares one run, and mail queued within that second
# may be missed by it (the client's next ETRN finds it).
DEFAULT_LISTING_MAX_AGE = 1.0
# How long marking flushed ids may wait for another writer (a reconciliation, another
# worker): off the loop, but the flushes' replies wait for it, so short; when it
# gives up, the ids may be counted once more.
MARK_BUSY_TIMEOUT_MS = 100
# Where a flush's selection came from (audited as "selected_from").
FROM_INDEX = "index"
FROM_LISTING = "listing"  # a listing run started for this request
FROM_SHARED_LISTING = "shared_listing"  # another request's listing, in flight or recent
# Queue ids per flush command line: far below ARG_MAX (2 MiB on Linux) even
# with Exim 4.97+ 23-character ids, and small enough to run a few in parallel.
MAX_IDS_PER_RUN = 200

log = logging.getLogger("etrn_bridge.backend")


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One queued message as the MTA lists it: only its still undelivered recipients."""

    queue_id: str
    recipients: tuple[str, ...]
    queue: str | None = None  # Exim named queue / Postfix queue, when the listing says
    size: int = 0  # bytes, as the listing gives it (Exim rounds to K/M)
    held: bool = False  # in Postfix's hold queue: no flush releases it


class ListingError(Exception):
    """The MTA's listing could not be read; carries the failed run for the audit."""

    def __init__(self, result: ProgramResult, reason: str = "") -> None:
        super().__init__(reason or result.detail())
        self.result = result
        self.reason = reason or result.detail()


class UnknownQueue(Exception):
    """The MTA says the ``#queue`` named does not exist (459, like Sendmail's own ETRN)."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The messages a target selects. ``shared`` counts those that also have
    recipients outside it: every MTA flushes whole messages, so those go too."""

    queue_ids: tuple[str, ...]
    shared: int = 0
    held: tuple[str, ...] = ()  # of queue_ids: held until ETRN, released before the flush


def select_messages(
    messages: Iterable[QueuedMessage], covers: DomainPredicate, *, release_held: bool = False
) -> Selection:
    """The messages with at least one recipient whose domain is covered. Held ones
    only with ``release_held``: the index's, which the milter held until this ETRN
    (a listing's held messages may be the operator's, and stay)."""
    selected: list[str] = []
    held: list[str] = []
    shared = 0
    for message in messages:
        if message.held and not release_held:
            continue
        covered = [_covered(address, covers) for address in message.recipients]
        if any(covered):
            selected.append(message.queue_id)
            shared += not all(covered)
            if message.held:
                held.append(message.queue_id)
    return Selection(tuple(selected), shared, tuple(held))


class QueueListing:
    """One listing run's messages, with a recipient-domain map built once for every
    request sharing the run: a request then costs O(domains), not O(messages)."""

    def __init__(self, messages: Sequence[QueuedMessage]) -> None:
        self.messages = messages
        self._by_domain: dict[str, list[QueuedMessage]] | None = None

    def select(self, covers: DomainPredicate) -> Selection:
        if self._by_domain is None:
            self._by_domain = {}
            for message in self.messages:
                for domain in {recipient_domain(address) for address in message.recipients}:
                    if domain is not None:
                        self._by_domain.setdefault(domain, []).append(message)
        candidates: dict[str, QueuedMessage] = {}
        for domain, messages in self._by_domain.items():
            if covers(domain):
                candidates.update((message.queue_id, message) for message in messages)
        return select_messages(candidates.values(), covers)


def _covered(address: str, covers: DomainPredicate) -> bool:
    domain = recipient_domain(address)
    return domain is not None and covers(domain)


def chunks(items: Sequence[str], size: int = MAX_IDS_PER_RUN) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def failure(result: ProgramResult) -> FlushResult:
    """A program that did not run, timed out or exited non-zero: 458, its own words audited."""
    return FlushResult(started=False, exit_status=result.exit_status, detail=result.detail())


def _schema(program_option: str, default_program: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        program_option: {
            "type": "string",
            "pattern": "^/",
            "default": default_program,
            "description": "Absolute path of the MTA program.",
        },
        "command_prefix": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "default": [],
            "description": "Prepended to every command, e.g. [sudo, -n].",
        },
        "args": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "default": [],
            "description": "Extra arguments right after the program on every call "
            "(select the MTA instance's config).",
        },
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": DEFAULT_TIMEOUT,
            "description": "Seconds before a listing or flush command is killed (then 458).",
        },
        "max_concurrent": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_MAX_CONCURRENT,
            "description": "MTA commands running at the same time, at most.",
        },
        "listing_max_age": {
            "type": "number",
            "minimum": 0,
            "default": DEFAULT_LISTING_MAX_AGE,
            "description": "Seconds a queue listing stays good for further requests: "
            "concurrent ETRN share one listing run in flight, and one that began at most "
            "this long before a request arrived answers it too (0: share only the run in "
            "flight). Not used for targets the queue index answers.",
        },
    }
    properties.update(extra)
    return {"type": "object", "properties": properties, "additionalProperties": False}


# -- doctor: is this MTA ready for the bridge? ------------------------------------------


class Level(enum.Enum):
    OK = "ok"
    FIX = "fix"  # the bridge cannot flush until this is changed
    ADVICE = "advice"  # it works, but should be changed


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    text: str


def settings(result: ProgramResult) -> dict[str, str]:
    """``name = value`` lines (postconf -x, exim -bP); Exim prints a true
    boolean as ``name`` and a false one as ``no_name``."""
    values: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        name, equals, value = line.partition("=")
        if equals:
            values[name.strip()] = value.strip()
        elif line.strip().startswith("no_"):
            values[line.strip()[3:]] = "false"
        elif line.strip():
            values[line.strip()] = "true"
    return values


def list_items(value: str) -> list[str]:
    """A list-valued setting: Postfix separates by commas/blanks, Exim by colons."""
    return [item for item in re.split(r"[\s,:]+", value) if item]


class MtaBackend(ABC):
    """List, select exactly, flush exactly. Subclasses give the argv and the parser."""

    name: str
    program_option: ClassVar[str]  # "postqueue", "exim", "sendmail"
    default_program: ClassVar[str]
    extra_options: ClassVar[Mapping[str, Any]] = {}
    # The command forms this backend runs (listing, then flushing), with sample
    # arguments: doctor asks sudo whether the bridge's user may run each.
    command_samples: ClassVar[tuple[tuple[str, ...], ...]]
    options_schema: ClassVar[dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "program_option" in cls.__dict__:
            cls.options_schema = _schema(cls.program_option, cls.default_program, cls.extra_options)

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.program: str = options.get(self.program_option, self.default_program)
        self.command_prefix: tuple[str, ...] = tuple(options.get("command_prefix", ()))
        self.args: tuple[str, ...] = tuple(options.get("args", ()))
        self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        self.max_concurrent = int(options.get("max_concurrent", DEFAULT_MAX_CONCURRENT))
        self._slots: asyncio.Semaphore | None = None
        self.listings: SharedListing[QueueListing] = SharedListing(
            float(options.get("listing_max_age", DEFAULT_LISTING_MAX_AGE))
        )
        # Set by use_index(): nodes and @nodes are then selected from it (on the
        # loop), and the flushed ids are marked in it (FlushedMarks, off the loop).
        self.index: QueueIndex | None = None
        self._index_filled = False  # a reconciliation has run: the index can answer
        self._marks: FlushedMarks | None = None

    def use_index(self, index: QueueIndex) -> None:
        self.index = index
        self._index_filled = False
        self._marks = FlushedMarks(index)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        validator = jsonschema.Draft202012Validator(cls.options_schema)
        for error in validator.iter_errors(dict(options)):
            if error.validator == "additionalProperties":
                unknown = sorted(set(options) - set(cls.options_schema["properties"]))
                raise BackendOptionError(unknown[0], f"unknown option of the {cls.name} backend")
            key = str(error.absolute_path[0]) if error.absolute_path else None
            raise BackendOptionError(key, error.message)
        return cls(options)

    def command(self, *arguments: str) -> list[str]:
        """Full argv: prefix, program, instance args, then this call's arguments."""
        return [*self.command_prefix, self.program, *self.args, *arguments]

    async def run(self, *arguments: str, timeout: float | None = None) -> ProgramResult:
        return await self.run_argv(self.command(*arguments), timeout)

    async def run_argv(self, argv: Sequence[str], timeout: float | None = None) -> ProgramResult:
        # Created lazily: a Semaphore made outside the serving loop would bind to no loop.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            return await run_program(argv, timeout or self.timeout)

    # -- what a subclass provides -------------------------------------------------

    @abstractmethod
    def listing_arguments(self, queue: str | None) -> tuple[str, ...]:
        """The listing command's arguments: the default listing, or one named queue."""

    @abstractmethod
    def parse_listing(self, result: ProgramResult, queue: str | None) -> list[QueuedMessage]:
        """The messages of a listing run (held ones marked); raises ListingError/UnknownQueue."""

    async def list_queue(self, target: Target) -> list[QueuedMessage]:
        """The messages the MTA lists for this target's queue; raises ListingError."""
        listing, _ = await self._listed(target.name if target.kind is TargetKind.QUEUE else None)
        return list(listing.messages)

    async def queued_messages(self) -> list[QueuedMessage]:
        """The whole default listing, run now, held messages included (for reconciliation:
        it must know when its listing began, so it shares no run)."""
        return await self._list_now(None)

    async def _listed(self, queue: str | None) -> tuple[QueueListing, bool]:
        """(the listing, whether another request's run supplied it)."""

        async def run_listing() -> QueueListing:
            return QueueListing(await self._list_now(queue))

        return await self.listings.get(
            self.listing_arguments(queue), run_listing, REQUEST_ARRIVED.get()
        )

    async def _list_now(self, queue: str | None) -> list[QueuedMessage]:
        result = await self.run(*self.listing_arguments(queue))
        if not result.ok:
            raise ListingError(result)
        return self.parse_listing(result, queue)

    async def release_held(self, queue_ids: tuple[str, ...]) -> ProgramResult | None:
        """Take messages the milter held (hold: true) out of hold, so that the flush
        that follows delivers them; the first failed run, or None. An MTA that
        holds by configuration (Exim's hold_domains) has nothing to do here."""
        return None

    @abstractmethod
    async def flush_selected(self, target: Target, queue_ids: tuple[str, ...]) -> FlushResult:
        """Start delivery of exactly ``queue_ids`` (never empty)."""

    def covers(self, target: Target) -> DomainPredicate | None:
        """Which recipient domains the target selects; None: this MTA cannot serve it."""
        if target.kind is TargetKind.QUEUE:
            return lambda domain: True  # the listing already holds only that queue
        return target.covers_domain

    # -- the Backend protocol ---------------------------------------------------------

    async def selected(self, target: Target) -> tuple[Selection, str] | None:
        """The selection and where it came from (FROM_*); None: this MTA cannot serve it."""
        covers = self.covers(target)
        if covers is None:
            return None
        if target.kind is not TargetKind.QUEUE:
            indexed = self._from_index(target)
            if indexed is not None:
                return select_messages(indexed, covers, release_held=True), FROM_INDEX
        queue = target.name if target.kind is TargetKind.QUEUE else None
        listing, shared = await self._listed(queue)
        return listing.select(covers), FROM_SHARED_LISTING if shared else FROM_LISTING

    def _from_index(self, target: Target) -> list[QueuedMessage] | None:
        """The index's messages for a node/@node; None when it cannot answer (none
        configured, never reconciled yet, unreadable): then the listing does."""
        if self.index is None:
            return None
        try:
            if not self._index_filled:
                if self.index.last_reconciled() is None:
                    return None  # an index nothing has filled yet would answer 251 for all
                self._index_filled = True  # for good: a reconciliation is never undone
            found = self.index.select(target)
        except sqlite3.Error as exc:
            log.warning("queue index %s unusable (%s): listing the queue", self.index.path, exc)
            return None
        marks = self._marks
        if marks is None or marks.idle:
            return [_queued(message) for message in found]
        return [_queued(message) for message in found if not marks.unwritten(message.queue_id)]

    async def pending(self, target: Target) -> int | None:
        try:
            selected = await self.selected(target)
        except (ListingError, UnknownQueue):
            return None
        return None if selected is None else len(selected[0].queue_ids)

    async def flush(self, target: Target) -> FlushResult:
        try:
            selected = await self.selected(target)
        except ListingError as exc:
            return FlushResult(started=False, exit_status=exc.result.exit_status, detail=exc.reason)
        except UnknownQueue as exc:
            return FlushResult(started=False, unsupported=True, detail=str(exc))
        if selected is None:
            return FlushResult(
                started=False, unsupported=True, detail=f"{self.name}: no queue named {target}"
            )
        selection, source = selected
        if not selection.queue_ids:
            # Nothing waiting: no flush at all (251).
            return FlushResult(started=True, pending=0, selected_from=source)
        if selection.held:
            failed = await self.release_held(selection.held)
            if failed is not None:
                return failure(failed)
        result = await self.flush_selected(target, selection.queue_ids)
        if result.started and self._marks is not None:
            # Shielded: the write is shared with the other flushes of this loop turn.
            await asyncio.shield(self._marks.add(selection.queue_ids))
        return replace(result, shared=selection.shared, selected_from=source)

    async def run_each(
        self, argvs: Iterable[Sequence[str]], timeout: float | None = None
    ) -> ProgramResult | None:
        """Run several commands (bounded by max_concurrent); the first failure, or None."""
        results = await asyncio.gather(*(self.run(*argv, timeout=timeout) for argv in argvs))
        return next((result for result in results if not result.ok), None)

    # -- etrn-bridge doctor ------------------------------------------------------------

    async def run_sibling(self, program: str, *arguments: str) -> ProgramResult:
        """Run another program of the same install (postconf beside postqueue)."""
        path = os.path.join(os.path.dirname(self.program), program)
        return await self.run_argv([*self.command_prefix, path, *self.args, *arguments])

    @abstractmethod
    async def version(self) -> ProgramResult:
        """Run the MTA's version command; its first output line is shown."""

    async def diagnose(self, user: str, targets: Iterable[Target]) -> list[Finding]:
        findings: list[Finding] = []
        version = await self.version()
        if not version.ok:
            return [Finding(Level.FIX, f"{self.program} does not run: {version.detail()}")]
        first_line = version.stdout.decode("utf-8", "replace").strip().splitlines()[:1]
        findings.append(Finding(Level.OK, f"{self.name}: {' '.join(first_line) or 'runs'}"))
        try:
            listed = await self.list_queue(Target(TargetKind.NODE, "doctor.invalid"))
        except ListingError as exc:
            findings.append(Finding(Level.FIX, f"cannot list the queue as {user}: {exc.reason}"))
        else:
            findings.append(Finding(Level.OK, f"queue listing works ({len(listed)} queued)"))
        findings.extend(await self.check_setup(user, list(targets)))
        return findings

    @abstractmethod
    async def check_setup(self, user: str, targets: list[Target]) -> list[Finding]:
        """May ``user`` flush, and is the MTA's own ETRN off."""


class FlushedMarks:
    """Flushed ids on their way into the index, so they are not counted again (one
    deferred again returns with the next reconciliation).

    Written off the event loop, by a thread of the loop's executor through a
    connection of its own, so neither the write nor the WAL checkpoint a commit
    may run, nor the wait for another writer's lock (another worker, the
    reconciler) stalls the sessions. One write transaction for every flush that
    ended while the previous one was being written (the first: every flush of
    that loop turn): under a flood, a transaction per flush rewrote the same index
    pages over and over. Each flush returns once its ids are written (other
    processes, the milter's quota, see them); until then the backend's selections
    leave them out. A failed write is logged and costs only that those ids may be
    counted once more: the flushes have started.
    """

    def __init__(self, index: QueueIndex) -> None:
        self.index = index
        # The writer thread's connection: a select on the loop never waits for its lock.
        self._writer = QueueIndex(index.path, busy_timeout_ms=MARK_BUSY_TIMEOUT_MS)
        self._queued: set[str] = set()  # for the next write
        self._writing: frozenset[str] = frozenset()  # the write in flight
        self._next: asyncio.Future[None] | None = None  # done when _queued is written
        self._in_flight = False

    def unwritten(self, queue_id: str) -> bool:
        """Flushed, and not yet in the file."""
        return queue_id in self._queued or queue_id in self._writing

    @property
    def idle(self) -> bool:
        return not self._in_flight and not self._queued

    def add(self, queue_ids: Iterable[str]) -> asyncio.Future[None]:
        """Done when these ids are written (or the write failed)."""
        self._queued.update(queue_ids)
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            if not self._in_flight:
                loop.call_soon(self._start)  # the rest of this turn's flushes join it
        return self._next

    def _start(self) -> None:
        done, self._next = self._next, None
        self._writing, self._queued = frozenset(self._queued), set()
        self._in_flight = True
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(None, self._write, sorted(self._writing))
        writing.add_done_callback(functools.partial(self._written, done))

    def _write(self, queue_ids: list[str]) -> None:
        """In the writer thread."""
        try:
            # Waits only briefly for the write lock: a reconciliation holding it
            # must not hold back the replies of the flushes waiting for this.
            self._writer.mark_flushed(queue_ids)
        except sqlite3.Error as exc:
            log.warning(
                "queue index %s: %d flushed ids not marked (%s)",
                self.index.path,
                len(queue_ids),
                exc,
            )

    def _written(self, done: asyncio.Future[None] | None, writing: asyncio.Future[None]) -> None:
        self._writing, self._in_flight = frozenset(), False
        if not writing.cancelled() and writing.exception() is not None:
            log.error(
                "queue index %s: marking flushed ids failed",
                self.index.path,
                exc_info=writing.exception(),
            )
        if done is not None and not done.done():
            done.set_result(None)
        if self._next is not None:
            self._start()  # the flushes that ended meanwhile


def _queued(message: IndexedMessage) -> QueuedMessage:
    return QueuedMessage(message.queue_id, message.recipients, size=message.size, held=message.held)
