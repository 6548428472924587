"""The background reconciler's schedule, with a program standing in for ``postqueue -j``
that prints the captured Postfix listing (tests/unit/fixtures) and counts its runs.
The real MTAs are in tests/mta/test_queueindex_real.py."""

from __future__ import annotations

from pathlib import Path

from etrn_bridge.backends.base import create_backend
from etrn_bridge.backends.log import LogBackend
from etrn_bridge.backends.mta import MtaBackend
from etrn_bridge.backends.reconcile import Reconciler, with_index
from etrn_bridge.queueindex.settings import IndexSettings
from etrn_bridge.target import parse_target

LISTING = Path(__file__).parents[1] / "unit" / "fixtures" / "postqueue-j.jsonl"


def fake_postqueue(tmp_path: Path, exit_status: int = 0) -> Path:
    program = tmp_path / "postqueue"
    runs = tmp_path / "runs"
    program.write_text(f'#!/bin/sh\necho "$*" >> {runs}\ncat {LISTING}\nexit {exit_status}\n')
    program.chmod(0o755)
    return program


def runs(tmp_path: Path) -> int:
    log = tmp_path / "runs"
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_reconciles_once_per_period_across_reconcilers(tmp_path: Path) -> None:
    settings = IndexSettings(tmp_path / "index.sqlite", 3600.0)
    backend = with_index(
        create_backend({"type": "postfix", "postqueue": str(fake_postqueue(tmp_path))}), settings
    )
    assert isinstance(backend, MtaBackend) and backend.index is not None
    first, second = Reconciler(settings, lambda: backend), Reconciler(settings, lambda: backend)
    assert await first.step() == 3600.0  # it ran: next one in a period
    assert runs(tmp_path) == 1
    wait = await second.step()  # another worker: the period is not over
    assert 3590 < wait < 3600 and runs(tmp_path) == 1
    # 7 queue files, one held by the operator: the other 6 indexed, the held one never
    # (an ETRN releases only what the milter held)
    assert backend.index.stats().rows == 6
    selection = await backend.flush(parse_target("mycustomer.test"))
    assert selection.pending == 0 and selection.selected_from == "index"
    first.index.close()
    second.index.close()


async def test_a_failing_listing_is_retried_next_period(tmp_path: Path) -> None:
    settings = IndexSettings(tmp_path / "index.sqlite", 30.0)
    program = fake_postqueue(tmp_path, exit_status=69)
    backend = with_index(create_backend({"type": "postfix", "postqueue": str(program)}), settings)
    reconciler = Reconciler(settings, lambda: backend)
    assert await reconciler.step() == 30.0
    assert backend.index is not None and backend.index.last_reconciled() is None
    reconciler.index.close()


async def test_no_mta_backend_nothing_to_do(tmp_path: Path) -> None:
    settings = IndexSettings(tmp_path / "index.sqlite", 30.0)
    reconciler = Reconciler(settings, LogBackend)
    assert await reconciler.step() == 30.0
    assert not (tmp_path / "index.sqlite").exists()
