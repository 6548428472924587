"""The MTA hook sockets of ``etrn-bridge serve`` (plugin mode), over real sockets.

Each test runs a real bridge process (log backend) with hooks on unix sockets
in the test's private directory, and speaks the MTA's side of each protocol
byte for byte: Postfix policy delegation, Exim's readsocket line, Sendmail's
socketmap netstrings. Hostile input must end in a refusal or a close, never
in an allow or a crash, and every request that reaches the service is audited
once with its front end's name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import grp
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bridgekit import (
    BASE_CONFIG,
    IO_TIMEOUT,
    Bridge,
    merge_config,
    run_bridge_process,
    write_config,
)

POSTFIX_ETRN = (
    "request=smtpd_access_policy\nprotocol_state=ETRN\nprotocol_name=ESMTP\n"
    "client_address=127.0.0.1\nclient_port=40000\nhelo_name=client.test\n"
    "sasl_username=\nccert_fingerprint=\netrn_domain={domain}\n\n"
)


def hooks_config(directory: Path, **overrides: Any) -> dict[str, Any]:
    settings = {"request_timeout": 1, **overrides}
    return {
        "hooks": {
            "postfix_policy": {"listen": f"unix:{directory / 'postfix.sock'}", **settings},
            "exim": {"listen": f"unix:{directory / 'exim.sock'}", **settings},
            "sendmail": {"listen": f"unix:{directory / 'sendmail.sock'}", **settings},
        }
    }


@pytest.fixture
def hooked(start_bridge: Callable[..., Bridge], tmp_path: Path) -> Bridge:
    """A bridge with the listener and all three hooks."""
    return start_bridge(hooks_config(tmp_path))


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    sock.connect(str(path))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_answers(sock: socket.socket, count: int, separator: bytes) -> list[bytes]:
    data = b""
    while data.count(separator) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(separator)[:count]


def exim(path: Path, line: bytes) -> bytes:
    """What Exim's readsocket does: write, shut down writing, read to EOF."""
    with connect(path) as sock:
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def netstring(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return str(len(data)).encode() + b":" + data + b","


def read_netstrings(sock: socket.socket, count: int) -> list[str]:
    """Parse ``count`` netstrings, checking each length and terminator."""
    data = b""
    found: list[str] = []
    while len(found) < count:
        length, colon, rest = data.partition(b":")
        if colon and len(rest) > int(length):
            assert rest[int(length) : int(length) + 1] == b","
            found.append(rest[: int(length)].decode())
            data = rest[int(length) + 1 :]
            continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {found}"
        data += chunk
    return found


# Postfix policy delegation ------------------------------------------------------------


def test_postfix_many_requests_on_one_connection(hooked: Bridge, tmp_path: Path) -> None:
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(
            POSTFIX_ETRN.format(domain="customer.example").encode()
            + POSTFIX_ETRN.format(domain="other.example").encode()
            + b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\n\n"
            + POSTFIX_ETRN.format(domain="").encode()
        )
        answers = read_answers(sock, 4, b"\n\n")
    assert answers == [
        b"action=OK",
        b"action=459 4.7.1 Node other.example not allowed: not authorized",
        b"action=DUNNO",  # another protocol state: not an ETRN question
        b"action=500 5.5.2 Syntax Error",
    ]
    records = hooked.etrn_records()
    assert [(r["argument"], r["reply"]) for r in records] == [
        ("customer.example", 250),
        ("other.example", 459),
        ("", 500),
    ]
    first = records[0]
    assert first["frontend"] == "postfix-policy"
    assert (first["client_ip"], first["client_port"], first["helo"]) == (
        "127.0.0.1",
        40000,
        "client.test",
    )
    assert first["auth_user"] is None and first["tls"] is False
    assert len({r["session"] for r in records}) == 1


def test_postfix_identity_attributes(hooked: Bridge, tmp_path: Path) -> None:
    fingerprint = ":".join(["AB"] * 32)
    request = (
        "request=smtpd_access_policy\nprotocol_state=ETRN\nclient_address=::1\n"
        f"sasl_username=alice\nencryption_protocol=TLSv1.3\nccert_fingerprint={fingerprint}\n"
        "etrn_domain=customer.example\n\n"
    )
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(request.encode())
        assert read_answers(sock, 1, b"\n\n") == [b"action=OK"]
    [record] = hooked.etrn_records()
    assert (record["client_ip"], record["auth_user"], record["tls"]) == ("::1", "alice", True)
    assert record["tls_fingerprint"] == "sha256:" + fingerprint


def test_postfix_missing_client_address_is_denied_and_audited(
    hooked: Bridge, tmp_path: Path
) -> None:
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(
            b"request=smtpd_access_policy\nprotocol_state=ETRN\netrn_domain=customer.example\n\n"
        )
        [answer] = read_answers(sock, 1, b"\n\n")
    assert answer.startswith(b"action=459 ")
    [record] = hooked.etrn_records()
    assert (record["decision"], record["client_ip"]) == ("deny", "")


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not an attribute\n\n",
        b"\n",  # an empty request
        b"protocol_state=ETRN\netrn_domain=customer.example\n\n",  # no request=
        b"request=smtpd_access_policy\n=x\n\n",
        b"\xff\xfe\x00\n\n",
    ],
)
def test_postfix_garbage_is_closed_unanswered(
    hooked: Bridge, tmp_path: Path, garbage: bytes
) -> None:
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(garbage)
        assert read_until_closed(sock) == b""  # Postfix then applies its default action
    assert hooked.etrn_records() == []
    assert_still_serving(hooked, tmp_path)


