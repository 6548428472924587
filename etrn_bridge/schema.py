"""The JSON Schema of the configuration file: the single description of its shape.

``etrn-bridge schema`` prints it for editors (yaml-language-server), and the
loader validates every file against it, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from etrn_bridge import defaults
from etrn_bridge.admission import CONNECTIONS_SCHEMA
from etrn_bridge.backends.base import registered_backends
from etrn_bridge.feeds.settings import MILTER_SCHEMA
from etrn_bridge.hookconfig import HOOKS_SCHEMA
from etrn_bridge.metrics.settings import metrics_schema
from etrn_bridge.policy.schema import LIMITS_SCHEMA, POLICY_SCHEMA
from etrn_bridge.queueindex.settings import INDEX_SCHEMA
from etrn_bridge.sharedstate.settings import CLUSTER_SCHEMA

SCHEMA_ID = "https://etrn-bridge.invalid/schema/config.json"

# "127.0.0.1:2525", "[::1]:2525", "0.0.0.0:25"
_LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):[0-9]{1,5}$"


def _backend_schema() -> dict[str, Any]:
    variants = []
    for name, factory in sorted(registered_backends().items()):
        options = factory.options_schema
        variants.append(
            {
                "if": {"properties": {"type": {"const": name}}},
                "then": {
                    "properties": {"type": {"const": name}, **options.get("properties", {})},
                    "required": ["type", *options.get("required", [])],
                    "additionalProperties": False,
                },
            }
        )
    return {
        "type": "object",
        "description": "How the MTA flushes: one of the registered backend types.",
        "properties": {"type": {"type": "string", "enum": sorted(registered_backends())}},
        "required": ["type"],
        "allOf": variants,
    }


def config_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "etrn-bridge configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "listen": {
                "type": "array",
                "items": {"type": "string", "pattern": _LISTEN_PATTERN},
                "minItems": 1,
                "default": list(defaults.LISTEN),
                "description": (
                    "Addresses of the ETRN listener: 'IPv4:port' or '[IPv6]:port'. Left out "
                    "with 'hooks' configured: no listener. Not used when systemd passes the "
                    "sockets (etrn-bridge.socket, socket activation)."
                ),
            },
            "hostname": {
                "type": "string",
                "minLength": 1,
                "description": "Name in the greeting and EHLO reply (default: this host's FQDN).",
            },
            "user": {
                "type": "string",
                "minLength": 1,
                "description": "Unprivileged user to switch to after binding the ports "
                "(setgroups, setgid, setuid). Default: keep the starting user.",
            },
            "workers": {
                "type": "integer",
                "minimum": 1,
                "maximum": 64,
                "default": 1,
                "description": "Processes serving the listen sockets (as Postfix runs several "
                "smtpd). The parent binds one SO_REUSEPORT socket per address and worker (the "
                "kernel spreads connections across them), drops privileges, forks the workers "
                "on their sockets, forwards SIGTERM/SIGINT/SIGHUP to them and exits when all "
                "have drained. SO_REUSEPORT lets another process of the same user bind the "
                "port too: run one bridge per address. A worker that dies stops the others "
                "(exit status 1): the service manager restarts the whole. Rate limits, "
                "coalescing of identical ETRNs and max_concurrent_flushes are kept per "
                "worker, so with N workers a client may get up to N times its limit and "
                "one target up to N flush runs per window (cluster: shares them). Every "
                "worker appends whole lines to the same audit file. The hook sockets "
                "(hooks:) are bound once and every worker accepts from them.",
            },
            "event_loop": {
                "type": "string",
                "enum": ["asyncio", "uvloop"],
                "default": "asyncio",
                "description": "Event loop of each worker: 'uvloop' needs the optional extra "
                "(pip install 'etrn-bridge[uvloop]') and refuses to start without it.",
            },
            "backend": _backend_schema(),
            "audit": {
                "type": "object",
                "additionalProperties": False,
                "description": "Where the record of every request goes.",
                "properties": {
                    "file": {
                        "type": "string",
                        "description": "JSON-lines audit file, relative to the config file's "
                        "directory; re-opened on SIGHUP (log rotation). Default: none.",
                    },
                    "syslog": {
                        "type": "boolean",
                        "default": False,
                        "description": "Also send each record to syslog (facility mail).",
                    },
                    "syslog_address": {
                        "type": "string",
                        "default": defaults.SYSLOG_ADDRESS,
                        "description": "Syslog socket.",
                    },
                },
            },
            "tls": {
                "type": "object",
                "additionalProperties": False,
                "description": "STARTTLS for the listener (required for AUTH).",
                "required": ["cert", "key"],
                "properties": {
                    "cert": {"type": "string", "description": "PEM certificate chain."},
                    "key": {"type": "string", "description": "PEM private key."},
                    "client_ca": {
                        "type": "string",
                        "description": "PEM CA bundle; when set, client certificates are "
                        "requested and verified (for tls_fingerprints).",
                    },
                },
            },
            "auth": {
                "type": "object",
                "additionalProperties": False,
                "description": "SMTP AUTH (after STARTTLS); identities for policy users.",
                "required": ["passwords_file"],
                "properties": {
                    "passwords_file": {
                        "type": "string",
                        "description": "'user:hash' lines, scrypt or argon2 hashes.",
                    }
                },
            },
            "session": {
                "type": "object",
                "additionalProperties": False,
                "description": "Limits of one SMTP session.",
                "properties": {
                    "idle_timeout": {
                        "type": "number",
                        "description": "Seconds a client may stay silent before 421.",
                        "exclusiveMinimum": 0,
                        "default": defaults.IDLE_TIMEOUT,
                    },
                    "max_line_length": {
                        "type": "integer",
                        "description": "Longest command line accepted, CRLF included.",
                        "minimum": 64,
                        "default": defaults.MAX_COMMAND_LINE,
                    },
                    "max_etrn": {
                        "type": "integer",
                        "description": "ETRN commands one session may send before 421.",
                        "minimum": 1,
                        "default": defaults.MAX_ETRN_PER_SESSION,
                    },
                    "max_bad_commands": {
                        "type": "integer",
                        "description": "Unknown or refused commands before 421.",
                        "minimum": 1,
                        "default": defaults.MAX_BAD_COMMANDS,
                    },
                },
            },
            "connections": CONNECTIONS_SCHEMA,
            "limits": LIMITS_SCHEMA,
            "index": INDEX_SCHEMA,
            "milter": MILTER_SCHEMA,
            "policy": POLICY_SCHEMA,
            "metrics": metrics_schema(_LISTEN_PATTERN),
            "cluster": CLUSTER_SCHEMA,
            "hooks": HOOKS_SCHEMA,
        },
    }
