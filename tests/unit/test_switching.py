"""The short GIL switch interval lasts exactly as long as the jobs that asked for it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from etrn_bridge.switching import BUSY_SWITCH_INTERVAL, short_switch_interval

CUSTOM = 0.003  # an interval someone set before, which must come back


@pytest.fixture
def custom_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(CUSTOM)
    yield
    sys.setswitchinterval(before)


def test_short_while_a_job_runs_then_as_before(custom_interval: None) -> None:
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(BUSY_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(CUSTOM)


def test_overlapping_jobs_in_threads_restore_only_when_the_last_ends(
    custom_interval: None,
) -> None:
    entered, leave = threading.Event(), threading.Event()

    def job() -> None:
        with short_switch_interval():
            entered.set()
            leave.wait()

    thread = threading.Thread(target=job)
    with short_switch_interval():
        thread.start()
        entered.wait()
    # The first job is over, the thread's is not: still short.
    assert sys.getswitchinterval() == pytest.approx(BUSY_SWITCH_INTERVAL)
    leave.set()
    thread.join()
    assert sys.getswitchinterval() == pytest.approx(CUSTOM)


def test_restored_when_the_job_fails(custom_interval: None) -> None:
    with pytest.raises(RuntimeError), short_switch_interval():
        raise RuntimeError("the build failed")
    assert sys.getswitchinterval() == pytest.approx(CUSTOM)


def test_never_longer_than_what_was_set(custom_interval: None) -> None:
    sys.setswitchinterval(BUSY_SWITCH_INTERVAL / 2)
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(BUSY_SWITCH_INTERVAL / 2)
    assert sys.getswitchinterval() == pytest.approx(BUSY_SWITCH_INTERVAL / 2)
