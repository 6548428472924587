"""Connection caps of the SMTP listener: who may open a session, for how long, and
how often a client address may fail AUTH (the ``connections:`` section).

This is SMTP session hygiene, not policy: it decides nothing about ETRN
targets. Past a cap the listener answers ``421 4.7.0`` and closes, never
silently. The counts are per serving process (like ``limits:``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from etrn_bridge.policy.limits import RATE_PATTERN, Rate, SlidingWindow, parse_rate

# Postfix's smtpd_client_connection_count_limit (anvil(8)) defaults to 50
# simultaneous sessions per client address.
DEFAULT_MAX_SESSIONS_PER_CLIENT = 50
# Sessions of one process in all. An idle session costs ~50 KB and one file
# descriptor: 500 stays well inside the usual 1024 open-files soft limit, which
# the audit file, listening sockets and the pipes of running flushes share.
DEFAULT_MAX_SESSIONS = 500
# An ETRN session needs a few commands; RFC 5321 §4.5.3.2 gives each command
# 5 minutes, so 10 minutes in all is generous and ends NOOP-kept sessions.
DEFAULT_MAX_SESSION_TIME = 600.0
# fail2ban's postfix-sasl jail: maxretry 5 within findtime 10 minutes.
DEFAULT_AUTH_FAILURES = "5/10m"
_DEFAULT_AUTH_FAILURE_RATE = Rate(5, 600.0)
# scrypt (N=2**15, r=8) and argon2id take ~32 MiB each while they run.
DEFAULT_MAX_PASSWORD_CHECKS = 4
# Pending connections the kernel queues per listening socket (Postfix's default
# is 100; short ETRN sessions arrive in bursts). The kernel caps it at somaxconn.
DEFAULT_LISTEN_BACKLOG = 1024

CONNECTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Caps on sessions and AUTH across connections, per serving process. "
    "Past a cap the client gets '421 4.7.0' and the connection is closed.",
    "properties": {
        "max_sessions": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_MAX_SESSIONS,
            "description": "Sessions open at once in all.",
        },
        "max_sessions_per_client": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_MAX_SESSIONS_PER_CLIENT,
            "description": "Sessions open at once from one client address (as Postfix's "
            "smtpd_client_connection_count_limit).",
        },
        "max_session_time": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": DEFAULT_MAX_SESSION_TIME,
            "description": "Seconds a session may last in all, however active; an ETRN in "
            "progress gets its reply first.",
        },
        "auth_failures": {
            "type": "string",
            "pattern": RATE_PATTERN,
            "default": DEFAULT_AUTH_FAILURES,
            "description": "Failed AUTH attempts allowed per client address per window, "
            "across sessions, e.g. '5/10m'; beyond it AUTH gets 421 without a password "
            "check. 'off' disables.",
        },
        "max_password_checks": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_MAX_PASSWORD_CHECKS,
            "description": "Password hashes verified at once (each scrypt/argon2 check "
            "takes ~32 MiB); more wait their turn.",
        },
        "listen_backlog": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_LISTEN_BACKLOG,
            "description": "Connections the kernel queues per listening socket before "
            "they are accepted (capped by net.core.somaxconn).",
        },
    },
}


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_sessions_per_client: int = DEFAULT_MAX_SESSIONS_PER_CLIENT
    max_session_time: float = DEFAULT_MAX_SESSION_TIME
    auth_failures: Rate | None = _DEFAULT_AUTH_FAILURE_RATE
    max_password_checks: int = DEFAULT_MAX_PASSWORD_CHECKS
    listen_backlog: int = DEFAULT_LISTEN_BACKLOG

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ConnectionSettings:
        """From a ``connections:`` mapping the schema has already validated."""
        values = dict(section)
        if "auth_failures" in values:
            values["auth_failures"] = parse_rate(values["auth_failures"])
        return cls(**values)


class Admission:
    """Counts open sessions per client address and AUTH failures per address."""

    def __init__(
        self, settings: ConnectionSettings, clock: Callable[[], float] | None = None
    ) -> None:
        self.settings = settings
        self._sessions: collections.Counter[str] = collections.Counter()
        self._open = 0
        self._auth_failures = SlidingWindow() if clock is None else SlidingWindow(clock=clock)

    def admit(self, client: str) -> bool:
        """Count a new session, or False (nothing counted) when a cap is reached."""
        if self._open >= self.settings.max_sessions:
            return False
        if self._sessions[client] >= self.settings.max_sessions_per_client:
            return False
        self._sessions[client] += 1
        self._open += 1
        return True

    def release(self, client: str) -> None:
        """An admitted session ended."""
        self._open -= 1
        self._sessions[client] -= 1
        if self._sessions[client] <= 0:
            del self._sessions[client]

    def auth_blocked(self, client: str) -> bool:
        rate = self.settings.auth_failures
        return rate is not None and self._auth_failures.full(client, rate)

    def auth_failed(self, client: str) -> None:
        rate = self.settings.auth_failures
        if rate is not None:
            self._auth_failures.record(client, rate)
