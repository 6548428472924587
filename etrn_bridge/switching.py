"""A short GIL switch interval while a worker thread computes beside the event loop.

The event loop gives the GIL up at every socket call (``recv``, ``send``, the
selector's wait). While another thread is busy computing, getting it back
takes up to one switch interval, 5 ms by default. A round of NOOP replies to
20 sessions makes some 40 such calls, so a policy reload built in a worker
thread stalled replies by 35-150 ms, although no single step of the build
holds the GIL for more than 6 ms of CPU (measured with a per-thread CPU clock).
With :data:`BUSY_SWITCH_INTERVAL` the loop waits a tenth as long for each
call, at the price of more thread switches in the worker (its job takes
somewhat longer); the interval goes back to what it was once the last such
job ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_SWITCH_INTERVAL = 0.0005  # seconds (CPython's default: 0.005)


class _SwitchInterval:
    """How many jobs want the short interval, and the interval to go back to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs = 0
        self._saved = sys.getswitchinterval()

    def enter(self) -> None:
        with self._lock:
            if self._jobs == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, BUSY_SWITCH_INTERVAL))
            self._jobs += 1

    def leave(self) -> None:
        with self._lock:
            self._jobs -= 1
            if self._jobs == 0:
                sys.setswitchinterval(self._saved)


_interval = _SwitchInterval()


@contextmanager
def short_switch_interval() -> Iterator[None]:
    """Within this block (in any thread, nested or overlapping), the event loop
    waits at most :data:`BUSY_SWITCH_INTERVAL` for the GIL at each socket call."""
    _interval.enter()
    try:
        yield
    finally:
        _interval.leave()
