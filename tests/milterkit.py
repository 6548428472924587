"""A running ``etrn-bridge milter`` for tests, and what they need around it.

pymilter is the ``[milter]`` extra (built against libmilter-dev). As a normal
user without it, the milter tests are skipped with the reason; as root (CI,
where scripts/milter-extra.sh installs it) a missing pymilter FAILS them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

START_TIMEOUT = 20.0
READY = "ready: milter"
# The Exim kit's port (exim/feed-acl.conf.snippet).
EXIM_FEED_PORT = 10125


def need_pymilter() -> None:
    try:
        import Milter  # noqa: F401
    except ImportError:
        if os.geteuid() == 0:
            pytest.fail("pymilter is not installed: run scripts/milter-extra.sh")
        pytest.skip("pymilter (the [milter] extra) needs libmilter-dev: scripts/milter-extra.sh")


@dataclass
class MilterProcess:
    process: subprocess.Popen[bytes]
    log: Path
    config: Path
    index: Path
    socket: Path
    exim_feed: tuple[str, int]
    audit: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def milter_config(directory: Path, policy: dict[str, Any], **milter: Any) -> dict[str, Any]:
    return {
        "backend": {"type": "log"},
        "audit": {"file": str(directory / "audit.jsonl")},
        "index": {"file": str(directory / "index.sqlite")},
        "milter": {
            "socket": f"unix:{directory / 'milter.sock'}",
            "exim_feed": f"127.0.0.1:{EXIM_FEED_PORT}",
            "umask": "000",
            **milter,
        },
        "policy": policy,
    }


def start_milter(directory: Path, config: dict[str, Any]) -> MilterProcess:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "milter.yaml"
    path.write_text(yaml.safe_dump(config))
    log = directory / "milter.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "etrn_bridge", "milter", "-c", str(path), "-v"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    running = MilterProcess(
        process,
        log,
        path,
        Path(config["index"]["file"]),
        Path(config["milter"]["socket"].removeprefix("unix:")),
        ("127.0.0.1", EXIM_FEED_PORT),
        Path(config["audit"]["file"]),
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if READY in log.read_text() and (
            not config["milter"].get("enabled", True) or running.socket.exists()
        ):
            return running
        if process.poll() is not None:
            raise AssertionError("milter did not start:\n" + running.log_text())
        time.sleep(0.05)
    running.stop()
    raise AssertionError("milter did not become ready:\n" + running.log_text())
