"""The ``milter:`` config section: where the index feeds listen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_SOCKET = "unix:/run/etrn-bridge/milter.sock"
# Seconds the MTA waits for the milter at each step before its default action
# (accept, in the kits): short, so a stuck milter costs mail little time.
DEFAULT_TIMEOUT = 10
# Sockets are created 0770: add the MTA's user (postfix, Debian-exim) to the
# bridge's group, or loosen this.
DEFAULT_UMASK = "007"
# pymilter / libmilter connection specs (smfi_setconn).
SOCKET_PATTERN = r"^(unix|local):/.+|^inet6?:[0-9]+(@.+)?$"

MILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "The index feeds run by 'etrn-bridge milter': a milter for Postfix "
    "(smtpd_milters, non_smtpd_milters) and Sendmail (INPUT_MAIL_FILTER), and a line "
    "protocol for Exim's data ACL. Each records queued mail for the policy's domains in "
    "the queue index (index: must be configured). They never refuse or delay mail because "
    "of their own faults.",
    "properties": {
        "socket": {
            "type": "string",
            "pattern": SOCKET_PATTERN,
            "default": DEFAULT_SOCKET,
            "description": "Where the milter listens, in libmilter's syntax: "
            "'unix:/path', 'inet:PORT@HOST', 'inet6:PORT@HOST'.",
        },
        "timeout": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_TIMEOUT,
            "description": "Seconds libmilter waits on the MTA's socket.",
        },
        "exim_feed": {
            "type": "string",
            "pattern": r"^(127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\]):[0-9]{1,5}$",
            "description": "Loopback address:port of the Exim feed (the kit's acl_smtp_data "
            "and acl_not_smtp send one line per message, e.g. '127.0.0.1:10125'). TCP, not a "
            "unix socket: Exim 4.96's readsocket reuses a closed descriptor after a failed "
            "unix-socket connect (a stopped bridge then costs a 421 per message). Without it, "
            "no Exim feed runs.",
        },
        "umask": {
            "type": "string",
            "pattern": "^[0-7]{3}$",
            "default": DEFAULT_UMASK,
            "description": "File mode mask for the sockets (octal): the MTA's user must be "
            "able to connect.",
        },
        "enabled": {
            "type": "boolean",
            "default": True,
            "description": "Run the milter (false: only the Exim feed, on an Exim host).",
        },
    },
}


@dataclass(frozen=True, slots=True)
class MilterSettings:
    socket: str = DEFAULT_SOCKET
    timeout: int = DEFAULT_TIMEOUT
    exim_feed: tuple[str, int] | None = None  # (loopback host, port)
    umask: int = int(DEFAULT_UMASK, 8)
    enabled: bool = True


def parse_milter(section: Mapping[str, Any] | None) -> MilterSettings | None:
    if section is None:
        return None
    exim_feed = section.get("exim_feed")
    return MilterSettings(
        socket=section.get("socket", DEFAULT_SOCKET),
        timeout=section.get("timeout", DEFAULT_TIMEOUT),
        exim_feed=None if exim_feed is None else _host_port(exim_feed),
        umask=int(section.get("umask", DEFAULT_UMASK), 8),
        enabled=section.get("enabled", True),
    )


def _host_port(text: str) -> tuple[str, int]:
    # The schema's pattern has checked the shape "127.x.y.z:port" / "[::1]:port".
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