def test_postfix_concurrent_connections(hooked: Bridge, tmp_path: Path) -> None:
    def one(index: int) -> bytes:
        with connect(tmp_path / "postfix.sock") as sock:
            sock.sendall(POSTFIX_ETRN.format(domain="customer.example").encode() * 3)
            return b"|".join(read_answers(sock, 3, b"\n\n"))

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(40)))
    assert answers == [b"action=OK|action=OK|action=OK"] * 40
    records = hooked.etrn_records()
    assert len(records) == 120 and len({r["session"] for r in records}) == 40


def test_postfix_client_that_reads_no_answers_is_held_back_and_others_are_served(
    hooked: Bridge, tmp_path: Path
) -> None:
    """Requests sent without reading the answers: the bridge stops taking them once
    its answers back up (no buffer grows without bound), serves the other
    connections meanwhile, and answers every request, in order, once the client
    reads."""
    request = POSTFIX_ETRN.format(domain="other.example").encode()  # a denial: 459
    with connect(tmp_path / "postfix.sock") as flooder:
        flooder.setblocking(False)
        sent = blocked = 0
        deadline = time.monotonic() + 30
        while blocked < 3:  # both ways' socket buffers are full: the bridge stopped reading
            assert time.monotonic() < deadline, f"the bridge still reads after {sent} bytes"
            try:
                sent += flooder.send(request * 50)
                blocked = 0
            except BlockingIOError:
                blocked += 1
                time.sleep(0.3)
        taken = len(hooked.etrn_records())
        time.sleep(0.5)
        assert len(hooked.etrn_records()) == taken  # held back: nothing more taken
        with connect(tmp_path / "postfix.sock") as other:
            other.sendall(POSTFIX_ETRN.format(domain="customer.example").encode())
            assert read_answers(other, 1, b"\n\n") == [b"action=OK"]
        flooder.settimeout(IO_TIMEOUT)
        rest = -sent % len(request)  # the last request, when send() took part of it
        count = (sent + rest) // len(request)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reading = pool.submit(read_answers, flooder, count, b"\n\n")
            flooder.sendall(request[len(request) - rest :])
            answers = reading.result()
    assert answers == [b"action=459 4.7.1 Node other.example not allowed: not authorized"] * count
    records = hooked.etrn_records()
    assert len(records) == count + 1 and count > taken > 0
    assert [r["argument"] for r in records].count("customer.example") == 1


