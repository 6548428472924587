"""Freeing a big structure without stopping the event loop for its whole teardown.

CPython frees a container and everything only it holds in one go, holding the
GIL throughout: a 10,000-entry policy, or the parse tree it was built from,
takes 50 ms to free, and no other thread runs meanwhile, the event loop
included. Taken apart one container at a time in Python code, the same work
lets the interpreter switch threads between containers (every 5 ms), so a
worker thread can free it while sessions keep being answered.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

# References to an object popped off the work stack: the local name and
# getrefcount's own argument. More means someone else still holds it.
_ONLY_OURS = 2


def release_in_background(box: list[Any]) -> None:
    """Free what ``box`` holds in a thread of its own (the caller does not wait)."""
    threading.Thread(target=release_gradually, args=(box,), name="release", daemon=True).start()


def release_gradually(box: list[Any]) -> None:
    """Free what ``box`` holds (and empty it), one container at a time.

    Only what nothing else references is taken apart (a dict or list that is
    ours alone is emptied; a tuple's, set's or object's members are collected
    before it goes); anything still referenced elsewhere is merely let go of.
    """
    stack = box
    while stack:
        item = stack.pop()
        if sys.getrefcount(item) > _ONLY_OURS:
            continue
        if type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
            item.clear()
        elif type(item) is list:
            stack.extend(item)
            item.clear()
        elif type(item) in (tuple, set, frozenset):
            stack.extend(item)
        else:
            stack.extend(_attributes(item))


def _attributes(item: Any) -> list[Any]:
    """The values of an object's ``__dict__`` and slots (none for str, int, ...)."""
    values = list(vars(item).values()) if hasattr(item, "__dict__") else []
    for cls in type(item).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(item, name):
                values.append(getattr(item, name))
    return values
