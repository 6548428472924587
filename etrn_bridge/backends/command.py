"""The ``command`` backend: run an argv template for each allowed target.

Placeholders are replaced only when they are a whole argv element, so a target
is always exactly one argument and never part of a larger string a program
might split or interpret. There is no shell anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

from etrn_bridge.backends.base import BackendOptionError
from etrn_bridge.backends.process import run_program
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target

DEFAULT_TIMEOUT = 30.0
PLACEHOLDERS: dict[str, Callable[[Target], str]] = {
    "{target}": lambda target: target.name,  # bare domain, literal or queue name
    "{kind}": lambda target: target.kind.value,  # node | subtree | queue
    "{etrn}": str,  # RFC 1985 form: name, @name or #name
}
_BRACED = re.compile(r"\{[^{}]*\}")


class CommandBackend:
    """Exit status 0 means the flush started; anything else is a failure (458)."""

    name = "command"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "argv": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "Program and arguments; {target}, {kind}, {etrn} as whole elements.",
            },
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": DEFAULT_TIMEOUT,
                "description": "Seconds before the program is killed and the reply is 458.",
            },
        },
        "required": ["argv"],
        "additionalProperties": False,
    }

    def __init__(self, argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        argv = options.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BackendOptionError("argv", "argv must be a non-empty list of strings")
        for element in argv:
            if element not in PLACEHOLDERS and _BRACED.search(element):
                raise BackendOptionError(
                    "argv",
                    f"{element!r}: placeholders must be a whole element, one of "
                    + ", ".join(PLACEHOLDERS),
                )
        if not argv[0].startswith("/"):
            raise BackendOptionError("argv", "the program must be an absolute path")
        timeout = options.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise BackendOptionError("timeout", "timeout must be a positive number of seconds")
        unknown = set(options) - {"argv", "timeout"}
        if unknown:
            raise BackendOptionError(sorted(unknown)[0], "unknown option of the command backend")
        return cls(argv, float(timeout))

    def installation_problems(self) -> list[str]:
        """The program must exist and be executable, or every allowed ETRN gets 458."""
        program = self.argv[0]
        if not os.path.isfile(program):
            return [f"argv[0]: {program} does not exist (or is not a file)"]
        if not os.access(program, os.X_OK):
            return [f"argv[0]: {program} is not executable"]
        return []

    def command_for(self, target: Target) -> list[str]:
        return [
            PLACEHOLDERS[element](target) if element in PLACEHOLDERS else element
            for element in self.argv
        ]

    async def flush(self, target: Target) -> FlushResult:
        result = await run_program(self.command_for(target), self.timeout)
        return FlushResult(
            started=result.ok, exit_status=result.exit_status, detail=result.detail()
        )

    async def pending(self, target: Target) -> int | None:
        return None
