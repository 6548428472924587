"""The queue index beside the MTA backends: attaching it, and reconciling it with the MTA.

The store (``etrn_bridge.queueindex``) is pure storage; reconciling needs the
MTA's listing, so it lives here, with the backends. A reconciliation lists the
whole queue once (the same command a request without the index runs), then
makes the index say what the listing said: what a writer missed (the milter
was down, mail queued before the index existed) is added, what was delivered,
bounced or deleted is removed. It runs in the background of ``serve``, at
most once per ``index.reconcile`` over every process sharing the file, never
on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable

from etrn_bridge.backends.base import Backend
from etrn_bridge.backends.mta import ListingError, MtaBackend, QueuedMessage
from etrn_bridge.queueindex.settings import IndexSettings
from etrn_bridge.queueindex.store import IndexedMessage, QueueIndex, ReconcileResult

log = logging.getLogger("etrn_bridge.queueindex")

# After an unexpected failure, wait this long (or the period, if shorter) before trying again.
RETRY_AFTER_FAILURE = 60.0


def with_index(backend: Backend, settings: IndexSettings | None) -> Backend:
    """The backend, reading nodes and @nodes from the index when one is configured
    (MTA backends only: the others list nothing)."""
    if settings is not None and isinstance(backend, MtaBackend):
        backend.use_index(QueueIndex(settings.file))
    return backend


def indexed(message: QueuedMessage) -> IndexedMessage:
    return IndexedMessage(message.queue_id, message.recipients, message.size, message.held)


async def reconcile(backend: MtaBackend, index: QueueIndex) -> ReconcileResult:
    """List the MTA's queue now and correct the index; raises ListingError."""
    began = time.time()  # wall clock: compared with rows other processes recorded
    listed = await backend.queued_messages()
    return await asyncio.to_thread(index.reconcile, map(indexed, listed), began)


class Reconciler:
    """Reconciles whenever one is due; its own connection to the index, so the long
    write transaction of a reconciliation never blocks the request path's reads (WAL)."""

    def __init__(self, settings: IndexSettings, backend: Callable[[], Backend]) -> None:
        self.settings = settings
        self._backend = backend  # the one in force now: a reload may replace it
        self.index = QueueIndex(settings.file)

    async def run(self) -> None:
        """Until cancelled."""
        try:
            while True:
                try:
                    wait = await self.step()
                except Exception:  # a bug must not end reconciliation for good
                    log.exception("queue index reconciliation failed")
                    wait = min(self.settings.reconcile, RETRY_AFTER_FAILURE)
                await asyncio.sleep(wait)
        finally:
            self.index.close()

    async def step(self) -> float:
        """Reconcile if due (claimed by this process); the seconds until the next check."""
        period = self.settings.reconcile
        backend = self._backend()
        if not isinstance(backend, MtaBackend) or backend.index is None:
            return period
        if backend.index.path != self.index.path:  # a reload named another file
            self.index.close()
            self.index = QueueIndex(backend.index.path)
        try:
            wait = await asyncio.to_thread(self.index.claim_reconcile, period)
            if wait > 0:
                return wait
            started = time.monotonic()
            result = await reconcile(backend, self.index)
        except ListingError as exc:
            log.warning("queue index not reconciled: listing failed: %s", exc.reason)
            return period
        except (sqlite3.Error, OSError) as exc:
            log.error("queue index %s not reconciled: %s", self.settings.file, exc)
            return min(period, RETRY_AFTER_FAILURE)
        log.info(
            "queue index reconciled in %.2f s: %d added, %d updated, %d removed",
            time.monotonic() - started,
            *result,
        )
        return period


def start_reconciler(
    settings: IndexSettings | None, backend: Callable[[], Backend]
) -> asyncio.Task[None] | None:
    """The background reconciliation of ``serve`` (None without an index)."""
    if settings is None:
        return None
    return asyncio.get_running_loop().create_task(Reconciler(settings, backend).run())
