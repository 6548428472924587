"""The ``metrics:`` config section: its JSON Schema fragment and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The address the docs and examples use; there is no default (no section: no metrics).
EXAMPLE_METRICS_LISTEN = "127.0.0.1:9469"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    host: str
    port: int  # worker i of ``workers: N`` serves on port + i (0: any free port each)


def metrics_schema(listen_pattern: str) -> dict[str, Any]:
    """The section's schema; ``listen_pattern`` is the one the ``listen`` key uses."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Prometheus metrics over HTTP (GET /metrics). Off when the section is "
        "absent. Requests, decisions, backend runs, latencies, reloads, open sessions.",
        "required": ["listen"],
        "properties": {
            "listen": {
                "type": "string",
                "pattern": listen_pattern,
                "description": "Address of the metrics endpoint, 'IPv4:port' or '[IPv6]:port' "
                f"(e.g. '{EXAMPLE_METRICS_LISTEN}'). It is bound after the ETRN sockets and "
                "after dropping privileges, so use a port above 1023. With workers: N each "
                "worker serves its own counts on port + its index (0 to N-1): scrape all N "
                "and sum in PromQL.",
            }
        },
    }
