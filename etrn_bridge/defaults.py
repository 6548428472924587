"""Default values of every setting, named, with where each number comes from."""

from __future__ import annotations

import socket

LISTEN = ("127.0.0.1:2525",)
BACKEND = "log"
# RFC 5321 §4.5.3.2.7: a server SHOULD wait at least 5 minutes for the next command.
IDLE_TIMEOUT = 300.0
# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512
# Over-long ETRN lines up to this size are still read whole, answered 501 and audited;
# the line reader discards anything longer (500) so a session never buffers more.
AUDITED_LINE_LIMIT = 4096
# ETRN commands one session may send before 421 (Sendmail's MAXETRNCOMMANDS is 8).
MAX_ETRN_PER_SESSION = 16
# Unknown/refused commands before 421 (Postfix smtpd_hard_error_limit is 20; we are stricter).
MAX_BAD_COMMANDS = 10
SYSLOG_ADDRESS = "/dev/log"


def hostname() -> str:
    """The greeting name when the config gives none: the machine's FQDN."""
    return socket.getfqdn()
