"""Every ETRN reply text, in one place (RFC 1985 §5, enhanced codes RFC 3463).

Replies never carry internal detail (paths, exit codes, tracebacks): the
audit record holds that.
"""

from __future__ import annotations

from etrn_bridge.request import Outcome, Status

# RFC 1985 §5 reply codes with RFC 3463 enhanced status codes.
STARTED = "250 2.0.0 OK, queuing for node {node} started"
NOTHING_WAITING = "251 2.0.0 OK, no messages waiting for node {node}"
PENDING_UNCOUNTED = "252 2.0.0 OK, pending messages for node {node} started"
PENDING_COUNTED = "253 2.0.0 OK, {count} pending messages for node {node} started"
UNABLE = "458 4.3.0 Unable to queue messages for node {node}"
NOT_ALLOWED = "459 4.7.1 Node {node} not allowed: {reason}"
SYNTAX_ERROR = "500 5.5.2 Syntax Error"  # RFC 1985 §5 (errata 4130): no argument
SYNTAX_ERROR_PARAMETERS = "501 5.5.4 Syntax Error in Parameters"

# Short client-safe reasons for 459.
REASON_DENIED = "not authorized"
REASON_RATE_LIMITED = "rate limited"
REASON_UNSUPPORTED = "queue names not supported"


def reply_for(outcome: Outcome) -> str:
    """The one-line SMTP reply (without CRLF) for an outcome."""
    status = outcome.status
    if status is Status.MISSING_ARGUMENT:
        return SYNTAX_ERROR
    if status is Status.BAD_ARGUMENT or outcome.target is None:
        return SYNTAX_ERROR_PARAMETERS
    node = str(outcome.target)
    if status is Status.STARTED:
        return STARTED.format(node=node)
    if status is Status.NOTHING_WAITING:
        return NOTHING_WAITING.format(node=node)
    if status is Status.PENDING_STARTED:
        flush = outcome.flush
        if flush is not None and flush.pending is not None and flush.pending_exact:
            return PENDING_COUNTED.format(count=flush.pending, node=node)
        return PENDING_UNCOUNTED.format(node=node)
    if status is Status.FAILED:
        return UNABLE.format(node=node)
    reasons = {
        Status.DENIED: REASON_DENIED,
        Status.RATE_LIMITED: REASON_RATE_LIMITED,
        Status.UNSUPPORTED: REASON_UNSUPPORTED,
    }
    return NOT_ALLOWED.format(node=node, reason=reasons[status])


def reply_code(reply: str) -> int:
    return int(reply[:3])
