"""Each outcome maps to exactly the RFC 1985 reply of DESIGN.md's table."""

from __future__ import annotations

import pytest

from etrn_bridge.replies import reply_for
from etrn_bridge.request import Decision, FlushResult, Outcome, Status
from etrn_bridge.target import Target, TargetKind

NODE = Target(TargetKind.NODE, "customer.example")
ALLOW = Decision(True, "acme", "listed")
DENY = Decision(False, None, "no entry")

CASES = [
    (
        Outcome(Status.STARTED, NODE, ALLOW, flush=FlushResult(True)),
        "250 2.0.0 OK, queuing for node customer.example started",
    ),
    (
        Outcome(Status.NOTHING_WAITING, NODE, ALLOW, flush=FlushResult(True, pending=0)),
        "251 2.0.0 OK, no messages waiting for node customer.example",
    ),
    (
        Outcome(Status.PENDING_STARTED, NODE, ALLOW, flush=FlushResult(True, pending=7)),
        "253 2.0.0 OK, 7 pending messages for node customer.example started",
    ),
    (
        Outcome(
            Status.PENDING_STARTED,
            NODE,
            ALLOW,
            flush=FlushResult(True, pending=7, pending_exact=False),
        ),
        "252 2.0.0 OK, pending messages for node customer.example started",
    ),
    (
        Outcome(
            Status.FAILED,
            NODE,
            ALLOW,
            flush=FlushResult(False, exit_status=69, detail="/usr/sbin/postqueue: down"),
        ),
        "458 4.3.0 Unable to queue messages for node customer.example",
    ),
    (
        Outcome(Status.DENIED, NODE, DENY),
        "459 4.7.1 Node customer.example not allowed: not authorized",
    ),
    (
        Outcome(Status.RATE_LIMITED, Target(TargetKind.SUBTREE, "customer.example"), ALLOW),
        "459 4.7.1 Node @customer.example not allowed: rate limited",
    ),
    (
        Outcome(Status.UNSUPPORTED, Target(TargetKind.QUEUE, "acme"), ALLOW),
        "459 4.7.1 Node #acme not allowed: queue names not supported",
    ),
    (Outcome(Status.MISSING_ARGUMENT), "500 5.5.2 Syntax Error"),
    (
        Outcome(Status.BAD_ARGUMENT, reason="label is not letters"),
        "501 5.5.4 Syntax Error in Parameters",
    ),
]


@pytest.mark.parametrize(("outcome", "reply"), CASES)
def test_reply_table(outcome: Outcome, reply: str) -> None:
    assert reply_for(outcome) == reply


def test_reply_never_carries_backend_detail() -> None:
    outcome = Outcome(
        Status.FAILED,
        NODE,
        ALLOW,
        flush=FlushResult(False, exit_status=69, detail="/usr/sbin/postqueue: fatal"),
    )
    reply = reply_for(outcome)
    assert "postqueue" not in reply and "69" not in reply
