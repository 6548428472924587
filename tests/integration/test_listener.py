"""The ETRN listener over real loopback sockets: protocol, hostile input, limits, audit."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bridgekit import Bridge, SmtpClient

AUDIT_FIELDS = {
    "ts",
    "session",
    "client_ip",
    "client_port",
    "helo",
    "auth_user",
    "tls",
    "argument",
    "target",
    "kind",
    "decision",
    "rule",
    "reply",
    "backend",
    "exit_status",
    "pending",
    "duration_ms",
}


def test_greeting_and_ehlo_advertise_etrn_only(bridge: Bridge) -> None:
    client = bridge.connect()
    assert client.greeting.text == "220 bridge.test ESMTP etrn-bridge"
    reply = client.ehlo()
    assert reply.lines == ["250-bridge.test", "250 ETRN"]  # no STARTTLS/AUTH without tls


def test_allowed_target_gets_250_and_one_audit_record(bridge: Bridge) -> None:
    client = bridge.session("customer-host.example")
    reply = client.command("ETRN customer.example")
    assert reply.text == "250 2.0.0 OK, queuing for node customer.example started"
    (record,) = bridge.etrn_records()
    assert record.keys() >= AUDIT_FIELDS
    assert record["client_ip"] == "127.0.0.1"
    assert record["client_port"] == client.sock.getsockname()[1]
    assert record["helo"] == "customer-host.example"
    assert record["argument"] == "customer.example"
    assert record["target"] == "customer.example"
    assert record["kind"] == "node"
    assert (record["decision"], record["rule"], record["reply"]) == ("allow", "loopback", 250)
    assert record["backend"] == "log"
    assert record["tls"] is False and record["auth_user"] is None


@pytest.mark.parametrize(
    ("argument", "target"),
    [
        ("@customer.net", "@customer.net"),
        ("mail.customer.net", "mail.customer.net"),
        ("#customerq", "#customerq"),
        ("CUSTOMER.Example.", "customer.example"),
    ],
)
def test_target_forms(bridge: Bridge, argument: str, target: str) -> None:
    reply = bridge.session().command(f"ETRN {argument}")
    assert reply.code == 250, reply
    assert bridge.etrn_records()[-1]["target"] == target


def test_extra_spaces_before_argument_are_tolerated(bridge: Bridge) -> None:
    # libESMTP sends "ETRN  node" (two spaces) when no option character is used.
    client = bridge.session()
    assert client.command("ETRN  customer.example").code == 250
    assert client.command("ETRN   @customer.net").code == 250


def test_unlisted_target_gets_459(bridge: Bridge) -> None:
    reply = bridge.session().command("ETRN other.example")
    assert reply.text == "459 4.7.1 Node other.example not allowed: not authorized"
    record = bridge.etrn_records()[-1]
    assert (record["decision"], record["reply"], record["backend"]) == ("deny", 459, None)


def test_no_argument_gets_500_and_is_audited(bridge: Bridge) -> None:
    client = bridge.session()
    assert client.command("ETRN").text == "500 5.5.2 Syntax Error"
    assert client.command("ETRN ").code == 500
    records = bridge.etrn_records()
    assert [r["reply"] for r in records] == [500, 500]
    assert records[0]["argument"] == ""


HOSTILE_ARGUMENTS = [
    b"-oQ/tmp/x",
    b"customer.example;id",
    b"$(id)",
    b"customer.example|id",
    b"`id`",
    b"customer\x00.example",
    b"customer\x01.example",
    b"customer\x1b[2J.example",
    b"customer\x7f.example",
    b"customer.example\rMAIL",
    b"customer.\xff\xfeexample",
    b"\xc3\x28invalid.example",
    b"customer..example",
    b".customer.example",
    b"@",
    b"#",
    b"@@customer.net",
    b"#../../etc",
    b"customer.example other.example",
    b"a" * 300,
    (b"a" * 63 + b".") * 4 + b"example",
    b"[999.1.1.1]",
    b"@[127.0.0.1]",
    b"customer.example\x85",
    "customer\u2028.example".encode(),
]


@pytest.mark.parametrize("argument", HOSTILE_ARGUMENTS, ids=repr)
def test_hostile_arguments_get_501_and_are_audited(bridge: Bridge, argument: bytes) -> None:
    client = bridge.session()
    reply = client.command(b"ETRN " + argument)
    assert reply.text == "501 5.5.4 Syntax Error in Parameters"
    (record,) = bridge.etrn_records()
    assert record["reply"] == 501
    assert record["target"] is None and record["backend"] is None
    # The audit keeps the argument (JSON-escaped) and stays one record per line.
    assert isinstance(record["argument"], str) and record["argument"]
    raw = bridge.audit_path.read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()


def test_non_utf8_argument_is_escaped_in_audit(bridge: Bridge) -> None:
    bridge.session().command(b"ETRN customer.\xff\xfeexample")
    assert bridge.etrn_records()[0]["argument"] == "customer.\\xff\\xfeexample"


def test_control_characters_never_break_an_audit_line(bridge: Bridge) -> None:
    client = bridge.session()
    for argument in (b"a\x0bb", b"a\x0cb", b"x\rx", b"\x00", "é\u2029".encode(), b"\x1b]0;t\x07"):
        client.command(b"ETRN " + argument)
    lines = bridge.audit_path.read_text().splitlines()
    assert len(lines) == 6
    assert len(bridge.etrn_records()) == 6


def test_etrn_before_helo_gets_503(bridge: Bridge) -> None:
    client = bridge.connect()
    assert client.command("ETRN customer.example").text == "503 5.5.1 Send HELO or EHLO first"
    assert bridge.etrn_records() == []  # refused by the session, not a request
    assert client.command("HELO client.test").code == 250
    assert client.command("ETRN customer.example").code == 250


@pytest.mark.parametrize(
    "command",
    [
        "MAIL FROM:<a@customer.example>",
        "RCPT TO:<b@customer.example>",
        "DATA",
        "BDAT 10 LAST",
        "VRFY postmaster",
        "EXPN staff",
        "TURN",
        "ATRN customer.example",
    ],
)
def test_mail_and_other_commands_are_refused(bridge: Bridge, command: str) -> None:
    reply = bridge.session().command(command)
    assert reply.text == "502 5.5.1 Command not implemented: this service accepts only ETRN"


def test_unknown_command_is_not_echoed(bridge: Bridge) -> None:
    reply = bridge.session().command(b"X\x1b[31mRED")
    assert reply.text == "500 5.5.1 Command unrecognized"


def test_noop_rset_help_quit(bridge: Bridge) -> None:
    client = bridge.session()
    assert client.command("NOOP").code == 250
    assert client.command("RSET").code == 250
    help_reply = client.command("HELP")
    assert help_reply.code == 250 and "ETRN" in help_reply.text and "MAIL" not in help_reply.text
    assert client.command("QUIT").code == 221
    assert client.is_closed()


def test_starttls_not_offered_without_tls(bridge: Bridge) -> None:
    client = bridge.session()
    assert client.command("STARTTLS").code == 454
    assert client.command("AUTH PLAIN AGFAYg==").code == 502


def test_idle_timeout_sends_421_and_closes(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"session": {"idle_timeout": 0.5}})
    client = bridge.session()
    started = time.monotonic()
    reply = client.read_reply()
    assert reply.text == "421 4.4.2 bridge.test Idle timeout, closing connection"
    assert 0.4 < time.monotonic() - started < 5
    assert client.is_closed()
    bridge.wait_for_log(r"end=idle timeout")


def test_commands_keep_an_idle_timer_going_and_a_slow_flush_does_not_count(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    # The idle timer is moved by each command rather than replaced (listener.py):
    # commands at shorter intervals keep the session open past the timeout, a flush
    # that takes longer than it is not idle time, and after its reply the timer runs.
    flush = tmp_path / "flush.sh"
    flush.write_text("#!/bin/sh\nsleep 3\n")
    flush.chmod(0o755)
    bridge = start_bridge(
        {
            "session": {"idle_timeout": 2},
            "backend": {"type": "command", "argv": [str(flush), "{etrn}"], "timeout": 30},
        }
    )
    client = bridge.session()
    for _ in range(6):  # 3 s of commands, every 0.5 s
        time.sleep(0.5)
        assert client.command("NOOP").code == 250
    assert client.command("ETRN customer.example").code == 250  # after about 3 s
    started = time.monotonic()
    reply = client.read_reply()
    assert reply.text == "421 4.4.2 bridge.test Idle timeout, closing connection"
    assert time.monotonic() - started > 1.5  # counted from the reply, not from the ETRN
    assert client.is_closed()


def test_over_long_line_gets_500_and_session_goes_on(bridge: Bridge) -> None:
    # RFC 5321 §4.5.3.1.4: 512 octets with CRLF. 510 + CRLF is fine, 511 is not.
    client = bridge.session()
    assert client.command(b"NOOP " + b"x" * 505).code == 250
    assert client.command(b"NOOP " + b"x" * 506).text == "500 5.5.2 Line too long"
    assert client.command(b"NOOP " + b"x" * 5000).text == "500 5.5.2 Line too long"
    assert client.command("ETRN customer.example").code == 250
    assert len(bridge.etrn_records()) == 1


def test_over_long_etrn_line_is_refused_501_and_audited(bridge: Bridge) -> None:
    client = bridge.session()
    # 5 + 505 + CRLF = 512 octets: the longest line allowed; its argument is merely bad.
    assert client.command(b"ETRN " + b"a" * 505).code == 501
    # Over the limit, even when what fits would parse as an allowed target.
    padded = b"ETRN customer.example" + b" " * 600 + b"x"
    assert client.command(padded).text == "501 5.5.4 Syntax Error in Parameters"
    assert client.command(b"ETRN " + b"b" * 3000).code == 501
    records = bridge.etrn_records()
    assert [r["reply"] for r in records] == [501, 501, 501]
    assert [r["reason"] for r in records[1:]] == ["command line too long"] * 2
    assert records[1]["target"] is None and records[1]["decision"] is None


def test_max_line_length_is_configurable(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"session": {"max_line_length": 64}})
    client = bridge.session()
    assert client.command(b"NOOP " + b"x" * 57).code == 250
    assert client.command(b"NOOP " + b"x" * 58).code == 500


def test_too_many_bad_commands_gets_421_and_close(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"session": {"max_bad_commands": 3}})
    client = bridge.session()
    assert client.command("MAIL FROM:<a@b.example>").code == 502
    assert client.command("BOGUS").code == 500
    assert client.command("ETRN bad;arg").code == 501
    assert client.read_reply().text == (
        "421 4.7.0 bridge.test Too many bad commands, closing connection"
    )
    assert client.is_closed()
    bridge.wait_for_log(r"bad=3 end=too many bad commands")


def test_pipelined_bad_commands_stop_at_the_limit(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"session": {"max_bad_commands": 2}})
    client = bridge.session()
    client.sock.sendall(b"FOO\r\n" * 50 + b"ETRN customer.example\r\n")
    replies = []
    while True:
        try:
            replies.append(client.read_reply().code)
        except ConnectionError:
            break
    assert replies == [500, 500, 421]
    assert bridge.etrn_records() == []


def test_etrn_per_session_limit(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"session": {"max_etrn": 2}})
    client = bridge.session()
    assert client.command("ETRN customer.example").code == 250
    assert client.command("ETRN other.example").code == 459
    assert client.command("ETRN customer.example").text == (
        "421 4.7.0 bridge.test Too many ETRN commands, closing connection"
    )
    assert client.is_closed()
    assert len(bridge.etrn_records()) == 2


def test_ipv4_and_ipv6_listeners(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"listen": ["127.0.0.1:0", "[::1]:0"]})
    (v4_host, v4_port), (v6_host, v6_port) = bridge.addresses
    assert (v4_host, v6_host) == ("127.0.0.1", "::1")
    v6 = bridge.connect(v6_host, v6_port)
    assert v6.sock.family == socket.AF_INET6
    assert v6.ehlo().code == 250
    assert v6.command("ETRN customer.example").code == 250
    assert bridge.connect(v4_host, v4_port).ehlo().code == 250
    assert bridge.etrn_records()[0]["client_ip"] == "::1"


def test_session_log_line(bridge: Bridge) -> None:
    client = bridge.session("host.customer.example")
    client.command("ETRN customer.example")
    client.command("FOO")
    client.command("QUIT")
    line = bridge.wait_for_log(r"session=\S+ client=127\.0\.0\.1:\d+ ")
    assert "helo=host.customer.example" in line
    assert "etrn=1 bad=1 end=client" in line


def test_session_ids_differ_between_sessions(bridge: Bridge) -> None:
    for _ in range(3):
        bridge.session().command("ETRN customer.example")
    sessions = [record["session"] for record in bridge.etrn_records()]
    assert len(set(sessions)) == 3


def test_sigterm_closes_idle_sessions_and_exits_0(bridge: Bridge) -> None:
    client = bridge.session()
    bridge.send_signal(signal.SIGTERM)
    assert client.read_reply().text == (
        "421 4.3.2 bridge.test Service shutting down, closing connection"
    )
    assert bridge.process.wait(15) == 0
    bridge.wait_for_log("stopped")


def test_sighup_reopens_the_audit_file(bridge: Bridge) -> None:
    bridge.session().command("ETRN customer.example")
    rotated = bridge.audit_path.with_suffix(".1")
    bridge.audit_path.rename(rotated)
    bridge.send_signal(signal.SIGHUP)
    bridge.wait_for_log("SIGHUP")
    bridge.session().command("ETRN customer.example")
    assert len(rotated.read_text().splitlines()) == 1
    assert len(bridge.etrn_records()) == 1


def test_invalid_config_never_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bridgekit import run_bridge_process, write_config

    path = write_config(
        tmp_path, {"listen": ["127.0.0.1:0"], "session": {"idle_timeout": -1}, "bogus": 1}
    )
    process = run_bridge_process(path)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "idle_timeout" in stderr and "bogus" in stderr
    assert "ready" not in stderr


def test_etrn_after_quit_is_not_processed(bridge: Bridge) -> None:
    client = bridge.session()
    client.sock.sendall(b"QUIT\r\nETRN customer.example\r\n")
    assert client.read_reply().code == 221
    assert client.is_closed()
    assert bridge.etrn_records() == []


def test_many_concurrent_sessions(bridge: Bridge) -> None:
    clients: list[SmtpClient] = [bridge.session() for _ in range(50)]
    for client in clients:
        client.send("ETRN customer.example")
    assert all(client.read_reply().code == 250 for client in clients)
    assert len(bridge.etrn_records()) == 50


def test_subtree_request_over_a_denied_name_is_refused(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"policy": {"deny": [{"id": "frozen", "targets": ["old.customer.net"]}]}})
    client = bridge.session()
    assert client.command("ETRN @customer.net").text == (
        "459 4.7.1 Node @customer.net not allowed: not authorized"
    )
    assert client.command("ETRN www.customer.net").code == 250
    assert [(r["target"], r["rule"]) for r in bridge.etrn_records()] == [
        ("@customer.net", "frozen"),
        ("www.customer.net", "loopback"),
    ]
