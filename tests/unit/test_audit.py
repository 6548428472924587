"""Audit records: one JSON line each, whatever bytes the client sent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from etrn_bridge.audit import AuditLog
from etrn_bridge.request import Decision, FlushResult, Identity, Outcome, Request, Status
from etrn_bridge.target import Target, TargetKind

HOSTILE = [
    'customer.example\r\n{"forged": true}',
    "a\x00b",
    "x\u2028y\u2029z\x85",
    "caf\udce9",  # a raw 0xE9 byte (latin-1), surrogate-escaped
    "\x1b[31mred",
    "'\"\\",
]


@pytest.mark.parametrize("argument", HOSTILE)
def test_hostile_argument_stays_on_one_line(tmp_path: Path, argument: str) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    request = Request(Identity("127.0.0.1", 4242, helo=argument), argument, "S1")
    reply = audit.reply_and_record(request, Outcome(Status.BAD_ARGUMENT, reason="bad"))
    audit.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["reply"] == 501 and reply.startswith("501 ")
    assert record["status"] == "bad_argument"
    assert b"\r" not in lines[0]
    assert lines[0].isascii()
    assert record["argument"] == record["helo"]


def test_non_utf8_bytes_are_shown_as_hex(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.reply_and_record(
        Request(Identity("127.0.0.1"), "caf\udce9"), Outcome(Status.BAD_ARGUMENT)
    )
    audit.close()
    assert json.loads(path.read_text())["argument"] == "caf\\xe9"


def test_record_carries_every_field(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    identity = Identity("::1", 50000, "client.example", "acme", True, "sha256:AB")
    target = Target(TargetKind.SUBTREE, "customer.example")
    outcome = Outcome(
        Status.PENDING_STARTED,
        target,
        Decision(True, "acme", "listed"),
        backend="postfix",
        flush=FlushResult(True, pending=2, exit_status=0, queue_ids=("A1", "B2")),
        duration=0.0125,
    )
    audit.reply_and_record(Request(identity, "@customer.example", "S9"), outcome)
    audit.close()
    record = json.loads(path.read_text())
    assert record["ts"].endswith("Z")
    expected = {
        "event": "etrn",
        "session": "S9",
        "client_ip": "::1",
        "client_port": 50000,
        "helo": "client.example",
        "auth_user": "acme",
        "tls": True,
        "tls_fingerprint": "sha256:AB",
        "argument": "@customer.example",
        "target": "@customer.example",
        "kind": "subtree",
        "decision": "allow",
        "rule": "acme",
        "status": "pending_started",
        "reply": 253,
        "backend": "postfix",
        "exit_status": 0,
        "pending": 2,
        "queue_ids": ["A1", "B2"],
        "duration_ms": 12.5,
        "coalesced": False,
    }
    assert {key: record[key] for key in expected} == expected


def test_file_is_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    AuditLog(path).close()
    assert path.stat().st_mode & 0o007 == 0


def test_reopen_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    request = Request(Identity("127.0.0.1"), "")
    audit.reply_and_record(request, Outcome(Status.MISSING_ARGUMENT))
    path.rename(tmp_path / "audit.jsonl.1")
    audit.reopen()
    audit.reply_and_record(request, Outcome(Status.MISSING_ARGUMENT))
    audit.close()
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "audit.jsonl.1").read_text().splitlines()) == 1


def test_syslog_receives_mail_facility_record(tmp_path: Path) -> None:
    import socket

    address = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    audit = AuditLog(None, use_syslog=True, syslog_address=address)
    audit.reply_and_record(Request(Identity("127.0.0.1"), ""), Outcome(Status.MISSING_ARGUMENT))
    audit.close()
    datagram = server.recv(65536).decode()
    server.close()
    assert datagram.startswith("<22>etrn-bridge[")  # LOG_MAIL(2)*8 + LOG_INFO(6)
    assert json.loads(datagram.split(": ", 1)[1])["reply"] == 500


def test_full_disk_keeps_the_record_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit._fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    reply = audit.reply_and_record(
        Request(Identity("127.0.0.1"), "customer.example"), Outcome(Status.MISSING_ARGUMENT)
    )
    audit.close()
    assert reply.startswith("500 ")
    (message,) = [r.getMessage() for r in caplog.records if r.name == "etrn_bridge"]
    assert "No space left on device" in message
    assert json.loads(message.split("): ", 1)[1])["reply"] == 500


def test_reopen_failure_keeps_writing_the_old_file(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    audit = AuditLog(directory / "audit.jsonl")
    directory.rename(tmp_path / "moved")
    (tmp_path / "logs").write_text("a file where the directory was")
    audit.reopen()
    audit.reply_and_record(Request(Identity("127.0.0.1"), ""), Outcome(Status.MISSING_ARGUMENT))
    audit.close()
    assert len((tmp_path / "moved" / "audit.jsonl").read_text().splitlines()) == 1
