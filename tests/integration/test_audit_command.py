"""``etrn-bridge audit`` as an admin runs it: a real bridge writes the audit from
real ETRNs, the files are rotated as logrotate names them, the command runs as
a subprocess and its table and JSON lines count what was sent."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bridgekit import Bridge


def run_audit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [sys.executable, "-m", "etrn_bridge", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def send(bridge: Bridge, *arguments: str) -> list[int]:
    client = bridge.session()
    codes = [client.command(f"ETRN {argument}").code for argument in arguments]
    client.command("QUIT")
    return codes


def rotate(bridge: Bridge, compress_older: bool) -> None:
    """What logrotate does with delaycompress: .1 -> .2.gz, live -> .1, SIGHUP reopens."""
    live = bridge.audit_path
    first = live.with_name(live.name + ".1")
    if compress_older and first.exists():
        with first.open("rb") as plain, gzip.open(live.with_name(live.name + ".2.gz"), "wb") as gz:
            shutil.copyfileobj(plain, gz)
        first.unlink()
    live.rename(first)
    reopened = sum("audit file re-opened" in line for line in bridge.log_lines)
    bridge.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("audit file re-opened" in line for line in bridge.log_lines) == reopened:
        assert time.monotonic() < deadline, "SIGHUP did not re-open the audit file"
        time.sleep(0.02)


def test_summary_over_rotated_files_counts_what_was_sent(
    start_bridge: Callable[..., Bridge],
) -> None:
    bridge = start_bridge()
    assert send(bridge, "customer.example", "other.example") == [250, 459]
    rotate(bridge, compress_older=False)
    assert send(bridge, "customer.example", "www.customer.net", "bad..name") == [250, 250, 501]
    rotate(bridge, compress_older=True)
    assert send(bridge, "customer.example", "other.example") == [250, 459]
    names = sorted(p.name for p in bridge.directory.glob("audit.jsonl*"))
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2.gz"]

    done = run_audit("-c", str(bridge.config_path), "--json")

    assert done.returncode == 0, done.stderr
    rows = {(r["client"], r["target"]): r for r in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == {
        ("127.0.0.1", "customer.example"),
        ("127.0.0.1", "other.example"),
        ("127.0.0.1", "www.customer.net"),
        ("127.0.0.1", "-"),
    }
    customer = rows["127.0.0.1", "customer.example"]
    assert (customer["requests"], customer["allowed"], customer["denied"]) == (3, 3, 0)
    assert rows["127.0.0.1", "other.example"]["denied"] == 2
    assert rows["127.0.0.1", "-"]["invalid"] == 1
    last = max(r["ts"] for r in bridge.etrn_records() if r["target"] == "customer.example")
    assert customer["last_seen"] == last
    assert "7 records matched" in done.stderr and "in 3 files" in done.stderr

    table = run_audit("-c", str(bridge.config_path), "--status", "denied")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "client", "target", "requests", "allowed", "denied", "failed", "invalid", "messages",
        "last_seen",
    ]  # fmt: skip
    assert [line.split()[:5] for line in lines[1:]] == [
        ["127.0.0.1", "other.example", "2", "0", "2"]
    ]


def test_hostile_content_is_escaped_and_malformed_lines_counted(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    record = {
        "ts": "2026-11-29T10:00:00.000Z",
        "event": "etrn",
        "client_ip": "127.0.0.1\x1b]0;pwned\x07",
        "target": "x\u202e.example",
        "rule": None,
        "status": "denied",
        "reply": 459,
        "pending": None,
        "coalesced": False,
    }
    audit.write_bytes(json.dumps(record).encode() + b"\n" + b"\x1b[2J{not json\n" + b"\xff\xfe\n")

    table = run_audit("--file", str(audit))
    as_json = run_audit("--file", str(audit), "--json")

    assert table.returncode == as_json.returncode == 0
    for output in (table.stdout, as_json.stdout):
        assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
    assert "\\x1b]0;pwned\\x07" in table.stdout
    assert json.loads(as_json.stdout)["client"] == record["client_ip"]
    assert f"2 malformed lines skipped (first at {audit}:2)" in table.stderr


def test_exit_status(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("")
    assert run_audit("--file", str(audit)).returncode == 1  # nothing matched
    assert run_audit("--file", str(tmp_path / "missing.jsonl")).returncode == 2
    bad_time = run_audit("--file", str(audit), "--since", "yesterday")
    assert bad_time.returncode == 2 and "not a time" in bad_time.stderr
    assert run_audit("--file", str(audit), "--client", "not-an-ip").returncode == 2
    assert run_audit("--file", str(audit), "--target", "a..b").returncode == 2
    assert run_audit("--file", str(audit), "--status", "bogus").returncode == 2
