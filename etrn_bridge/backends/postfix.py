"""The ``postfix`` backend: ``postqueue -j`` to list, ``postqueue -s`` / ``-i`` to flush.

Facts (measured on Postfix 3.7, tests/mta/lab/README.md §4-5):

* ``postqueue -s D`` is exact per recipient domain (case-insensitive) but only
  for destinations in ``fast_flush_domains``; others exit 69 "Flush service is
  not configured for destination". It never covers subdomains.
* ``postqueue -i ID`` takes one id per call and works for any message.
* ``postqueue`` returns at once: the queue manager delivers in the background.

So a plain node is one ``postqueue -s``, falling back to one ``postqueue -i``
per selected id when the domain is not fast-flush eligible; ``@node`` and a
mapped ``#queue`` are always the ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from etrn_bridge.backends.base import BackendOptionError
from etrn_bridge.backends.mta import (
    DomainPredicate,
    ListingError,
    MtaBackend,
    QueuedMessage,
    failure,
)
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target, TargetError, TargetKind, parse_domain

# postqueue(1): messages in the hold queue stay there on any flush.
HELD_QUEUE = "hold"
# postqueue.c flush_site(): the domain is not in fast_flush_domains.
NOT_ELIGIBLE_MARKER = "Flush service is not configured"


def parse_postqueue_json(output: bytes) -> list[QueuedMessage]:
    """``postqueue -j`` (Postfix >= 3.1): one JSON object per line, per queue file.

    Only still undelivered recipients are listed by Postfix; held messages are
    left out because no flush releases them.
    """
    messages: list[QueuedMessage] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("queue_name") == HELD_QUEUE:
            continue
        recipients = tuple(str(r["address"]) for r in record.get("recipients", ()))
        messages.append(
            QueuedMessage(str(record["queue_id"]), recipients, record.get("queue_name"))
        )
    return messages


class PostfixBackend(MtaBackend):
    """Exact flushes through ``postqueue``."""

    name = "postfix"
    program_option = "postqueue"
    # Debian's postfix package (and upstream's default command_directory).
    default_program = "/usr/sbin/postqueue"
    extra_options: ClassVar[Mapping[str, Any]] = {
        "queues": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
            },
            "default": {},
            "description": "'#name' targets: Postfix has no named queues, so map each "
            "name to the domains it flushes.",
        },
    }

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.queues: dict[str, frozenset[str]] = {}
        for queue, domains in options.get("queues", {}).items():
            try:
                self.queues[queue] = frozenset(parse_domain(d) for d in domains)
            except TargetError as exc:
                raise BackendOptionError("queues", f"queue {queue!r}: {exc.reason}") from None

    def covers(self, target: Target) -> DomainPredicate | None:
        if target.kind is TargetKind.QUEUE:
            domains = self.queues.get(target.name)
            return None if domains is None else domains.__contains__
        return target.covers_domain

    async def list_queue(self, target: Target) -> list[QueuedMessage]:
        result = await self.run("-j")
        if not result.ok:
            raise ListingError(result)
        try:
            return parse_postqueue_json(result.stdout)
        except (ValueError, KeyError, TypeError) as exc:
            raise ListingError(result, f"unreadable postqueue -j output: {exc}") from None

    async def flush_selected(self, target: Target, queue_ids: tuple[str, ...]) -> FlushResult:
        if target.kind is TargetKind.NODE:
            result = await self.run("-s", target.name)
            if result.ok:
                return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)
            if NOT_ELIGIBLE_MARKER not in result.detail():
                return failure(result)
        failed = await self.run_each(("-i", queue_id) for queue_id in queue_ids)
        if failed is not None:
            return failure(failed)
        return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)
