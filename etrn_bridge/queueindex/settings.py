"""The ``index:`` config section: where the queue index lives and how often it is reconciled."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_FILE = "/var/lib/etrn-bridge/index.sqlite"
# The and Postfix's own order of magnitude: qmgr scans the deferred
# queue every queue_run_delay (300s); a full listing costs seconds at 10^5 messages.
DEFAULT_RECONCILE = "300s"
# A positive number and a unit; the look-ahead refuses zero ("0s", "0.0m").
DURATION_PATTERN = r"^(?![0.]+[smh]$)[0-9]+(\.[0-9]+)?(s|m|h)$"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)\Z")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}

INDEX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Queue index: select queued mail per domain from an SQLite file instead "
    "of listing the whole MTA queue on every ETRN (nodes and @nodes; #queue still lists). "
    "Fed by the writers that see mail as it is queued and by a background reconciliation "
    "with the MTA's listing. Without this section every ETRN lists the queue (one listing "
    "shared by concurrent requests).",
    "properties": {
        "file": {
            "type": "string",
            "minLength": 1,
            "default": DEFAULT_FILE,
            "description": "SQLite file (WAL: its directory must be writable by the bridge's "
            "user, for the -wal and -shm files too); relative to the config file's directory.",
        },
        "reconcile": {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "default": DEFAULT_RECONCILE,
            "description": "How often the MTA's queue listing corrects the index (adds what "
            "is missing, removes what is gone), e.g. '300s', '5m'. At most one listing per "
            "period over all processes sharing the file; never on the request path. Until "
            "the first one has run, requests list the queue.",
        },
    },
}


@dataclass(frozen=True, slots=True)
class IndexSettings:
    file: Path
    reconcile: float  # seconds


def parse_duration(text: str) -> float:
    """``"300s"`` -> 300.0, ``"5m"`` -> 300.0 (the schema has checked the shape)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not '<number><s|m|h>'")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def parse_index(section: Mapping[str, Any] | None, base_dir: Path) -> IndexSettings | None:
    if section is None:
        return None
    return IndexSettings(
        file=base_dir / section.get("file", DEFAULT_FILE),
        reconcile=parse_duration(section.get("reconcile", DEFAULT_RECONCILE)),
    )
