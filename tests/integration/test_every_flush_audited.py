"""Every request that reached the service is audited exactly once, and nothing is
parsed after a session decided to close (issue 7.1, 7.2, 7.5).

A real ``etrn-bridge serve`` with the command backend: a shell script appends
its argv to a file (one line per backend run) and sleeps as told.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridgekit import IO_TIMEOUT, Bridge, SmtpClient

FLUSH_SCRIPT = """\
#!/bin/sh
# $1: file of runs, $2: seconds to take, $3: the target
echo "$3" >> "$1"
sleep "$2"
echo "$3 done" >> "$1.done"
"""


def flush_bridge(
    start_bridge: Callable[..., Bridge],
    tmp_path: Path,
    seconds: float = 0.0,
    timeout: float = 30,
    extra: dict[str, Any] | None = None,
) -> tuple[Bridge, Path]:
    script = tmp_path / "flush.sh"
    script.write_text(FLUSH_SCRIPT)
    script.chmod(0o755)
    runs = tmp_path / "runs"
    backend = {
        "type": "command",
        "argv": [str(script), str(runs), str(seconds), "{etrn}"],
        "timeout": timeout,
    }
    return start_bridge({"backend": backend, **(extra or {})}), runs


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(condition: Callable[[], bool], timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def read_all_replies(client: SmtpClient) -> list[int]:
    codes = []
    while True:
        try:
            codes.append(client.read_reply().code)
        except (ConnectionError, TimeoutError):
            return codes


# 1: a flush whose client left --------------------------------------------------------


def test_clients_leaving_during_their_flush_are_each_audited_once(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge, runs = flush_bridge(start_bridge, tmp_path, seconds=0.3)
    leaving, staying = 20, 5
    for number in range(leaving):
        client = bridge.connect()
        client.sock.sendall(f"EHLO x\r\nETRN n{number}.customer.net\r\n".encode())
        assert client.read_reply().code == 250  # EHLO; the ETRN is in the service now
        time.sleep(0.05)
        client.close()
    replies = []
    for number in range(staying):
        client = bridge.session()
        replies.append(client.command(f"ETRN s{number}.customer.net").code)
    assert replies == [250] * staying
    wait_until(lambda: len(lines_of(runs.with_suffix(".done"))) == leaving + staying)
    wait_until(lambda: len(bridge.etrn_records()) >= leaving + staying)
    records = bridge.etrn_records()
    # audit records == replies sent + flushes whose client left
    assert len(records) == len(replies) + leaving == len(lines_of(runs))
    gone = [r for r in records if r["client_gone"]]
    assert sorted(r["target"] for r in gone) == sorted(f"n{i}.customer.net" for i in range(leaving))
    assert all(r["reply"] == 250 and r["exit_status"] == 0 and not r["cut"] for r in gone)


def test_sigterm_waits_for_a_flush_whose_client_left(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge, runs = flush_bridge(start_bridge, tmp_path, seconds=2)
    client = bridge.connect()
    client.sock.sendall(b"EHLO x\r\nETRN customer.example\r\n")
    assert client.read_reply().code == 250
    wait_until(lambda: len(lines_of(runs)) == 1)
    client.close()
    bridge.send_signal(signal.SIGTERM)
    assert bridge.process.wait(30) == 0
    assert lines_of(runs.with_suffix(".done")) == ["customer.example done"]
    (record,) = bridge.etrn_records()
    assert (record["reply"], record["client_gone"], record["cut"]) == (250, True, False)


def test_sigterm_waits_past_the_grace_for_a_flush_within_its_timeout(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    # Longer than serve's 10 s grace for replies, shorter than the backend timeout.
    bridge, runs = flush_bridge(start_bridge, tmp_path, seconds=12, timeout=30)
    client = bridge.session()
    client.send("ETRN customer.example")
    wait_until(lambda: len(lines_of(runs)) == 1)
    bridge.send_signal(signal.SIGTERM)
    assert bridge.process.wait(60) == 0
    # The session was closed after the grace, with a 421 in place of its reply ...
    assert client.read_reply().text.startswith("421 4.3.2 ")
    # ... and the flush ran to its end and was audited.
    assert lines_of(runs.with_suffix(".done")) == ["customer.example done"]
    (record,) = bridge.etrn_records()
    assert (record["reply"], record["client_gone"], record["cut"]) == (250, True, False)


def test_second_sigterm_cuts_a_running_flush_and_audits_it_as_cut(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge, runs = flush_bridge(start_bridge, tmp_path, seconds=60, timeout=120)
    client = bridge.session()
    client.send("ETRN customer.example")
    wait_until(lambda: len(lines_of(runs)) == 1)
    bridge.send_signal(signal.SIGTERM)
    bridge.wait_for_log("stopping")
    bridge.send_signal(signal.SIGTERM)
    assert bridge.process.wait(30) == 0
    # The client is told, rather than left hanging.
    assert client.read_reply().text.startswith("421 4.3.2 ")
    assert lines_of(runs.with_suffix(".done")) == []  # the program was killed
    (record,) = bridge.etrn_records()
    assert (record["client_gone"], record["cut"], record["target"]) == (
        True,
        True,
        "customer.example",
    )


# 2: nothing parsed after a decision to close ------------------------------------------


def test_nothing_runs_after_quit_in_the_same_write(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge, runs = flush_bridge(start_bridge, tmp_path)
    client = bridge.connect()
    client.sock.sendall(b"EHLO x\r\nQUIT\r\nETRN customer.example\r\n")
    assert read_all_replies(client) == [250, 221]
    time.sleep(0.5)  # give a wrongly parsed ETRN time to run
    assert lines_of(runs) == []
    assert bridge.etrn_records() == []


def test_nothing_runs_after_421_for_bad_commands(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge, runs = flush_bridge(start_bridge, tmp_path)
    client = bridge.session()
    client.sock.sendall(b"ETRN bad;arg\r\n" * 10 + b"ETRN customer.example\r\n")
    assert read_all_replies(client) == [501] * 10 + [421]
    time.sleep(0.5)
    assert lines_of(runs) == []
    records = bridge.etrn_records()
    assert [r["reply"] for r in records] == [501] * 10  # exactly the replies sent


def test_all_invalid_pipelined_run_audits_only_replies_sent(bridge: Bridge) -> None:
    client = bridge.session()
    client.sock.sendall(b"ETRN bad;arg\r\n" * 11)
    assert read_all_replies(client) == [501] * 10 + [421]
    time.sleep(0.5)
    assert len(bridge.etrn_records()) == 10


# 5: over-long lines in every session state --------------------------------------------


def test_over_long_etrn_is_refused_and_audited_in_every_state(bridge: Bridge) -> None:
    def over_long(client: SmtpClient, size: int) -> int:
        return client.command(b"ETRN customer.example" + b" " * size + b"x").code

    before_helo = bridge.connect()
    assert over_long(before_helo, 600) == 501
    assert over_long(before_helo, 5000) == 501
    assert before_helo.command(b"NOOP " + b"x" * 5000).code == 500
    after_helo = bridge.connect()
    assert after_helo.command("HELO client.test").code == 250
    assert over_long(after_helo, 600) == 501
    assert over_long(after_helo, 5000) == 501
    after_ehlo = bridge.session()
    assert over_long(after_ehlo, 600) == 501
    assert over_long(after_ehlo, 5000) == 501
    assert after_ehlo.command("ETRN customer.example").code == 250
    records = bridge.etrn_records()
    assert [r["reply"] for r in records] == [501] * 6 + [250]
    assert all(r["reason"] == "command line too long" for r in records[:6])


def test_zone_id_literal_is_refused_over_smtp(bridge: Bridge) -> None:
    client = bridge.session()
    assert client.command("ETRN [IPv6:::1%$(id)]").text == "501 5.5.4 Syntax Error in Parameters"
    (record,) = bridge.etrn_records()
    assert record["target"] is None
