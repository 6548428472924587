"""JSON Schema of the ``policy:`` and ``limits:`` sections (part of ``etrn_bridge.schema``).

The schema checks shape and types (what an editor can show while typing); the
meaning of each value (a CIDR that parses, a domain that is a host name, ids
that are unique, rules that can be reached) is checked by ``policy.compile``.
"""

from __future__ import annotations

from typing import Any

from etrn_bridge.policy.hold import HOLD_SCHEMA, QUOTA_SCHEMA
from etrn_bridge.policy.limits import (
    DEFAULT_MAX_CONCURRENT_FLUSHES,
    DEFAULT_PER_CLIENT,
    DEFAULT_PER_TARGET,
    RATE_PATTERN,
)


def _strings(description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "description": description,
    }


def _rate(description: str, default: str | None = None) -> dict[str, Any]:
    schema = {"type": "string", "pattern": RATE_PATTERN, "description": description}
    return schema if default is None else {**schema, "default": default}


PER_TARGET_DESCRIPTION = (
    "Backend runs per target per window, e.g. '1/60s'; further ETRN for that target in the "
    "window (or while its flush runs) are coalesced: same reply, no new run. 'off' disables."
)
PER_CLIENT_DESCRIPTION = (
    "Allowed ETRN per client address per window, e.g. '10/60s'; more get 459 'rate limited'. "
    "'off' disables."
)

ENTRY_LIMITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Overrides of the global limits for requests this entry allows.",
    "properties": {
        "per_target": _rate(PER_TARGET_DESCRIPTION + " Default: limits.per_target."),
        "per_client": _rate(PER_CLIENT_DESCRIPTION + " Default: limits.per_client."),
    },
}

_MATCHERS: dict[str, Any] = {
    "id": {"type": "string", "minLength": 1, "description": "Names the entry in audits."},
    "networks": _strings(
        "IPv4/IPv6 CIDRs the client address is in (IPv4-mapped IPv6 clients match IPv4)."
    ),
    "users": _strings("SMTP AUTH identities."),
    "tls_fingerprints": _strings(
        "SHA-256 fingerprints of verified client certificates, 'sha256:AB:CD:...'."
    ),
    "rdns": _strings("Forward-confirmed reverse DNS names: 'host.example' or '*.dyn.isp.example'."),
    "targets": _strings("'node', '@node' (node and subdomains), '#queue'."),
    "targets_file": {
        "type": "string",
        "minLength": 1,
        "description": "File of targets, one 'node' or '@node' per line, '#' comments; "
        "relative to the config file's directory.",
    },
}

CLIENT_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "description": "Allows its targets to clients that match ALL its matchers.",
    "properties": {
        **_MATCHERS,
        "limits": ENTRY_LIMITS_SCHEMA,
        "hold": HOLD_SCHEMA,
        "quota": QUOTA_SCHEMA,
    },
}

DENY_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "description": "Refuses its targets (all targets when none are listed) to clients that "
    "match ALL its matchers; wins over every allow entry.",
    "properties": dict(_MATCHERS),
}

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Who may flush what. Anything not allowed is refused with 459.",
    "properties": {
        "clients": {
            "type": "array",
            "items": CLIENT_ENTRY_SCHEMA,
            "default": [],
            "description": CLIENT_ENTRY_SCHEMA["description"] + " The first match decides.",
        },
        "deny": {
            "type": "array",
            "items": DENY_ENTRY_SCHEMA,
            "default": [],
            "description": DENY_ENTRY_SCHEMA["description"],
        },
    },
}

LIMITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Rate limits and flush coalescing, enforced in the core.",
    "properties": {
        "per_target": _rate(PER_TARGET_DESCRIPTION, DEFAULT_PER_TARGET),
        "per_client": _rate(PER_CLIENT_DESCRIPTION, DEFAULT_PER_CLIENT),
        "max_concurrent_flushes": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_MAX_CONCURRENT_FLUSHES,
            "description": "Backend runs at the same time, over all targets; more wait.",
        },
    },
}
