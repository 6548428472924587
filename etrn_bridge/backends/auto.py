"""The ``auto`` backend: whichever MTA is installed (Postfix, then Exim, then Sendmail).

Falls back to the ``log`` backend, with a warning, when none is found, so a
first trial run works on a machine without an MTA.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any, ClassVar

from etrn_bridge.backends.base import Backend, BackendOptionError
from etrn_bridge.backends.exim import EximBackend
from etrn_bridge.backends.log import LogBackend
from etrn_bridge.backends.mta import MtaBackend
from etrn_bridge.backends.postfix import PostfixBackend
from etrn_bridge.backends.sendmail import SendmailBackend

log = logging.getLogger("etrn_bridge.backend.auto")

# Preference order. Sendmail comes last: Postfix and Exim both install a
# /usr/sbin/sendmail compatibility program, so it counts only when neither is there.
CANDIDATES: tuple[type[MtaBackend], ...] = (PostfixBackend, EximBackend, SendmailBackend)
# Options every MTA backend takes; program paths and MTA-specific ones are not passed on.
SHARED_OPTIONS = ("command_prefix", "timeout", "max_concurrent")


def installed_program(backend: type[MtaBackend]) -> str | None:
    """The backend's default program when it exists, else the program name found in PATH."""
    if os.access(backend.default_program, os.X_OK):
        return backend.default_program
    return shutil.which(os.path.basename(backend.default_program))


def detect() -> type[MtaBackend] | None:
    return next((backend for backend in CANDIDATES if installed_program(backend)), None)


class AutoBackend:
    """Not a backend itself: ``from_options`` returns the detected one."""

    name = "auto"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            key: PostfixBackend.options_schema["properties"][key] for key in SHARED_OPTIONS
        },
        "additionalProperties": False,
    }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Backend:
        unknown = sorted(set(options) - set(SHARED_OPTIONS))
        if unknown:
            raise BackendOptionError(
                unknown[0], "the auto backend takes only " + ", ".join(SHARED_OPTIONS)
            )
        chosen = detect()
        if chosen is None:
            log.warning(
                "no Postfix, Exim or Sendmail found: using the log backend (flushes nothing)"
            )
            return LogBackend()
        program = installed_program(chosen)
        log.info("auto backend: using %s (%s)", chosen.name, program)
        return chosen.from_options({**options, chosen.program_option: program})
