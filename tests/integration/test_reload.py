"""SIGHUP reload against the real server: swap when valid, keep the old policy when not,
and sessions already open keep the policy they started with."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridgekit import BASE_CONFIG, Bridge, merge_config, write_config

RELOAD_TIMEOUT = 10.0
FREED = "reload: the replaced policy is freed"
ALLOW_OTHER = {
    "policy": {
        "clients": [
            {"id": "loopback-other", "networks": ["127.0.0.0/8"], "targets": ["other.example"]}
        ]
    }
}


def reload(bridge: Bridge, config: dict[str, Any] | str) -> dict[str, Any]:
    """Rewrite the config file, SIGHUP, and return the reload's audit record."""
    if isinstance(config, str):
        bridge.config_path.write_text(config)
    else:
        write_config(bridge.directory, merge_config(BASE_CONFIG, config))
    before = len(_reloads(bridge))
    bridge.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        records = _reloads(bridge)
        if len(records) > before:
            return records[-1]
        time.sleep(0.02)
    raise AssertionError("no reload audit record")


def _reloads(bridge: Bridge) -> list[dict[str, Any]]:
    return [r for r in bridge.audit() if r["event"] == "reload"]


def etrn_code(bridge: Bridge, argument: str) -> int:
    return bridge.session().command(f"ETRN {argument}").code


def test_valid_file_is_swapped_in(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge()
    assert etrn_code(bridge, "other.example") == 459

    record = reload(bridge, ALLOW_OTHER)

    assert record["ok"] is True and record["clients"] == 1
    assert etrn_code(bridge, "other.example") == 250
    assert etrn_code(bridge, "customer.example") == 459


def test_invalid_file_keeps_the_old_policy_and_audits_the_errors(
    start_bridge: Callable[..., Bridge],
) -> None:
    bridge = start_bridge()
    broken = bridge.config_path.read_text().replace("127.0.0.0/8", "127.0.0.1/8")

    record = reload(bridge, broken + "surprise: 1\n")

    assert record["ok"] is False
    assert len(record["errors"]) == 2
    assert any("networks[0]: '127.0.0.1/8'" in e for e in record["errors"])
    assert any(": surprise: unknown key" in e for e in record["errors"])
    assert etrn_code(bridge, "customer.example") == 250
    assert bridge.process.poll() is None
    bridge.wait_for_log("previous policy stays in force")


def test_session_in_flight_keeps_the_policy_it_started_with(
    start_bridge: Callable[..., Bridge],
) -> None:
    bridge = start_bridge()
    before = bridge.session()

    assert reload(bridge, ALLOW_OTHER)["ok"] is True

    after = bridge.session()
    assert before.command("ETRN customer.example").code == 250
    assert before.command("ETRN other.example").code == 459
    assert after.command("ETRN customer.example").code == 459
    assert after.command("ETRN other.example").code == 250


def test_the_replaced_policy_is_freed_once_its_last_session_ends(
    start_bridge: Callable[..., Bridge],
) -> None:
    """Freed off the event loop by the release thread, which waits for the sessions
    still using it (the startup policy included: nothing else may keep it)."""
    bridge = start_bridge()
    before = bridge.session()
    assert reload(bridge, ALLOW_OTHER)["ok"] is True
    assert before.command("ETRN customer.example").code == 250  # still the old policy
    assert not any(FREED in line for line in bridge.log_lines)

    assert before.command("QUIT").code == 221
    before.close()
    bridge.wait_for_log(FREED)


def test_serve_never_starts_on_an_invalid_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "listen: ['127.0.0.1:0']\npolicy: {clients: [{id: open, targets: [a.example]}]}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert f"{config}:2:20: policy.clients[0]: dangerous" in result.stderr
