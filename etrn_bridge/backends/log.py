"""The ``log`` backend: records the request and flushes nothing (for trying it out)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from etrn_bridge.backends.base import BackendOptionError
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target

log = logging.getLogger("etrn_bridge.backend.log")


class LogBackend:
    """Says "started" for every allowed target and does nothing else."""

    name = "log"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        for key in options:
            raise BackendOptionError(key, "the log backend takes no options")
        return cls()

    async def flush(self, target: Target) -> FlushResult:
        # The request's audit record says so (backend "log"); the log only with serve -v.
        log.debug("would flush %s (log backend: nothing is flushed)", target)
        return FlushResult(started=True, detail="log backend: nothing flushed")

    async def pending(self, target: Target) -> int | None:
        return None
