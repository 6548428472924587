"""ETRN through the real bridge (``python -m etrn_bridge serve``) to the real MTAs.

The bridge runs as a subprocess on a free loopback port with the backend of
the MTA under test; the client is smtplib, as fetchmail or Net::SMTP would be.
"""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mtalab import NAMED_QUEUE, NODE, QUEUED, RECIPIENTS, SUBTREE, LabMta

POLICY_TARGETS = [
    "customer.test",
    "@customer.test",
    "sub.customer.test",
    "nothing.test",
    "#" + NAMED_QUEUE,
]


@dataclass
class Bridge:
    port: int
    audit: Path

    def etrn(self, argument: str) -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test") as smtp:
            smtp.ehlo()
            assert smtp.has_extn("etrn")
            code, text = smtp.docmd("ETRN", argument)
        return code, text.decode()

    def records(self, timeout: float = 10, count: int = 1) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.audit.read_text().splitlines() if self.audit.exists() else []
            if len(lines) >= count or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"bridge exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("bridge did not listen")


@contextmanager
def running_bridge(
    tmp_path: Path,
    backend: dict[str, object],
    user: str | None = None,
    targets: list[str] = POLICY_TARGETS,
    extra: str = "",
) -> Iterator[Bridge]:
    """``etrn-bridge serve`` as root (binding, opening the audit), as ``user`` after;
    ``extra``: more top-level config."""
    port = free_port()
    config = tmp_path / "etrn-bridge.yaml"
    config.write_text(
        f"""\
listen: ["127.0.0.1:{port}"]
{f"user: {user}" if user else ""}
backend: {json.dumps(backend)}
audit: {{file: {tmp_path / "audit.jsonl"}}}
policy:
  clients:
    - id: lab
      networks: ["127.0.0.0/8"]
      targets: {json.dumps(targets)}
{extra}"""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, process)
        yield Bridge(port, tmp_path / "audit.jsonl")
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def bridge(mta: LabMta, tmp_path: Path) -> Iterator[Bridge]:
    with running_bridge(tmp_path, mta.backend_options) as running:
        yield running


def test_etrn_node(mta: LabMta, bridge: Bridge) -> None:
    mta.inject()
    code, text = bridge.etrn("customer.test")
    assert code == 253 and "2 pending messages" in text
    received = mta.wait_received(NODE)
    assert set(received) == NODE
    assert all(received[rcpt] == mta.sent[rcpt] for rcpt in NODE)
    assert mta.queued_recipients() == set(RECIPIENTS) - NODE
    record = bridge.records()[0]
    assert record["reply"] == 253 and record["pending"] == 2
    assert len(record["queue_ids"]) == 2  # type: ignore[arg-type]


def test_message_also_addressed_elsewhere_goes_whole_and_is_audited(
    mta: LabMta, bridge: Bridge
) -> None:
    """Measured on all three: a flush delivers the whole message, the recipient at
    another (even non-eligible, held) domain included. The audit says so."""
    both = ("user@customer.test", "other@noflush.test")
    mta.inject(both, together=True)
    code, text = bridge.etrn("customer.test")
    assert code == 253 and "1 pending messages" in text, text
    assert set(mta.wait_received(set(both))) == set(both)
    record = bridge.records()[0]
    assert (record["pending"], record["shared_messages"]) == (1, 1)


def test_etrn_subtree(mta: LabMta, bridge: Bridge) -> None:
    mta.inject()
    code, text = bridge.etrn("@customer.test")
    assert code == 253 and "3 pending messages" in text
    assert set(mta.wait_received(SUBTREE)) == SUBTREE
    assert mta.queued_recipients() == set(RECIPIENTS) - SUBTREE


def test_etrn_nothing_waiting(mta: LabMta, bridge: Bridge) -> None:
    mta.inject()
    code, _ = bridge.etrn("nothing.test")
    assert code == 251
    assert mta.wait_received(set()) == {}