def test_answers_wait_for_a_flush_that_runs_and_keep_their_order(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    """With a backend that takes its time, each answer goes out when its flush
    ends, in the order of the requests; a stop lets the flush in progress answer."""
    started, runs = tmp_path / "started.txt", tmp_path / "runs.txt"
    program = tmp_path / "flush.sh"
    program.write_text(f'#!/bin/sh\necho "$1" >> "{started}"\nsleep 0.5\necho "$1" >> "{runs}"\n')
    program.chmod(0o755)
    backend = {"type": "command", "argv": [str(program), "{target}"], "timeout": 10}
    bridge = start_bridge({**hooks_config(tmp_path), "backend": backend})
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(
            POSTFIX_ETRN.format(domain="customer.example").encode()
            + POSTFIX_ETRN.format(domain="other.example").encode()  # denied: no flush
            + POSTFIX_ETRN.format(domain="customer.example").encode()
        )
        assert read_answers(sock, 3, b"\n\n") == [
            b"action=OK",
            b"action=459 4.7.1 Node other.example not allowed: not authorized",
            b"action=OK",
        ]
        sock.sendall(POSTFIX_ETRN.format(domain="customer.example").encode())
        deadline = time.monotonic() + IO_TIMEOUT
        while len(started.read_text().split()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # until its flush has begun
        bridge.send_signal(signal.SIGTERM)
        assert read_until_closed(sock) == b"action=OK\n\n"  # answered, then closed
    assert bridge.process.wait(IO_TIMEOUT) == 0
    assert runs.read_text().split() == ["customer.example"] * 3
    assert [(r["argument"], r["reply"], r["client_gone"]) for r in bridge.etrn_records()] == [
        ("customer.example", 250, False),
        ("other.example", 459, False),
        ("customer.example", 250, False),
        ("customer.example", 250, False),
    ]


# Exim readsocket ----------------------------------------------------------------------


def test_exim_answers_one_line_then_closes(hooked: Bridge, tmp_path: Path) -> None:
    path = tmp_path / "exim.sock"
    helo = "Y2xpZW50LnRlc3Q="  # base64 "client.test"
    allowed = exim(path, f"ETRN 127.0.0.1 40000 {helo} - - @customer.net\n".encode())
    assert allowed == b"OK 250 2.0.0 OK, queuing for node @customer.net started\n"
    denied = exim(path, b"ETRN 127.0.0.1 40001 - YWxpY2U= - Customer.Example.Evil\n")
    assert denied == b"DENY 459 4.7.1 Node customer.example.evil not allowed: not authorized\n"
    # Exim refuses ETRN only with 4xx codes: a syntax error comes in its 4xx form
    assert exim(path, b"ETRN 127.0.0.1 40002 - - - a b\n") == (
        b"DENY 459 4.5.4 Syntax Error in Parameters\n"
    )
    records = hooked.etrn_records()
    assert [(r["argument"], r["reply"]) for r in records] == [
        ("@customer.net", 250),
        ("Customer.Example.Evil", 459),
        ("a b", 501),
    ]
    assert records[0]["frontend"] == "exim-acl"
    assert (records[0]["helo"], records[1]["auth_user"]) == ("client.test", "alice")


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELLO\n",
        b"ETRN 127.0.0.1 1 - -\n",  # too few fields
        b"ETRN 127.0.0.1 1 !!notbase64 - - customer.example\n",
        b"ETRN 127.0.0.1 1 - - - customer.example",  # no newline before EOF
    ],
)
def test_exim_garbage_is_closed_unanswered(hooked: Bridge, tmp_path: Path, garbage: bytes) -> None:
    assert exim(tmp_path / "exim.sock", garbage) == b""  # Exim: "defer", 451
    assert hooked.etrn_records() == []


def test_port_that_is_no_number(hooked: Bridge, tmp_path: Path) -> None:
    """Exim's and Postfix's port field in digits int() refuses ("²" is a digit to
    str.isdigit): no port, the request goes on (it was an internal error, logged
    with a traceback, and no answer)."""
    answer = exim(tmp_path / "exim.sock", "ETRN 127.0.0.1 \u00b2 - - - customer.example\n".encode())
    assert answer.startswith(b"OK 250 ")
    with connect(tmp_path / "postfix.sock") as sock:
        request = POSTFIX_ETRN.format(domain="customer.example").replace("40000", "\u00b2")
        sock.sendall(request.encode())
        assert read_answers(sock, 1, b"\n\n") == [b"action=OK"]
    assert [r["client_port"] for r in hooked.etrn_records()] == [None, None]
    assert not [line for line in hooked.log_lines if "internal error" in line]


