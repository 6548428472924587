"""Freeing a big structure without stopping the event loop for its whole teardown.

CPython frees a container and everything only it holds in one go, holding the
GIL throughout: a 10,000-entry policy, or the parse tree it was built from,
takes 50 ms to free, and no other thread runs meanwhile, the event loop
included. Taken apart one container at a time in Python code, the same work
lets the interpreter switch threads between containers, so a worker thread
can free it while sessions keep being answered (with a short switch interval
meanwhile: see ``switching.py``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from etrn_bridge.switching import short_switch_interval

# References to an object popped off the work stack (or alone in a list): the
# local name (the list's slot) and getrefcount's own argument. More means
# someone else still holds it.
_ONLY_OURS = 2
# How often a release waiting for sessions to let go of a replaced policy looks again.
HELD_ELSEWHERE_POLL = 1.0  # seconds


def release_in_background(box: list[Any], done: Callable[[], None] | None = None) -> None:
    """Free what ``box`` holds in a thread of its own (the caller does not wait);
    that thread calls ``done`` when all of it is freed."""
    thread = threading.Thread(
        target=_release_when_unused, args=(box, done), name="release", daemon=True
    )
    thread.start()


def _release_when_unused(box: list[Any], done: Callable[[], None] | None) -> None:
    """Free each item of ``box`` once nothing else holds it. A replaced policy
    that sessions still connected use is waited for: the last of them to end
    would otherwise free it on the event loop, in one go (20 ms of CPU for a
    10,000-entry policy)."""
    cells = [[item] for item in box]
    box.clear()
    for cell in cells:
        while sys.getrefcount(cell[0]) > _ONLY_OURS:
            time.sleep(HELD_ELSEWHERE_POLL)
        with short_switch_interval():
            release_gradually(cell)
    if done is not None:
        done()


def release_gradually(box: list[Any]) -> None:
    """Free what ``box`` holds (and empty it), one container at a time.

    Only what nothing else references is taken apart (a dict or list that is
    ours alone is emptied; a tuple's, set's or object's members are collected
    before it goes); anything still referenced elsewhere is merely let go of,
    and so is what holds nothing to take apart (str, int, ...), without a look.
    """
    stack = box
    while stack:
        item = stack.pop()
        kind = type(item)
        fields = _FIELDS.get(kind)
        if fields is None:
            fields = _FIELDS[kind] = _fields(kind)
        if not fields or sys.getrefcount(item) > _ONLY_OURS:
            continue
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
            item.clear()
        elif kind is list:
            stack.extend(item)
            item.clear()
        elif fields is _MEMBERS:
            stack.extend(item)
        else:
            stack.extend(_attributes(item, fields))


# Per type: how to reach what its instances hold. _MEMBERS: iterate the
# container; otherwise attribute names ("__dict__" for an instance dictionary);
# () for types holding nothing we can take apart.
_MEMBERS = ("*",)
_FIELDS: dict[type, tuple[str, ...]] = {kind: _MEMBERS for kind in (dict, list, tuple, set)}
_FIELDS[frozenset] = _MEMBERS


def _fields(kind: type) -> tuple[str, ...]:
    names = ["__dict__"] if "__dict__" in dir(kind) and kind.__dictoffset__ else []
    for cls in kind.__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                names.append(name)
    return tuple(names)


def _attributes(item: Any, fields: tuple[str, ...]) -> list[Any]:
    """The values of an object's ``__dict__`` and slots."""
    values = []
    for name in fields:
        if name == "__dict__":
            values.extend(vars(item).values())
        elif hasattr(item, name):
            values.append(getattr(item, name))
    return values
