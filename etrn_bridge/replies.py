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
# Exim's acl_smtp_etrn refuses only with its default's first digit (4, from 458):
# another code is replaced and written to the panic log. So a syntax error
# reaches an Exim client in this 4xx form (RFC 3463 X.5.4 kept, class 4).
SYNTAX_ERROR_TEMPORARY = "459 4.5.4 Syntax Error in Parameters"

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


# Session replies of the SMTP listener (not ETRN outcomes). Codes per RFC 5321
# §4.2 and §4.3.2, enhanced codes per RFC 3463; "{host}" is the server's name.
GREETING_IDENT = "ESMTP etrn-bridge"  # "220 <host> ESMTP etrn-bridge" (RFC 5321 §4.2)
# RFC 5321 §4.1.4: a session starts with EHLO/HELO; 503 is "bad sequence of commands".
HELO_FIRST = "503 5.5.1 Send HELO or EHLO first"
EHLO_SYNTAX = "501 5.5.4 Syntax: EHLO hostname"  # RFC 5321 §4.1.1.1: a domain is required
# RFC 5321 §4.2.4: 502 when a command is recognized but not implemented, 500 when
# it is not recognized. MAIL, RCPT, DATA, BDAT, VRFY, EXPN, TURN and ATRN are all
# SMTP commands this service refuses: 5yz, so a misdirected MTA bounces at once
# instead of retrying, and X.5.1 "invalid command" (RFC 3463 §3.6).
ONLY_ETRN = "502 5.5.1 Command not implemented: this service accepts only ETRN"
UNRECOGNIZED = "500 5.5.1 Command unrecognized"
# RFC 5321 §4.5.3.1.4 (512 octets per command line). X.5.2 "syntax error": X.5.6
# is registered by RFC 4954 for over-long AUTH exchange lines only.
LINE_TOO_LONG = "500 5.5.2 Line too long"
# RFC 3207 §4: STARTTLS is not available again once TLS is active.
TLS_ACTIVE = "503 5.5.1 TLS already active"
# RFC 5321 §4.2.2: 451 "local error in processing"; never the error's own words.
LOCAL_ERROR = "451 4.3.0 Local error in processing"
# RFC 5321 §3.8 / §4.2.2: 421 closes the session. X.4.2 "bad connection" for the
# idle timeout (§4.5.3.2.7), X.7.0 (security/policy) for abuse limits as Sendmail
# says it, X.3.2 "system not accepting network messages" for shutdown.
IDLE_TIMEOUT = "421 4.4.2 {host} Idle timeout, closing connection"
TOO_MANY_ETRN = "421 4.7.0 {host} Too many ETRN commands, closing connection"
TOO_MANY_BAD_COMMANDS = "421 4.7.0 {host} Too many bad commands, closing connection"
SHUTTING_DOWN = "421 4.3.2 {host} Service shutting down, closing connection"
# Connection caps (the connections: section), refused before the greeting or mid-session.
TOO_MANY_SESSIONS = "421 4.7.0 {host} Too many connections, try again later"
SESSION_TIME_LIMIT = "421 4.7.0 {host} Session time limit reached, closing connection"
AUTH_THROTTLED = "421 4.7.0 {host} Too many failed authentications, try again later"
