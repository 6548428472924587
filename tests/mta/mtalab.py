"""The lab's MTAs as seen by the tests: ports, programs, sink, queueing mail.

Shared by the real-MTA tests and their conftest (tests/mta/lab has the scripts).
"""

from __future__ import annotations

import email.policy
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from etrn_bridge.backends.base import Backend, create_backend
from etrn_bridge.backends.exim import EximBackend, parse_exim_bp
from etrn_bridge.backends.mta import MtaBackend
from etrn_bridge.backends.postfix import DEFAULT_POSTSUPER, PostfixBackend, parse_postqueue_json
from etrn_bridge.backends.sendmail import SendmailBackend, parse_sendmail_bp
from etrn_bridge.frontends.tlsinfo import fingerprint

LAB_DIR = Path(__file__).parent / "lab"
KIT_ROOT = Path(__file__).parents[2]
MTA_LAB = Path(os.environ.get("ETRN_BRIDGE_MTA_LAB", "/opt/mta-lab"))


def script_env(**extra: str) -> dict[str, str]:
    """The environment for the lab scripts: their Python is ours, whose trustme
    makes the lab's TLS certificates (the system python3 may have none, and a
    configure without it leaves the plugin-mode ports without STARTTLS)."""
    return {**os.environ, "PYTHON": sys.executable, **extra}


# lab/certs.py: the lab CA, and client certificates (key and certificate in one
# file) from it (client.pem) and from another CA (stranger.pem)
LAB_TLS = MTA_LAB / "tls"
MTAS = ("postfix", "exim", "sendmail")

# The mail every scenario queues: one message per recipient. Only the first two
# are "customer.test"; the rest are the traps of a substring match.
RECIPIENTS = (
    "user@customer.test",
    "USER@CUSTOMER.TEST",
    "user@mycustomer.test",
    "user@customer.test.evil",
    "user@sub.customer.test",
    "customer.test@noflush.test",
)
NODE = {"user@customer.test", "USER@CUSTOMER.TEST"}
# The lab's Exim and Sendmail keep this domain's mail in the named queue /
# queue group NAMED_QUEUE (lib.sh); Postfix gets it as a "queues:" mapping.
QUEUED = "user@queued.test"
NAMED_QUEUE = "acme"
SUBTREE = NODE | {"user@sub.customer.test"}
BACKEND_CLASSES: dict[str, type[MtaBackend]] = {
    "postfix": PostfixBackend,
    "exim": EximBackend,
    "sendmail": SendmailBackend,
}
# The unprivileged user the kits' READMEs run the bridge as (sudoers lines).
BRIDGE_USER = "etrn-bridge"
# Postfix's group for postdrop/postqueue: the bridge's user joins it (SupplementaryGroups=).
POSTDROP = "postdrop"
# How long "nothing else arrives" is watched after the expected mail came.
QUIET_PERIOD = 1.0
# What LabMta.reset() sends Postfix to spend a pending flush override: a lab
# domain held by defer_transports, outside the lab's fast_flush_domains (no
# flush(8) log entry) and outside every test's policy and milter holds.
SETTLE_PROBE = "settle-probe@queued.test"
SETTLE_ATTEMPTS = 3


