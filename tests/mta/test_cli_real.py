"""``etrn-bridge doctor`` and ``etrn-bridge flush`` against the real MTAs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mtalab import NODE, LabMta

NODE_TARGET = "customer.test"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def write_config(tmp_path: Path, backend: dict[str, object], user: str | None = None) -> Path:
    config = tmp_path / "etrn-bridge.yaml"
    config.write_text(
        (f"user: {user}\n" if user else "")
        + f"""\
listen: ["127.0.0.1:2599"]
audit: {{file: audit.jsonl}}
backend: {json.dumps(backend)}
policy:
  clients:
    - id: lab
      networks: ["127.0.0.0/8"]
      targets: ["customer.test", "@customer.test"]
"""
    )
    return config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etrn_bridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_doctor_ready(mta: LabMta, tmp_path: Path) -> None:
    done = cli("doctor", "-c", str(write_config(tmp_path, mta.backend_options)))
    assert done.returncode == 0, done.stdout
    assert "ready" in done.stdout and "FIX" not in done.stdout


def test_doctor_not_ready_for_an_unprivileged_user(mta: LabMta, tmp_path: Path) -> None:
    backend = {**mta.backend_options, "command_prefix": NOBODY}
    done = cli("doctor", "-c", str(write_config(tmp_path, backend)))
    assert done.returncode == 1
    assert "FIX" in done.stdout and "NOT ready" in done.stdout


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_doctor_checks_the_sudoers_policy_of_the_bridge_user(
    lab: dict[str, LabMta], sudoers: str, tmp_path: Path, name: str
) -> None:
    """doctor runs as root (sudo always works for root) but asks sudo about the
    bridge's own user: ready with the kit's sudoers line, FIX for a user without one."""
    backend = {**lab[name].backend_options, "command_prefix": ["/usr/bin/sudo", "-n"]}
    allowed = cli("doctor", "-c", str(write_config(tmp_path, backend, user=sudoers)))
    assert allowed.returncode == 0, allowed.stdout
    assert allowed.stdout.count(f"sudo lets {sudoers} run:") == 2
    refused = cli("doctor", "-c", str(write_config(tmp_path, backend, user="nobody")))
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout.count("FIX    sudo does not let nobody run:") == 2


def test_flush_dry_run_then_flush(mta: LabMta, tmp_path: Path) -> None:
    mta.inject()
    config = str(write_config(tmp_path, mta.backend_options))
    dry = cli("flush", "-c", config, "--dry-run", "customer.test")
    assert dry.returncode == 0
    assert "2 message(s) would be flushed" in dry.stdout
    assert mta.wait_received(set()) == {}
    done = cli("flush", "-c", config, "customer.test")
    assert done.returncode == 0, done.stdout
    assert set(mta.wait_received(NODE)) == NODE
    (record,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (record["event"], record["target"], record["ok"]) == (
        "admin_flush",
        "customer.test",
        True,
    )
    assert record["user"] == "root" and len(record["queue_ids"]) == 2


def test_flush_refuses_a_wildcard(tmp_path: Path) -> None:
    done = cli("flush", "-c", str(tmp_path / "unused.yaml"), "@")
    assert done.returncode == 2