def test_exim_overlong_argument_is_refused_and_audited(hooked: Bridge, tmp_path: Path) -> None:
    answer = exim(tmp_path / "exim.sock", b"ETRN 127.0.0.1 1 - - - " + b"a" * 2000 + b"\n")
    assert answer == b"DENY 459 4.5.4 Syntax Error in Parameters\n"
    [record] = hooked.etrn_records()
    assert record["reply"] == 501 and record["reason"] == "command line too long"


# Sendmail socketmap -------------------------------------------------------------------


def sendmail_key(
    argument: str,
    address: str = "127.0.0.1",
    port: str = "40000",
    fingerprint: str = "",
    auth: str = "",
) -> str:
    """The key the kit's check_etrn ruleset builds (sendmail/sendmail.mc.plugin.snippet)."""
    return f"etrnpol <{address}><{port}><{fingerprint}><{auth}><{argument}>"


def test_sendmail_lookups_on_a_persistent_connection(hooked: Bridge, tmp_path: Path) -> None:
    with connect(tmp_path / "sendmail.sock") as sock:
        sock.sendall(
            netstring(sendmail_key("customer.example"))
            + netstring(sendmail_key("#customerq", address="IPv6:::1", port=""))
            + netstring(sendmail_key("mycustomer.example"))
            + netstring(sendmail_key(""))
            + netstring("othermap " + sendmail_key("customer.example")[len("etrnpol ") :])
            + netstring(sendmail_key("customer.example", address=""))  # no address: denied
        )
        answers = read_netstrings(sock, 6)
    assert answers == [
        'OK PASS "250 2.0.0 OK, queuing for node customer.example started"',
        'OK PASS "250 2.0.0 OK, queuing for node #customerq started"',
        'OK DENY "459 4.7.1 Node mycustomer.example not allowed: not authorized"',
        'OK DENY "500 5.5.2 Syntax Error"',
        "PERM unknown map 'othermap'",
        'OK DENY "459 4.7.1 Node customer.example not allowed: not authorized"',
    ]
    records = hooked.etrn_records()
    assert [(r["client_ip"], r["client_port"], r["argument"], r["reply"]) for r in records] == [
        ("127.0.0.1", 40000, "customer.example", 250),
        ("::1", None, "#customerq", 250),
        ("127.0.0.1", 40000, "mycustomer.example", 459),
        ("127.0.0.1", 40000, "", 500),
        ("", 40000, "customer.example", 459),
    ]
    assert {r["frontend"] for r in records} == {"sendmail-socketmap"}


