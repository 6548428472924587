"""How the nodes' reports make one reply, and what a malformed message does (nothing)."""

from __future__ import annotations

import json

import pytest

from etrn_bridge.replies import reply_for
from etrn_bridge.request import FlushResult, Outcome, Status
from etrn_bridge.service import _status_of
from etrn_bridge.sharedstate.fanout import (
    BadMessage,
    FlushRequest,
    combine,
    decode_result,
    encode_result,
)
from etrn_bridge.target import parse_target

NODES = ["mx1", "mx2", "mx3"]


def reply(result: FlushResult) -> str:
    target = parse_target("customer.test")
    return reply_for(Outcome(_status_of(result), target, flush=result))


def counted(pending: int, *ids: str) -> FlushResult:
    return FlushResult(started=True, pending=pending, queue_ids=ids)


def test_all_answered_sum_of_counts() -> None:
    result = combine(
        NODES, {"mx1": counted(2, "A", "B"), "mx2": counted(0), "mx3": counted(1, "C")}
    )
    assert reply(result) == "253 2.0.0 OK, 3 pending messages for node customer.test started"
    assert result.queue_ids == ("mx1:A", "mx1:B", "mx3:C")
    assert result.detail == "mx1: 2; mx2: 0; mx3: 1"


def test_all_zero_is_251() -> None:
    result = combine(NODES, dict.fromkeys(NODES, counted(0)))
    assert reply(result).startswith("251 ")


def test_a_node_missing_is_250_whatever_the_others_counted() -> None:
    result = combine(NODES, {"mx1": counted(2), "mx2": counted(0)})
    assert reply(result) == "250 2.0.0 OK, queuing for node customer.test started"
    assert "mx3: no answer" in result.detail


def test_a_node_that_cannot_count_is_250() -> None:
    uncounted = FlushResult(started=True)
    assert (
        reply(combine(NODES, {"mx1": counted(2), "mx2": uncounted, "mx3": counted(1)}))[:3] == "250"
    )


def test_a_node_failed_the_others_started_is_250() -> None:
    failed = FlushResult(started=False, detail="postqueue: mail system is down")
    result = combine(NODES, {"mx1": failed, "mx2": counted(1), "mx3": counted(1)})
    assert reply(result)[:3] == "250"
    assert "mx1: failed (postqueue: mail system is down)" in result.detail


def test_every_node_failed_is_458() -> None:
    failed = FlushResult(started=False)
    assert reply(combine(NODES, dict.fromkeys(NODES, failed)))[:3] == "458"


def test_nobody_asked_is_458() -> None:
    assert reply(combine([], {}))[:3] == "458"


def test_every_node_unsupported_is_459() -> None:
    unsupported = FlushResult(started=False, unsupported=True)
    assert _status_of(combine(NODES, dict.fromkeys(NODES, unsupported))) is Status.UNSUPPORTED


def test_report_round_trip() -> None:
    result = FlushResult(
        started=True,
        pending=2,
        pending_exact=False,
        exit_status=0,
        detail="x",
        queue_ids=("A",),
        shared=1,
    )
    report = decode_result(encode_result(result, node="mx2", flush_id="mx1.ab"))
    assert (report.node, report.flush_id, report.result) == ("mx2", "mx1.ab", result)


def test_request_round_trip() -> None:
    request = FlushRequest("mx1.ab", "@customer.test", "mx1", "f00.1", "etrn-bridge:reply:mx1.7")
    assert FlushRequest.decode(request.encode()) == request


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"id": 1, "target": "x", "origin_node": "a", "origin_session": "s"}',
        b'{"id": "1", "target": "x", "origin_node": "a"}',
        b"{" * 100_000,
        b'"' + b"a" * (1 << 21) + b'"',
    ],
)
def test_malformed_request_is_refused(raw: bytes) -> None:
    with pytest.raises(BadMessage):
        FlushRequest.decode(raw)


GOOD = json.loads(encode_result(FlushResult(started=True, pending=1), node="mx1", flush_id="f"))


@pytest.mark.parametrize(
    "change",
    [
        {"pending": -1},
        {"pending": True},
        {"pending": "3"},
        {"started": "yes"},
        {"queue_ids": "A"},
        {"queue_ids": [1]},
        {"shared": None},
        {"node": 5},
        {"flush_id": []},
        {"detail": None},
    ],
)
def test_malformed_report_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(BadMessage):
        decode_result(json.dumps({**GOOD, **change}))
