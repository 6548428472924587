"""What the nodes say to each other, and how their reports make one reply.

Messages are JSON. Whatever comes out of Redis is checked like client input: a
malformed message is dropped (and logged by the caller), never half-used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from etrn_bridge.request import FlushResult

# Longest message accepted from Redis (a report names its queue ids).
MAX_MESSAGE_BYTES = 1 << 20


class BadMessage(ValueError):
    """A message from Redis that is not what this version writes."""


@dataclass(frozen=True, slots=True)
class FlushRequest:
    """Sent to every live node: flush ``target`` from your own queue."""

    flush_id: str
    target: str
    origin_node: str
    origin_session: str
    reply_to: str  # the channel the origin listens on for the reports

    def encode(self) -> str:
        return json.dumps(
            {
                "id": self.flush_id,
                "target": self.target,
                "origin_node": self.origin_node,
                "origin_session": self.origin_session,
                "reply_to": self.reply_to,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> FlushRequest:
        data = _object(raw)
        return cls(
            _string(data, "id"),
            _string(data, "target"),
            _string(data, "origin_node"),
            _string(data, "origin_session"),
            _string(data, "reply_to"),
        )


@dataclass(frozen=True, slots=True)
class Report:
    """A flush result and who made it: a node's report, or a cluster flush's result."""

    node: str | None
    flush_id: str | None
    result: FlushResult


def encode_result(result: FlushResult, node: str, flush_id: str) -> str:
    return json.dumps(
        {
            "node": node,
            "flush_id": flush_id,
            "started": result.started,
            "pending": result.pending,
            "pending_exact": result.pending_exact,
            "exit_status": result.exit_status,
            "detail": result.detail,
            "queue_ids": list(result.queue_ids),
            "unsupported": result.unsupported,
            "shared": result.shared,
        }
    )


def decode_result(raw: bytes | str) -> Report:
    """The :class:`Report` in :func:`encode_result`'s JSON; raises BadMessage."""
    data = _object(raw)
    node = data.get("node")
    flush_id = data.get("flush_id")
    pending = data.get("pending")
    exit_status = data.get("exit_status")
    queue_ids = data.get("queue_ids")
    if (
        (node is not None and not isinstance(node, str))
        or (flush_id is not None and not isinstance(flush_id, str))
        or (pending is not None and not _count(pending))
        or (exit_status is not None and not isinstance(exit_status, int))
        or not isinstance(queue_ids, list)
        or not all(isinstance(q, str) for q in queue_ids)
        or not _count(data.get("shared"))
    ):
        raise BadMessage("malformed flush result")
    result = FlushResult(
        started=_flag(data, "started"),
        pending=pending,
        pending_exact=_flag(data, "pending_exact"),
        exit_status=exit_status,
        detail=_string(data, "detail"),
        queue_ids=tuple(queue_ids),
        unsupported=_flag(data, "unsupported"),
        shared=data["shared"],
    )
    return Report(node, flush_id, result)


def combine(asked: Iterable[str], reports: Mapping[str, FlushResult]) -> FlushResult:
    """One result for the client from every node's report.

    All nodes answered and all started: the sum of their counts (253, or 251 when
    it is zero; 250 when a node could not count). A node that did not answer or
    failed: started, count unknown (250). Nobody started: 458 (459 when every
    node said the target kind is not supported).
    """
    nodes = list(asked)
    missing = [node for node in nodes if node not in reports]
    results = [reports[node] for node in nodes if node in reports]
    detail = "; ".join(_node_detail(node, reports.get(node)) for node in nodes)
    queue_ids = tuple(f"{node}:{qid}" for node in nodes for qid in _ids(reports.get(node)))
    shared = sum(result.shared for result in results)
    started = [result for result in results if result.started]
    if results and all(result.unsupported for result in results) and not missing:
        return FlushResult(started=False, unsupported=True, detail=detail)
    if not started and not missing:
        return FlushResult(started=False, detail=detail)
    if missing or len(started) < len(results):
        return FlushResult(started=True, detail=detail, queue_ids=queue_ids, shared=shared)
    counts = [result.pending for result in results]
    total = None if any(count is None for count in counts) else sum(c or 0 for c in counts)
    return FlushResult(
        started=True,
        pending=total,
        pending_exact=all(result.pending_exact for result in results),
        detail=detail,
        queue_ids=queue_ids,
        shared=shared,
    )


def _node_detail(node: str, result: FlushResult | None) -> str:
    if result is None:
        return f"{node}: no answer"
    if result.unsupported:
        return f"{node}: unsupported"
    if not result.started:
        return f"{node}: failed ({result.detail})" if result.detail else f"{node}: failed"
    return f"{node}: {'started' if result.pending is None else result.pending}"


def _ids(result: FlushResult | None) -> tuple[str, ...]:
    return result.queue_ids if result is not None else ()


def _object(raw: bytes | str) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage("message too long")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    return data


def _string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise BadMessage(f"{key}: not a string")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise BadMessage(f"{key}: not a boolean")
    return value


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