def test_etrn_denied_moves_nothing(mta: LabMta, bridge: Bridge) -> None:
    mta.inject()
    code, _ = bridge.etrn("mycustomer.test")
    assert code == 459
    assert mta.wait_received(set()) == {}
    assert mta.queued_recipients() == set(RECIPIENTS)


@pytest.mark.parametrize("argument", ["@", "*", "customer.test extra"])
def test_etrn_malformed_reaches_no_backend(mta: LabMta, bridge: Bridge, argument: str) -> None:
    mta.inject()
    code, _ = bridge.etrn(argument)
    assert code == 501
    assert mta.wait_received(set()) == {}


def test_etrn_with_mta_stopped(mta: LabMta, bridge: Bridge) -> None:
    """Postfix down: 458 with postqueue's own words audited. Exim and Sendmail
    need no daemon for -M / -qI: they deliver, and the bridge says so (253)."""
    mta.inject()
    mta.script("stop")
    mta.script("sink-start")  # stop also stops the sink
    try:
        code, _ = bridge.etrn("customer.test")
        record = bridge.records()[0]
        if mta.name == "postfix":
            assert code == 458
            assert record["exit_status"] == 69
            assert "mail system is down" in str(record["detail"])
            assert mta.wait_received(set()) == {}
        else:
            assert code == 253
            assert set(mta.wait_received(NODE)) == NODE
    finally:
        mta.script("start")


def test_etrn_named_queue(mta: LabMta, tmp_path: Path) -> None:
    """Exim's named queue / Sendmail's queue group "acme" (queued.test's mail,
    lab config); Postfix maps the name to the domain (queues:)."""
    mta.inject()
    mta.inject((QUEUED,), queue=NAMED_QUEUE)
    backend = {**mta.backend_options}
    if mta.name == "postfix":
        backend["queues"] = {NAMED_QUEUE: ["queued.test"]}
    with running_bridge(tmp_path, backend) as bridge:
        code, text = bridge.etrn("#" + NAMED_QUEUE)
        assert code == 253 and "1 pending message" in text, text
        received = mta.wait_received({QUEUED})
        assert set(received) == {QUEUED} and received[QUEUED] == mta.sent[QUEUED]
        assert bridge.records()[0]["pending"] == 1
    assert mta.queued_recipients() == set(RECIPIENTS)  # the default queue stays


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_unprivileged_bridge_through_sudo(
    lab: dict[str, LabMta], sudoers: str, tmp_path: Path, name: str
) -> None:
    """serve drops to the kits' user; the kit README's sudoers line lets
    ``sudo -n`` run exactly the MTA commands the bridge needs as root."""
    mta = lab[name]
    mta.reset()
    mta.inject()
    sudo = {**mta.backend_options, "command_prefix": ["/usr/bin/sudo", "-n"]}
    with running_bridge(tmp_path, sudo, user=sudoers) as bridge:
        code, text = bridge.etrn("customer.test")
        assert code == 253 and "2 pending messages" in text, text
        assert set(mta.wait_received(NODE)) == NODE
        assert mta.queued_recipients() == set(RECIPIENTS) - NODE
        assert bridge.records()[0]["reply"] == 253


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_unprivileged_bridge_without_sudo(
    lab: dict[str, LabMta], sudoers: str, tmp_path: Path, name: str
) -> None:
    """The same user calling the MTA directly: 458, the MTA's refusal audited."""
    mta = lab[name]
    mta.reset()
    mta.inject()
    with running_bridge(tmp_path, mta.backend_options, user=sudoers) as bridge:
        code, _ = bridge.etrn("customer.test")
        record = bridge.records()[0]
    assert code == 458
    # each MTA's own words, from both streams (Sendmail's chdir error is on stdout)
    refusal = {
        "exim": ["exim: permission denied"],
        "sendmail": ["requires special privileges", "mqueue/): Permission denied"],
    }
    for words in refusal[name]:
        assert words in str(record["detail"]), record["detail"]
    assert mta.wait_received(set()) == {}
