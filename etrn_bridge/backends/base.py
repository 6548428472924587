"""The backend interface and its registry (entry-point group ``etrn_bridge.backends``).

A backend knows only "how does this MTA flush exactly this target". It never
decides who may flush, never writes audit records and never sees raw client
input: it receives a validated :class:`~etrn_bridge.target.Target`.

Third parties add a backend by declaring, in their package::

    [project.entry-points."etrn_bridge.backends"]
    mymta = "mypkg.backend:MyBackend"

and writing ``backend: {type: mymta, ...}`` in the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target

ENTRY_POINT_GROUP = "etrn_bridge.backends"
# How long a flush may run when its backend names no ``timeout`` (the command
# and MTA backends' default): a graceful stop waits this long for it.
DEFAULT_FLUSH_TIMEOUT = 30.0


class BackendOptionError(ValueError):
    """A backend option is wrong. ``key`` names the option (None: the whole section)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@runtime_checkable
class Backend(Protocol):
    """What the service needs from a backend."""

    name: str

    async def flush(self, target: Target) -> FlushResult:
        """Make exactly the mail selected by ``target`` go now."""
        ...

    async def pending(self, target: Target) -> int | None:
        """Queued messages selected by ``target``; None when the MTA cannot tell."""
        ...


class BackendFactory(Protocol):
    """What a registered entry point must be: a class built from its config options."""

    # JSON Schema of the options (everything in ``backend:`` except ``type``).
    options_schema: ClassVar[dict[str, Any]]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self: ...


def registered_backends() -> dict[str, BackendFactory]:
    """Every backend type installed, by name."""
    found: dict[str, BackendFactory] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.load()
    return found


def backend_factory(type_name: str) -> BackendFactory:
    matches = entry_points(group=ENTRY_POINT_GROUP, name=type_name)
    for entry in matches:
        factory: BackendFactory = entry.load()
        return factory
    known = ", ".join(sorted(registered_backends()))
    raise BackendOptionError("type", f"unknown backend type {type_name!r} (known: {known})")


def flush_timeout(backend: Backend) -> float:
    """Seconds after which the backend gives up on a flush (it kills its program)."""
    timeout = getattr(backend, "timeout", None)
    return float(timeout) if isinstance(timeout, int | float) else DEFAULT_FLUSH_TIMEOUT


def installation_problems(backend: Backend) -> list[str]:
    """What stops ``backend`` from working on this machine (e.g. its program is
    missing); empty when nothing is known to be wrong. ``check`` and ``doctor``
    report these. A backend opts in with an ``installation_problems()`` method."""
    method = getattr(backend, "installation_problems", None)
    return [str(problem) for problem in method()] if callable(method) else []


def create_backend(section: Mapping[str, Any]) -> Backend:
    """Build the backend described by a config ``backend:`` mapping."""
    type_name = section.get("type", "log")
    options = {key: value for key, value in section.items() if key != "type"}
    backend = backend_factory(str(type_name)).from_options(options)
    if not isinstance(backend, Backend):
        raise BackendOptionError("type", f"{type_name!r} does not implement the backend interface")
    return backend
