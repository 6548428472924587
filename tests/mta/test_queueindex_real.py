"""The queue index and the shared listing against the real Postfix, Exim and Sendmail.

Every program a backend runs goes through a wrapper (``command_prefix``)
that logs its argv, so the tests count the MTA's listing runs themselves:
none on the request path once the index is reconciled, O(1) for a flood
without the index.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import pytest
from mtalab import MTA_LAB, NODE, RECIPIENTS, SUBTREE, LabMta
from test_bridge_real import Bridge, running_bridge

from etrn_bridge.backends.mta import FROM_INDEX, FROM_LISTING, MtaBackend
from etrn_bridge.backends.reconcile import reconcile
from etrn_bridge.queueindex.store import QueueIndex
from etrn_bridge.request import FlushResult
from etrn_bridge.target import parse_target

# The listing command of each MTA, as it appears in the wrapper's log.
LISTING_ARGUMENT = {"postfix": "-j", "exim": "-bp", "sendmail": "-bp"}
# Listing runs of one reconciliation: Sendmail lists quarantined (held) mail apart (-bp -qQ).
RECONCILE_LISTINGS = {"postfix": 1, "exim": 1, "sendmail": 2}
# Ids in each MTA's format that were never queued (a message gone meanwhile).
GONE_ID = {"postfix": "4B3C2D1E0FA", "exim": "1zzzzz-000000-00", "sendmail": "6ASzzzzz000000"}
FLOOD = 30


class Programs:
    """A command_prefix that logs every MTA program run, then runs it."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "programs.log"
        self.log.touch()
        self.wrapper = tmp_path / "logged"
        self.wrapper.write_text(f'#!/bin/sh\necho "$*" >> {self.log}\nexec "$@"\n')
        self.wrapper.chmod(0o755)

    def runs(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()]

    def listings(self, mta: LabMta) -> int:
        return sum(LISTING_ARGUMENT[mta.name] in argv for argv in self.runs())

    def clear(self) -> None:
        self.log.write_text("")


@pytest.fixture
def programs(tmp_path: Path) -> Programs:
    return Programs(tmp_path)


def indexed_backend(mta: LabMta, index: QueueIndex, programs: Programs) -> MtaBackend:
    backend = mta.backend(command_prefix=[str(programs.wrapper)])
    assert isinstance(backend, MtaBackend)
    backend.use_index(index)
    return backend


async def flush(backend: MtaBackend, target: str) -> FlushResult:
    result = await backend.flush(parse_target(target))
    if result.completion is not None:  # Exim delivers in the foreground
        final = await result.completion
        assert final.started, final.detail
    return result


async def test_reconciled_index_selects_exactly_without_listing(
    mta: LabMta, tmp_path: Path, programs: Programs
) -> None:
    mta.inject()
    index = QueueIndex(tmp_path / "index.sqlite")
    backend = indexed_backend(mta, index, programs)
    # Never reconciled: the index cannot tell "nothing queued" yet, the listing answers.
    assert (await flush(backend, "nothing.test")).selected_from == FROM_LISTING
    assert await reconcile(backend, index) == (len(RECIPIENTS), 0, 0)
    programs.clear()

    counts = {
        t: await backend.pending(parse_target(t)) for t in ("customer.test", "@customer.test")
    }
    assert counts == {"customer.test": 2, "@customer.test": 3}
    result = await flush(backend, "customer.test")
    assert result.started and result.pending == 2 and result.selected_from == FROM_INDEX
    assert set(mta.wait_received(NODE)) == NODE
    assert (await flush(backend, "nothing.test")).pending == 0  # 251, nothing run
    # Delivered: not counted again, whatever the index still holds until reconciled.
    again = await flush(backend, "customer.test")
    assert again.pending == 0 and again.selected_from == FROM_INDEX
    assert programs.listings(mta) == 0  # nothing listed the queue on the request path

    assert await reconcile(backend, index) == (0, 0, 2)  # the delivered two are gone
    assert index.stats().rows == len(RECIPIENTS) - 2
    assert mta.queued_recipients() == set(RECIPIENTS) - NODE
    index.close()


async def test_reconcile_repairs_a_wiped_or_corrupted_index(
    mta: LabMta, tmp_path: Path, programs: Programs
) -> None:
    mta.inject()
    path = tmp_path / "index.sqlite"
    index = QueueIndex(path)
    backend = indexed_backend(mta, index, programs)
    await reconcile(backend, index)
    by_recipient = {rcpts[0]: queue_id for queue_id, rcpts, _ in mta.listing()}

    # Corrupt: a message lost, one filed under the wrong domain, one that never existed.
    index.forget([by_recipient["user@sub.customer.test"]])
    index.record(by_recipient["USER@CUSTOMER.TEST"], ["user@elsewhere.test"], 10)
    index.record(GONE_ID[mta.name], ["ghost@customer.test"], 10)
    assert await reconcile(backend, index) == (1, 1, 1)
    assert await backend.pending(parse_target("@customer.test")) == 3

    # Wiped: a new, empty file lists until reconciled, then knows everything again.
    index.close()
    for leftover in tmp_path.glob("index.sqlite*"):
        leftover.unlink()
    index = QueueIndex(path)
    backend.use_index(index)
    assert (await flush(backend, "nothing.test")).selected_from == FROM_LISTING
    assert await reconcile(backend, index) == (len(RECIPIENTS), 0, 0)
    programs.clear()
    result = await flush(backend, "@customer.test")
    assert result.pending == 3 and result.selected_from == FROM_INDEX
    assert set(mta.wait_received(SUBTREE)) == SUBTREE
    assert programs.listings(mta) == 0
    index.close()