def test_sendmail_identity_fields(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    """AUTH identity (xtext, as Sendmail's {auth_authen}) and certificate fingerprint
    ({cert_fp}: upper-case hex, colons) reach the policy: only the entry's user with
    its certificate may flush; the same request without either is refused."""
    fingerprint = ":".join(["AB"] * 32)
    entry = {
        "id": "alice",
        "users": ["alice+x@example.test"],
        "tls_fingerprints": ["sha256:" + fingerprint],
        "targets": ["alice.example"],
    }
    bridge = start_bridge({**hooks_config(tmp_path), "policy": {"clients": [entry]}})
    other = ":".join(["CD"] * 32)
    alice = "alice+2Bx@example.test"
    with connect(tmp_path / "sendmail.sock") as sock:
        sock.sendall(
            netstring(sendmail_key("alice.example", fingerprint=fingerprint, auth=alice))
            + netstring(sendmail_key("alice.example", fingerprint=fingerprint, auth="bob"))
            + netstring(sendmail_key("alice.example", auth=alice))
            + netstring(sendmail_key("alice.example", fingerprint=other, auth=alice))
        )
        answers = read_netstrings(sock, 4)
    assert [answer.split('"')[1][:3] for answer in answers] == ["250", "459", "459", "459"]
    records = bridge.etrn_records()
    assert [(r["auth_user"], r["tls"]) for r in records] == [
        ("alice+x@example.test", True),
        ("bob", True),
        ("alice+x@example.test", False),
        ("alice+x@example.test", True),
    ]
    assert records[0]["rule"] == "alice"


@pytest.mark.parametrize(
    "key",
    [
        "etrnpol 127.0.0.1/customer.example",  # the old "address/argument" key
        "etrnpol <127.0.0.1><1><><>",  # four fields, no argument
        "etrnpol <127.0.0.1><><><customer.example>",  # a field missing
        "etrnpol <127.0.0.1><1><><<bogus>><customer.example>",  # brackets in a field
        "etrnpol <127.0.0.1><1><><alice+4><customer.example>",  # not xtext
        "etrnpol <127.0.0.1><1><><alice+zz><customer.example>",
        "etrnpol  <127.0.0.1><1><><><customer.example>",  # not the key's first byte
    ],
)
def test_sendmail_malformed_key_is_closed(hooked: Bridge, tmp_path: Path, key: str) -> None:
    """A key the kit's ruleset cannot build: closed (Sendmail's TEMP, the ruleset's 458),
    never allowed; nothing reached the service."""
    with connect(tmp_path / "sendmail.sock") as sock:
        sock.sendall(netstring(key))
        assert read_until_closed(sock) == b""
    assert hooked.etrn_records() == []
    assert_still_serving(hooked, tmp_path)


def test_sendmail_key_cut_short_is_refused(hooked: Bridge, tmp_path: Path) -> None:
    """Sendmail cuts a key at 1024 bytes without a word: an argument without its
    closing '>' is refused 501 (and audited), never flushed as the shorter name."""
    with connect(tmp_path / "sendmail.sock") as sock:
        sock.sendall(netstring("etrnpol <127.0.0.1><40000><><><customer.example"))
        [answer] = read_netstrings(sock, 1)
    assert answer == 'OK DENY "501 5.5.4 Syntax Error in Parameters"'
    [record] = hooked.etrn_records()
    assert (record["argument"], record["reply"]) == ("customer.example", 501)


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello",  # no length
        b"5:abc,",  # shorter than announced, then EOF
        b"3:abcd",  # not terminated by ','
        b"007:etrnpol,",  # leading zeros
        b"99999999999:",  # absurd length
    ],
)
def test_sendmail_garbage_is_closed(hooked: Bridge, tmp_path: Path, garbage: bytes) -> None:
    with connect(tmp_path / "sendmail.sock") as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""  # Sendmail: TEMP, the ruleset's 458
    assert hooked.etrn_records() == []


# Limits common to every hook ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "flood"),
    [
        ("postfix.sock", b"request=smtpd_access_policy\n" + b"x=" + b"a" * 100_000),
        ("exim.sock", b"ETRN 127.0.0.1 1 - - - " + b"a" * 100_000),
        ("sendmail.sock", b"100000:" + b"a" * 100_000),
    ],
)
def test_oversized_request_is_closed(
    hooked: Bridge, tmp_path: Path, name: str, flood: bytes
) -> None:
    with connect(tmp_path / name) as sock:
        # closed while we were still writing: that is the refusal
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(flood)
        assert read_until_closed(sock) == b""
    assert hooked.etrn_records() == []
    assert_still_serving(hooked, tmp_path)


@pytest.mark.parametrize(
    ("name", "start"),
    [
        ("postfix.sock", b"request=smtpd_access_policy\nprotocol_state=ETRN\n"),
        ("exim.sock", b"ETRN 127.0.0.1 1 - - - customer.exa"),
        ("sendmail.sock", b"60:etrnpol <127.0.0.1><40000><><><customer"),
    ],
)
def test_unfinished_request_times_out(
    hooked: Bridge, tmp_path: Path, name: str, start: bytes
) -> None:
    """request_timeout (1 s here): a request begun and never finished is dropped."""
    with connect(tmp_path / name) as sock:
        sock.sendall(start)
        assert read_until_closed(sock) == b""
    assert hooked.etrn_records() == []
    hooked.wait_for_log("not finished within 1 s")


