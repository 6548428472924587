"""The shipped logrotate snippet, run by the real ``logrotate`` against a real
``serve`` under load: every audit record lands exactly once, whole, in one of
the files (current, rotated, compressed).

Three things in the snippet are the server's and are replaced here: the log
path, the ``su`` user (the owner of the test's directory) and the postrotate
command (``systemctl reload`` → ``kill -HUP`` of the test's bridge).
"""

from __future__ import annotations

import grp
import gzip
import json
import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bridgekit import REPO_ROOT, Bridge, SmtpClient, require_program

from etrn_bridge.defaults import MAX_ETRN_PER_SESSION

SNIPPET = REPO_ROOT / "logrotate" / "etrn-bridge"
SERVER_LOG_GLOB = "/var/log/etrn-bridge/*.jsonl"
CLIENTS = 4
ROTATIONS = 5


def snippet_for(bridge: Bridge, log_dir: Path) -> str:
    text = SNIPPET.read_text()
    assert SERVER_LOG_GLOB in text and "systemctl reload etrn-bridge.service" in text
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = text.replace(SERVER_LOG_GLOB, f"{log_dir}/*.jsonl")
    text = re.sub(r"^(\s*)su .*$", rf"\1su {user} {group}", text, flags=re.M)
    return re.sub(
        r"^(\s*)systemctl reload .*$", rf"\1kill -HUP {bridge.process.pid}", text, flags=re.M
    )


def send_load(
    bridge: Bridge, client_no: int, stop: threading.Event, sent: list[str], errors: list[str]
) -> None:
    """ETRN after ETRN, each for a name of its own (policy: @customer.net), in
    sessions of at most session.max_etrn commands."""
    try:
        count = 0
        while not stop.is_set():
            client = SmtpClient(bridge.host, bridge.port)
            client.ehlo()
            for _ in range(MAX_ETRN_PER_SESSION):
                target = f"n{count}.c{client_no}.customer.net"
                reply = client.command(f"ETRN {target}")
                assert reply.code == 250, reply
                sent.append(target)
                count += 1
            client.close()
    except Exception as exc:
        errors.append(repr(exc))


def read_records(log_dir: Path) -> list[dict[str, object]]:
    """Every line of every file, current, rotated and .gz: each must be whole JSON."""
    records = []
    for path in sorted(log_dir.iterdir()):
        if path.name.endswith(".gz"):
            data = gzip.decompress(path.read_bytes())
        elif ".jsonl" in path.name:
            data = path.read_bytes()
        else:
            continue
        assert data.endswith(b"\n"), f"{path.name} ends inside a record"
        records += [json.loads(line) for line in data.splitlines()]
    return records


def test_rotation_under_load_loses_and_splits_nothing(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    logrotate = require_program("logrotate")
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o750)
    bridge = start_bridge({"audit": {"file": str(log_dir / "audit.jsonl")}})
    config = tmp_path / "logrotate.conf"
    config.write_text(snippet_for(bridge, log_dir))
    state = tmp_path / "logrotate.state"

    stop = threading.Event()
    sent: list[list[str]] = [[] for _ in range(CLIENTS)]
    errors: list[str] = []
    load = [
        threading.Thread(target=send_load, args=(bridge, n, stop, sent[n], errors))
        for n in range(CLIENTS)
    ]
    for thread in load:
        thread.start()
    try:
        for _ in range(ROTATIONS):
            time.sleep(1.1)  # dateformat has seconds: one rotation per second
            # -f: rotate now, whatever "daily" says
            subprocess.run([logrotate, "-f", "-s", str(state), str(config)], check=True)
            bridge.wait_for_log("SIGHUP: audit file re-opened")
            bridge.log_lines.clear()
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in load:
            thread.join(30)

    assert errors == []
    rotated = [p.name for p in log_dir.iterdir() if p.name != "audit.jsonl"]
    assert len(rotated) == ROTATIONS, rotated
    assert sum(name.endswith(".gz") for name in rotated) == ROTATIONS - 1  # delaycompress
    records = read_records(log_dir)
    targets = [r["target"] for r in records if r["event"] == "etrn"]
    expected = [target for per_client in sent for target in per_client]
    assert len(expected) > ROTATIONS * CLIENTS  # there was load across the rotations
    assert sorted(targets) == sorted(expected)  # none lost, none twice
    assert sum(r["event"] == "reload" for r in records) == ROTATIONS
