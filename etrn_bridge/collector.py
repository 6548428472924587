"""Pausing Python's cyclic garbage collector while millions of objects are built."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Millions of new objects (a big policy, an audit summary): the cyclic
    collector would rescan them all again and again while they are built (a
    10,000-entry policy load spent a second in it, in pauses of up to 0.2 s that
    stop every thread, sessions included). Nothing built under it may form
    garbage cycles. What was built is then frozen out of later collections:
    re-enabled with millions of young objects, the collector's next pass over
    them would stall every thread just the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
