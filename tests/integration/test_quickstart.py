"""The README's quick start: the shipped example config serves and answers as documented."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from bridgekit import Bridge, run_send

EXAMPLE = Path(__file__).parents[2] / "examples" / "etrn-bridge.yaml"


def test_example_config_serves_allows_and_denies(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    config: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    # Only the addresses and the audit file move: the policy, limits and backend are the example's.
    config["listen"] = ["127.0.0.1:0"]
    config["audit"] = {"file": str(tmp_path / "audit.jsonl")}
    bridge = start_bridge(config)
    assert bridge.config["backend"] == {"type": "auto"}

    result = run_send(
        bridge.port, "127.0.0.1", "customer.example", "mail.customer.net", "old.customer.net"
    )

    replies = [line.split(": ", 1)[1][:3] for line in result.stdout.splitlines()]
    # Whatever MTA "auto" found (or the log backend), the allowed ones start or report 251/253.
    assert replies[0] in {"250", "251", "253"} and replies[1] in {"250", "251", "253"}
    assert replies[2] == "459"  # the example's deny entry "retired"
    assert result.returncode == 1
    records = bridge.etrn_records()
    assert [(r["target"], r["rule"]) for r in records] == [
        ("customer.example", "loopback"),
        ("mail.customer.net", "loopback"),
        ("old.customer.net", "retired"),
    ]
    assert any(
        "auto backend: using" in line or "using the log backend" in line
        for line in bridge.log_lines
    )