@dataclass
class LabMta:
    """One MTA of the lab: its ports, programs, sink, and how to queue mail for it."""

    name: str
    smtp_port: int
    program_option: str
    program: str
    sink_dir: Path
    sink_port: int
    sent: dict[str, bytes] = field(default_factory=dict)  # recipient -> body sent

    @classmethod
    def from_env(cls, name: str) -> LabMta:
        """From ``X.sh env``: the ports and paths the lab was installed with."""
        env = lab_env(name)
        prefix = name.upper()
        # the backend option naming the program, which is also its env key
        program_option = {"postfix": "postqueue", "exim": "exim", "sendmail": "sendmail"}[name]
        return cls(
            name,
            int(env[f"{prefix}_PORT"]),
            program_option,
            env[program_option.upper()],
            Path(env[f"{prefix}_SINK_DIR"]),
            int(env[f"{prefix}_SINK_PORT"]),
        )

    def kit_sudoers_lines(self) -> str:
        """The sudoers lines of the MTA's kit README, for the lab's program."""
        readme = (KIT_ROOT / self.name / "README.md").read_text()
        lines = "\n".join(x for x in readme.splitlines() if x.startswith(f"{BRIDGE_USER} ALL="))
        if self.name == "postfix":  # the line for postsuper -H (hold: true)
            return lines.replace(DEFAULT_POSTSUPER[-1], lab_env("postfix")["POSTSUPER"])
        return lines.replace(BACKEND_CLASSES[self.name].default_program, self.program)

    @property
    def backend_options(self) -> dict[str, object]:
        return {"type": self.name, self.program_option: self.program}

    def backend(self, **options: object) -> Backend:
        return create_backend({**self.backend_options, **options})

    def script(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(LAB_DIR / f"{self.name}.sh"), *args],
            capture_output=True,
            text=True,
            check=True,
            env=script_env(),
        )
        return done.stdout

    def wait_sink(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.sink_port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: sink not listening on {self.sink_port}")

    def reset(self) -> None:
        """Sink up, queue empty, nothing received: every test starts here."""
        self.script("clear-queue")
        self.script("sink-start")
        if self.name == "postfix":
            self._settle_postfix()
            self.script("clear-queue")  # the probe, and the sink's copy if it slipped
        self.sent.clear()

    def _settle_postfix(self) -> None:
        """Leave no "override defer_transports" pending in Postfix's qmgr.

        A site flush (postqueue -s) whose flush(8) log for the site exists but
        is empty (an earlier flush emptied it: two ETRNs in a row) sends qmgr
        its "flush dead" request (override defer_transports) and no queue
        scan. qmgr keeps the override pending for the next incoming-queue
        scan, started by the next arrival for ANY domain (or qmgr's 300 s
        wakeup), and that message skips defer_transports. postsuper -d ALL
        does not clear it (qmgr_scan.c, flush.c; measured with qmgr -v, see
        tests/mta/lab/README.md). A probe starts that scan: delivered at once,
        it spent the pending override; deferred, none is pending any more.
        """
        for _ in range(SETTLE_ATTEMPTS):
            self._send([(SETTLE_PROBE,)])
            if self._probe_deferred():
                return
            self.script("clear-queue")  # the slipped probe's copy at the sink
        raise AssertionError(f"postfix: {SETTLE_ATTEMPTS} probes skipped defer_transports")

    def _probe_deferred(self, timeout: float = 15) -> bool:
        """True when the probe waits in the deferred queue, False when it was delivered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(q == "deferred" for _, rcpts, q in self.listing() if SETTLE_PROBE in rcpts):
                return True
            if SETTLE_PROBE in self.received():
                return False
            time.sleep(0.02)
        raise AssertionError(f"postfix: settle probe neither deferred nor sent: {self.listing()}")

    def inject(
        self,
        recipients: tuple[str, ...] = RECIPIENTS,
        queue: str | None = None,
        together: bool = False,
    ) -> None:
        """Queue one message per recipient over SMTP; the kits keep them queued.

        ``queue``: the named queue / queue group the lab routes them to.
        ``together``: one message to all the recipients instead.
        """
        before = len(self.listing(queue))
        groups = [recipients] if together else [(rcpt,) for rcpt in recipients]
        self._send(groups)
        self.wait_queued(before + len(groups), queue)

    def _send(self, groups: list[tuple[str, ...]]) -> None:
        """One message per group of recipients, over one SMTP session."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, local_hostname="client.test") as smtp:
            for group in groups:
                message = EmailMessage()
                message["From"] = "sender@client.test"
                message["To"] = ", ".join(group)
                message["Subject"] = f"etrn-bridge test {group[0]}"
                message.set_content(f"for {' '.join(group)}\nnonce {uuid.uuid4()}\n")
                # CRLF everywhere: Sendmail 8.17 drops a connection on a bare LF.
                data = message.as_bytes(policy=email.policy.SMTP)
                smtp.sendmail("sender@client.test", list(group), data)
                for rcpt in group:
                    self.sent[rcpt] = body_of(data)

    def listing(self, queue: str | None = None) -> list[tuple[str, tuple[str, ...], str | None]]:
        """The queue (Exim: the default or the named one; Postfix has no named
        queues, Sendmail's plain -bp lists every group)."""
        if self.name == "postfix":
            out = run([self.program, "-j"])
            return [(m.queue_id, m.recipients, m.queue) for m in parse_postqueue_json(out)]
        out = run([self.program, "-bp", *(["-qG" + queue] if queue else [])])
        parse = parse_exim_bp if self.name == "exim" else parse_sendmail_bp
        return [(m.queue_id, m.recipients, "queued") for m in parse(out)]

    def wait_queued(self, count: int, queue: str | None = None, timeout: float = 15) -> None:
        # Postfix: deferred, not just arrived (a flush moves deferred mail).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.listing(queue)
            if len(listed) == count and all(q in ("deferred", "queued") for *_, q in listed):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {count} messages not queued: {self.listing(queue)}")

    def queued_recipients(self, queue: str | None = None) -> set[str]:
        return {rcpt for _, rcpts, _ in self.listing(queue) for rcpt in rcpts}

    def received(self) -> dict[str, bytes]:
        """Envelope recipient -> body, of every message at the sink."""
        found: dict[str, bytes] = {}
        for path in sorted(self.sink_dir.glob("*.eml")):
            if path.name.startswith("."):  # sink.py's file being written (renamed when done)
                continue
            raw = path.read_bytes()
            envelope, data = _split_sink(raw)
            for rcpt in envelope:
                found[rcpt] = body_of(data)
        return found

    def wait_received(self, expected: set[str], timeout: float = 20) -> dict[str, bytes]:
        """Wait for exactly ``expected`` at the sink, then watch a while for extras."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not expected <= set(self.received()):
            time.sleep(0.05)
        time.sleep(QUIET_PERIOD)
        return self.received()


def _split_sink(raw: bytes) -> tuple[list[str], bytes]:
    # sink.py writes "X-Sink-Mail-From: <a>" and "X-Sink-Rcpt-To: <b>, <c>" first.
    lines = raw.split(b"\r\n", 2)
    rcpts = lines[1].decode().removeprefix("X-Sink-Rcpt-To: ")
    return [r.strip().strip("<>") for r in rcpts.split(",")], lines[2]


def body_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[2]


def run(argv: list[str]) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True).stdout


def certificate_fingerprint(pem_file: Path) -> str:
    """The policy's "sha256:AB:..." of the certificate in a PEM file (after its key)."""
    pem = pem_file.read_text()
    begin = pem.index("-----BEGIN CERTIFICATE-----")
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem[begin:]))


def lab_env(name: str) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(LAB_DIR / f"{name}.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
