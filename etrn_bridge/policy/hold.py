"""Hold until ETRN and per-domain quotas: an entry's ``hold`` and ``quota`` settings (pure).

``hold: true`` asks the index feeds to quarantine mail whose recipients all
belong to held domains (Postfix hold queue, Sendmail ``hf`` files), so the MTA
stops retrying an offline host; the entry's ETRN releases it. ``quota`` caps
what a held domain may have queued: beyond it the milter answers RCPT with a
temporary 452 (RFC 5321 §4.5.3.1.10 "insufficient system storage" class).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# "500M", "2G", "100000" (bytes); K/M/G are powers of 1024, as MTAs count queue sizes.
SIZE_PATTERN = r"^[0-9]+[KMG]?$"
_SIZE = re.compile(r"([0-9]+)([KMG]?)\Z")
_UNIT_BYTES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}

HOLD_SCHEMA: dict[str, Any] = {
    "type": "boolean",
    "default": False,
    "description": "Hold until ETRN: the milter quarantines mail whose recipients ALL belong "
    "to held domains (Postfix hold queue, Sendmail hf files; Exim uses hold_domains), and "
    "this entry's ETRN releases and flushes it. Mail with any other recipient is never held.",
}

QUOTA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Per-domain cap on queued mail for this entry's held domains: once a "
    "domain has this many messages (or bytes) queued, the milter answers further RCPT for it "
    "with '452 4.2.2' (temporary: senders retry; nothing is lost) and audits a 'quota' record.",
    "properties": {
        "messages": {"type": "integer", "minimum": 1, "description": "Messages queued."},
        "bytes": {
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "Bytes queued: a number, or with K, M, G (powers of 1024).",
        },
    },
}


@dataclass(frozen=True, slots=True)
class Quota:
    messages: int | None = None
    bytes: int | None = None

    def exceeded(self, messages: int, size: int) -> bool:
        """Whether a domain with this much queued may take no more mail."""
        return (self.messages is not None and messages >= self.messages) or (
            self.bytes is not None and size >= self.bytes
        )


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a number of bytes with an optional K, M or G")
    return int(match[1]) * _UNIT_BYTES[match[2]]


def parse_quota(section: Any) -> Quota | None:
    """The quota of an entry (shapes already checked by the schema; wrong ones skipped)."""
    if not isinstance(section, Mapping):
        return None
    messages = section.get("messages")
    size = section.get("bytes")
    return Quota(
        messages=messages if isinstance(messages, int) and messages > 0 else None,
        bytes=parse_size(size) if isinstance(size, str) and _SIZE.match(size) else None,
    )
