"""The ``hooks:`` section: sockets on which an MTA consults the bridge from its own ETRN.

Plugin mode (postfix/, exim/, sendmail/ READMEs): the MTA keeps port 25 and asks
the bridge through Postfix policy delegation, an Exim ``${readsocket}`` in
``acl_smtp_etrn`` or a Sendmail socketmap in ``check_etrn``. This module holds
the JSON Schema fragment and the typed settings; the front ends live in
``etrn_bridge/frontends``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Hook name in the config -> front end name in the audit record.
FRONTENDS = {
    "postfix_policy": "postfix-policy",
    "exim": "exim-acl",
    "sendmail": "sendmail-socketmap",
}
DEFAULT_MODE = "0660"
# Seconds from a request's first byte to its end. Exim's readsocket gives up
# after 5 s by default and Postfix's policy client after 100 s
# (smtpd_policy_service_timeout); a live MTA writes a request in one go.
DEFAULT_REQUEST_TIMEOUT = 10.0
# Seconds a connection may wait for its next request. Postfix keeps policy
# connections for up to smtpd_policy_service_max_idle (300 s) and Sendmail its
# socketmap connection for the life of the process; both reconnect when closed.
DEFAULT_IDLE_TIMEOUT = 300.0
# Connections open at once per hook (each MTA process holds at most one;
# Postfix's default smtpd process limit is 100).
DEFAULT_MAX_CONNECTIONS = 200
DEFAULT_SOCKETMAP_NAME = "etrnpol"

_LISTEN_PATTERN = r"^(unix:/.+|(\[[0-9A-Fa-f:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):[0-9]{1,5})$"
_MODE_PATTERN = "^0?[0-7]{3}$"


def _hook_schema(description: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["listen"],
        "description": description,
        "properties": {
            "listen": {
                "type": "string",
                "pattern": _LISTEN_PATTERN,
                "description": "Where the MTA connects: 'unix:/absolute/path' (created at "
                "start, before privileges are dropped; a stale socket file is replaced; its "
                "directory must not be world-writable) or 'IPv4:port' / '[IPv6]:port' "
                "(loopback: the protocol has no authentication).",
            },
            "mode": {
                "type": "string",
                "pattern": _MODE_PATTERN,
                "default": DEFAULT_MODE,
                "description": "Permissions of a unix socket (octal): only its owner and "
                "group may connect.",
            },
            "group": {
                "type": "string",
                "minLength": 1,
                "description": "Group of a unix socket: the MTA's user must be in it "
                "(postfix, Debian-exim, smmsp or root). Default: the starting user's group.",
            },
            "request_timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": DEFAULT_REQUEST_TIMEOUT,
                "description": "Seconds from a request's first byte to its end; a slower "
                "request is dropped (the MTA then answers its own 4xx).",
            },
            "idle_timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": DEFAULT_IDLE_TIMEOUT,
                "description": "Seconds a connection may wait for its next request.",
            },
            "max_connections": {
                "type": "integer",
                "minimum": 1,
                "default": DEFAULT_MAX_CONNECTIONS,
                "description": "Connections served at once; more are closed at once "
                "(the MTA answers its own 4xx).",
            },
            **(extra or {}),
        },
    }


HOOKS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Plugin mode: sockets on which the MTA consults the bridge from its own "
    "ETRN handling (postfix/, exim/, sendmail/ READMEs). Same policy, limits, coalescing "
    "and audit as the listener; with a hook, 'listen' may be left out (no listener).",
    "properties": {
        "postfix_policy": _hook_schema(
            "Postfix policy delegation (smtpd_etrn_restrictions = check_policy_service "
            "...); audited as frontend 'postfix-policy'."
        ),
        "exim": _hook_schema(
            "Exim ${readsocket} from acl_smtp_etrn: one request line, one answer line "
            "(OK/DENY/TEMP and the reply); audited as frontend 'exim-acl'."
        ),
        "sendmail": _hook_schema(
            "Sendmail socketmap consulted by the check_etrn ruleset (netstrings); audited "
            "as frontend 'sendmail-socketmap'.",
            {
                "map": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_]+$",
                    "default": DEFAULT_SOCKETMAP_NAME,
                    "description": "The map name the sendmail.cf K line declares; "
                    "lookups in other maps are answered PERM.",
                }
            },
        ),
    },
}


@dataclass(frozen=True, slots=True)
class HookEndpoint:
    """A unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = self.host or ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> HookEndpoint:
        # The schema's pattern has checked the shape.
        if text.startswith("unix:"):
            return cls(path=text.removeprefix("unix:"))
        host, _, port = text.rpartition(":")
        return cls(host=host.strip("[]"), port=int(port))


@dataclass(frozen=True, slots=True)
class HookSettings:
    name: str  # "postfix_policy", "exim", "sendmail"
    listen: HookEndpoint
    mode: int = int(DEFAULT_MODE, 8)
    group: str | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    map: str = DEFAULT_SOCKETMAP_NAME  # Sendmail only

    @property
    def frontend(self) -> str:
        return FRONTENDS[self.name]


def parse_hooks(
    data: Mapping[str, Any], problem: Callable[[tuple[str, ...], str], None]
) -> tuple[HookSettings, ...]:
    """The configured hooks, in a fixed order; the schema has checked the shape."""
    hooks = []
    unix_paths: dict[str, str] = {}
    for name in FRONTENDS:
        section = data.get(name)
        # A malformed section is the schema's to report; its meaning is not checked.
        if not isinstance(section, dict) or not _well_formed(section):
            continue
        endpoint = HookEndpoint.parse(section["listen"])
        if endpoint.path is not None:
            if endpoint.path in unix_paths:
                problem((name, "listen"), f"the same socket as hooks.{unix_paths[endpoint.path]}")
            unix_paths[endpoint.path] = name
        hooks.append(
            HookSettings(
                name=name,
                listen=endpoint,
                mode=int(section.get("mode", DEFAULT_MODE), 8),
                group=section.get("group"),
                request_timeout=float(section.get("request_timeout", DEFAULT_REQUEST_TIMEOUT)),
                idle_timeout=float(section.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)),
                max_connections=int(section.get("max_connections", DEFAULT_MAX_CONNECTIONS)),
                map=section.get("map", DEFAULT_SOCKETMAP_NAME),
            )
        )
    return tuple(hooks)


def _well_formed(section: Mapping[str, Any]) -> bool:
    listen, mode = section.get("listen"), section.get("mode", DEFAULT_MODE)
    return (
        isinstance(listen, str)
        and re.fullmatch(_LISTEN_PATTERN, listen) is not None
        and isinstance(mode, str)
        and re.fullmatch(_MODE_PATTERN, mode) is not None
    )