def test_idle_connection_is_closed_quietly(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    """idle_timeout (1 s here): a connection that asks nothing more is closed without
    a warning, while a request begun still gets the whole request_timeout (30 s)."""
    bridge = start_bridge(hooks_config(tmp_path, idle_timeout=1, request_timeout=30))
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(POSTFIX_ETRN.format(domain="customer.example").encode())
        assert read_answers(sock, 1, b"\n\n") == [b"action=OK"]
        assert read_until_closed(sock) == b""
    with connect(tmp_path / "postfix.sock") as sock:
        request = POSTFIX_ETRN.format(domain="customer.example").encode()
        sock.sendall(request[:20])
        time.sleep(2)  # longer than idle_timeout, inside request_timeout
        sock.sendall(request[20:])
        assert read_answers(sock, 1, b"\n\n") == [b"action=OK"]
    assert len(bridge.etrn_records()) == 2
    assert not [line for line in bridge.log_lines if "closing" in line]


def test_connection_cap(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    """1,000 connections against a cap of 50: the first 50 are served, the rest
    closed at once, and the hook answers again once they are gone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(4096, hard)), hard))
    bridge = start_bridge(hooks_config(tmp_path, max_connections=50, request_timeout=30))
    held = []
    try:
        for _ in range(1000):
            held.append(connect_when_accepted(tmp_path / "sendmail.sock"))
        for sock in held[50:]:
            assert read_until_closed(sock) == b""
        for sock in held[:50]:
            sock.settimeout(0.01)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    bridge.wait_for_log("50 connections open: refusing one")
    assert_still_serving(bridge, tmp_path)


def connect_when_accepted(path: Path) -> socket.socket:
    """Connect, waiting while the listen queue is full (a unix socket says EAGAIN)."""
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        try:
            return connect(path)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def assert_still_serving(bridge: Bridge, directory: Path) -> None:
    assert bridge.process.poll() is None
    before = len(bridge.etrn_records())
    answer = exim(directory / "exim.sock", b"ETRN 127.0.0.1 1 - - - customer.example\n")
    assert answer.startswith(b"OK 250 ")
    assert len(bridge.etrn_records()) == before + 1


# Sockets ------------------------------------------------------------------------------


def test_out_of_file_descriptors_logs_one_line_and_recovers(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    """A hook socket accepts the way the listener does: out of descriptors, one log
    line a minute and a pause, not a traceback per failed accept; then it serves again."""
    bridge = start_bridge(hooks_config(tmp_path))
    pid = bridge.process.pid
    limit = len(os.listdir(f"/proc/{pid}/fd")) + 5
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={limit}:{limit}"], check=True)
    flood = [connect(tmp_path / "postfix.sock") for _ in range(60)]
    time.sleep(3)  # three pauses' worth of retries
    accept_lines = [line for line in bridge.log_lines if "accept on" in line]
    assert len(accept_lines) == 1, accept_lines
    assert f"accept on unix:{tmp_path / 'postfix.sock'}: Too many open files" in accept_lines[0]
    assert not any("Traceback" in line for line in bridge.log_lines)
    for sock in flood:
        sock.close()
    time.sleep(1.5)  # the next accept after the pause
    with connect(tmp_path / "postfix.sock") as sock:
        sock.sendall(POSTFIX_ETRN.format(domain="customer.example").encode())
        assert read_answers(sock, 1, b"\n\n") == [b"action=OK"]


def test_socket_mode_group_and_removal(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    group = "nogroup" if os.geteuid() == 0 else None
    config = hooks_config(tmp_path, mode="0640")
    if group:
        config["hooks"]["exim"]["group"] = group
    bridge = start_bridge(config)
    info = os.stat(tmp_path / "exim.sock")
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
    if group:
        assert info.st_gid == grp.getgrnam(group).gr_gid
    assert bridge.stop() == 0
    assert not (tmp_path / "exim.sock").exists()  # removed on a clean stop


def test_stale_socket_is_replaced(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "exim.sock"))
    stale.close()  # the file stays, nobody listens: a crashed bridge's socket
    bridge = start_bridge(hooks_config(tmp_path))
    assert_still_serving(bridge, tmp_path)


def run_serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_replace_a_file_or_a_live_socket(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    (tmp_path / "postfix.sock").write_text("not a socket")
    config = write_config(tmp_path, hooks_config(tmp_path), "refused.yaml")
    result = run_serve(config)
    assert result.returncode == 1
    assert "postfix.sock: exists and is not a socket" in result.stderr
    assert (tmp_path / "postfix.sock").read_text() == "not a socket"
    (tmp_path / "postfix.sock").unlink()
    start_bridge(hooks_config(tmp_path))  # a live bridge holds the sockets
    result = run_serve(config)
    assert result.returncode == 1
    assert "another process is listening on it" in result.stderr


def test_refuses_a_world_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = write_config(
        tmp_path,
        {"backend": {"type": "log"}, "hooks": {"exim": {"listen": f"unix:{shared}/exim.sock"}}},
        "shared.yaml",
    )
    result = run_serve(config)
    assert result.returncode == 1
    assert "is world-writable" in result.stderr
    assert not (shared / "exim.sock").exists()


def test_hooks_only_process_has_no_listener(tmp_path: Path) -> None:
    """'listen' left out with a hook configured: no ETRN listener at all."""
    config = {"backend": {"type": "log"}, "audit": {"file": "audit.jsonl"}}
    config.update(hooks_config(tmp_path))
    path = write_config(tmp_path, config, "hooks-only.yaml")
    process = run_bridge_process(path)
    try:
        assert process.stderr is not None
        ready = next(line for line in process.stderr if "ready, listening on" in line)
        listed = ready.split("ready, listening on ")[1].split()
        assert [item.split("@")[0] for item in listed] == [
            "postfix-policy",
            "exim-acl",
            "sendmail-socketmap",
        ]
        answer = exim(tmp_path / "exim.sock", b"ETRN 127.0.0.1 1 - - - customer.example\n")
        assert answer.startswith(b"DENY 459 ")  # no policy: nothing is allowed
    finally:
        process.terminate()
        assert process.wait(15) == 0


@pytest.mark.parametrize("verbose", [False, True])
def test_each_request_is_logged_only_with_verbose(tmp_path: Path, verbose: bool) -> None:
    """The audit record is the request's record; serve -v adds a log line for each."""
    path = write_config(tmp_path, merge_config(BASE_CONFIG, hooks_config(tmp_path)))
    argv = [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(path)]
    process = subprocess.Popen(
        [*argv, "-v"] if verbose else argv,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        next(line for line in process.stderr if "ready, listening on" in line)
        answer = exim(tmp_path / "exim.sock", b"ETRN 127.0.0.1 1 - - - customer.example\n")
        assert answer.startswith(b"OK 250 ")
    finally:
        process.terminate()
        rest = process.communicate(timeout=15)[1]
    assert process.returncode == 0
    logged = [line for line in rest.splitlines() if "etrn session=" in line]
    assert len(logged) == (1 if verbose else 0)
    if verbose:
        assert "target=customer.example status=started" in logged[0]


def test_reload_applies_to_hooks(start_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    """SIGHUP: the hooks' next requests (even on an open connection) use the new policy."""
    config = hooks_config(tmp_path)
    bridge = start_bridge(config)
    path = tmp_path / "postfix.sock"
    with connect(path) as sock:
        sock.sendall(POSTFIX_ETRN.format(domain="other.example").encode())
        assert read_answers(sock, 1, b"\n\n")[0].startswith(b"action=459 ")
        other = {"id": "other", "networks": ["127.0.0.0/8"], "targets": ["other.example"]}
        write_config(
            tmp_path,
            merge_config(BASE_CONFIG, {**config, "policy": {"clients": [other]}}),
        )
        bridge.send_signal(signal.SIGHUP)
        bridge.wait_for_log("reload: .* is in force")
        sock.sendall(POSTFIX_ETRN.format(domain="other.example").encode())
        assert read_answers(sock, 1, b"\n\n") == [b"action=OK"]


def test_workers_share_the_hook_sockets(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge = start_bridge({**hooks_config(tmp_path), "workers": 2})
    answers = {
        exim(tmp_path / "exim.sock", b"ETRN 127.0.0.1 1 - - - customer.example\n")
        for _ in range(20)
    }
    assert answers == {b"OK 250 2.0.0 OK, queuing for node customer.example started\n"}
    assert len(bridge.etrn_records()) == 20
    assert bridge.stop() == 0
    assert not (tmp_path / "exim.sock").exists()


def test_sockets_are_made_before_privileges_drop(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    """As root with 'user: nobody': the socket is made by root, with the
    configured group, and the process serves it after dropping to nobody."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root (CI runs the suite as root)")
    config = hooks_config(tmp_path, group="nogroup")
    bridge = start_bridge({**config, "user": "nobody"})
    bridge.wait_for_log("running as nobody")
    info = os.stat(tmp_path / "exim.sock")
    assert (info.st_uid, info.st_gid) == (0, grp.getgrnam("nogroup").gr_gid)
    assert_still_serving(bridge, tmp_path)
