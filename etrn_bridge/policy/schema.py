"""JSON Schema of the ``policy:`` and ``limits:`` sections (part of ``etrn_bridge.schema``)."""

from __future__ import annotations

from typing import Any

_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}

CLIENT_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "description": "Names the entry in audits."},
        "networks": {**_STRINGS, "description": "IPv4/IPv6 CIDRs the client address is in."},
        "targets": {**_STRINGS, "description": "'node', '@node' (and subdomains), '#queue'."},
    },
}

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "clients": {"type": "array", "items": CLIENT_ENTRY_SCHEMA},
    },
}

LIMITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {},
}