async def test_a_gone_id_never_fails_a_flush(
    mta: LabMta, tmp_path: Path, programs: Programs
) -> None:
    """An id flushed, bounced or deleted behind the index's back is skipped by every
    MTA (postqueue -i, exim -M, sendmail -qI all exit 0): the live ones still go."""
    mta.inject()
    index = QueueIndex(tmp_path / "index.sqlite")
    backend = indexed_backend(mta, index, programs)
    await reconcile(backend, index)
    index.record(GONE_ID[mta.name], ["ghost@noflush.test"], 10)  # as a writer would, then gone
    result = await flush(backend, "noflush.test")  # on Postfix: the postqueue -i path
    assert result.started, result.detail
    assert GONE_ID[mta.name] in result.queue_ids
    assert set(mta.wait_received({"customer.test@noflush.test"})) == {"customer.test@noflush.test"}
    index.close()


async def test_a_flood_without_index_shares_its_listing(
    mta: LabMta, tmp_path: Path, programs: Programs
) -> None:
    mta.inject()
    backend = mta.backend(command_prefix=[str(programs.wrapper)])
    assert isinstance(backend, MtaBackend)
    targets = [f"n{i}.customer.test" for i in range(FLOOD)] + ["customer.test"]
    results = await asyncio.gather(*(backend.flush(parse_target(t)) for t in targets))
    assert [r.pending for r in results] == [0] * FLOOD + [2]
    assert programs.listings(mta) == backend.listings.runs == 1
    assert set(mta.wait_received(NODE)) == NODE


# -- through etrn-bridge serve: the reconciler runs in the background -------------------


def flood(bridge: Bridge, targets: list[str]) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        return [code for code, _ in pool.map(bridge.etrn, targets)]


FLOOD_TARGETS = [f"n{i}.customer.test" for i in range(FLOOD)] + ["customer.test"]
UNLIMITED = 'limits: {per_target: "off", per_client: "off"}\n'


def test_serve_without_index_floods_with_at_most_two_listings(
    mta: LabMta, tmp_path: Path, programs: Programs
) -> None:
    mta.inject()
    backend = {**mta.backend_options, "command_prefix": [str(programs.wrapper)]}
    with running_bridge(tmp_path, backend, targets=["@customer.test"], extra=UNLIMITED) as bridge:
        codes = flood(bridge, FLOOD_TARGETS)
        records = bridge.records(count=len(FLOOD_TARGETS))
    assert sorted(codes) == [251] * FLOOD + [253]
    listings = programs.listings(mta)
    assert 1 <= listings <= 2
    sources = [record["selected_from"] for record in records]
    assert sources.count("listing") == listings
    assert sources.count("shared_listing") == len(FLOOD_TARGETS) - listings
    assert set(mta.wait_received(NODE)) == NODE


def test_serve_with_index_lists_only_in_the_background(
    mta: LabMta, tmp_path: Path, programs: Programs
) -> None:
    mta.inject()
    path = tmp_path / "index.sqlite"
    backend = {**mta.backend_options, "command_prefix": [str(programs.wrapper)]}
    extra = UNLIMITED + f'index: {{file: "{path}", reconcile: "1h"}}\n'
    with running_bridge(tmp_path, backend, targets=["@customer.test"], extra=extra) as bridge:
        wait_reconciled(path)
        reconciling = RECONCILE_LISTINGS[mta.name]
        assert programs.listings(mta) == reconciling  # the reconciler's, at start
        codes = flood(bridge, FLOOD_TARGETS)
        records = bridge.records(count=len(FLOOD_TARGETS))
        assert programs.listings(mta) == reconciling  # and none for the flood
    assert sorted(codes) == [251] * FLOOD + [253]
    assert {record["selected_from"] for record in records} == {"index"}
    assert set(mta.wait_received(NODE)) == NODE


def wait_reconciled(path: Path, timeout: float = 15) -> None:
    index = QueueIndex(path)
    try:
        deadline = time.monotonic() + timeout
        while index.last_reconciled() is None:
            assert time.monotonic() < deadline, "the bridge did not reconcile its index"
            time.sleep(0.05)
    finally:
        index.close()


# -- Postfix: flush(8) asked directly, as its own ETRN does ------------------------------


async def test_postfix_flush_socket_flushes_a_node_without_a_process(
    lab: dict[str, LabMta], tmp_path: Path, programs: Programs
) -> None:
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    socket_path = str(MTA_LAB / "postfix" / "spool" / "public" / "flush")
    index = QueueIndex(tmp_path / "index.sqlite")
    backend = mta.backend(command_prefix=[str(programs.wrapper)], flush_socket=socket_path)
    assert isinstance(backend, MtaBackend)
    backend.use_index(index)
    await reconcile(backend, index)
    programs.clear()
    result = await flush(backend, "customer.test")
    assert result.started and result.pending == 2
    assert programs.runs() == []  # no postqueue at all: index, then the flush socket
    assert set(mta.wait_received(NODE)) == NODE
    # Not fast-flush eligible: flush(8) says so, the ids go through postqueue -i.
    result = await flush(backend, "noflush.test")
    assert result.started and result.pending == 1
    assert [argv[-2] for argv in programs.runs()] == ["-i"]
    assert "customer.test@noflush.test" in mta.wait_received({"customer.test@noflush.test"})
    # Postfix down: no socket answers, 458 with the reason audited.
    mta.script("stop")
    try:
        index.record("0123456789A", ["user@customer.test"], 10)
        down = await backend.flush(parse_target("customer.test"))
        assert not down.started and "flush" in down.detail
    finally:
        mta.script("start")
    index.close()
