"""The ``command`` backend end to end: ETRN over SMTP -> argv -> exit status -> reply + audit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from bridgekit import Bridge

SCRIPT = """\
import json, sys, time
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(sys.argv[2:]) + "\\n")
time.sleep(float(sys.argv[3]) if sys.argv[2] == "sleep" else 0)
sys.exit(int(sys.argv[3]) if sys.argv[2] == "exit" else 0)
"""


def command_bridge(
    start_bridge: Callable[..., Bridge], tmp_path: Path, argv: list[str], timeout: float = 10
) -> Bridge:
    script = tmp_path / "dump_argv.py"
    script.write_text(SCRIPT)
    backend = {"type": "command", "argv": [sys.executable, str(script), *argv], "timeout": timeout}
    return start_bridge({"backend": backend})


def test_argv_arrives_intact_one_element_per_placeholder(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    calls = tmp_path / "calls.jsonl"
    bridge = command_bridge(start_bridge, tmp_path, [str(calls), "{etrn}", "{kind}", "{target}"])
    client = bridge.session()
    for argument in ("customer.example", "@customer.net", "#customerq", "  CUSTOMER.example."):
        assert client.command(f"ETRN {argument}").code == 250
    assert client.command("ETRN customer.example;rm -rf /").code == 501
    assert client.command("ETRN other.example").code == 459
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argvs == [
        ["customer.example", "node", "customer.example"],
        ["@customer.net", "subtree", "customer.net"],
        ["#customerq", "queue", "customerq"],
        ["customer.example", "node", "customer.example"],
    ]
    records = bridge.etrn_records()
    assert [r["exit_status"] for r in records[:4]] == [0, 0, 0, 0]
    assert all(r["backend"] == "command" for r in records[:4])
    assert records[4]["backend"] is None and records[5]["backend"] is None


def test_nonzero_exit_gets_458(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    bridge = command_bridge(start_bridge, tmp_path, [str(tmp_path / "c"), "exit", "75"])
    reply = bridge.session().command("ETRN customer.example")
    assert reply.text == "458 4.3.0 Unable to queue messages for node customer.example"
    record = bridge.etrn_records()[0]
    assert (record["reply"], record["exit_status"], record["decision"]) == (458, 75, "allow")


def test_timeout_gets_458(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    bridge = command_bridge(start_bridge, tmp_path, [str(tmp_path / "c"), "sleep", "30"], 0.5)
    reply = bridge.session().command("ETRN customer.example")
    assert reply.code == 458
    record = bridge.etrn_records()[0]
    assert record["detail"] == "timed out" and record["exit_status"] is None
    assert record["duration_ms"] < 10_000


def test_missing_executable_gets_458_with_detail(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-program"
    bridge = start_bridge({"backend": {"type": "command", "argv": [str(missing), "{target}"]}})
    reply = bridge.session().command("ETRN customer.example")
    assert reply.text == "458 4.3.0 Unable to queue messages for node customer.example"
    assert str(missing) not in reply.text  # the reason is for the audit only
    record = bridge.etrn_records()[0]
    assert str(missing) in record["detail"] and "No such file" in record["detail"]
