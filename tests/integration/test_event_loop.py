"""``event_loop: uvloop`` (the optional extra) serves the same sessions and hooks as asyncio."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from bridgekit import IO_TIMEOUT, Bridge

POSTFIX_ETRN = (
    b"request=smtpd_access_policy\nprotocol_state=ETRN\nclient_address=127.0.0.1\n"
    b"etrn_domain=customer.example\n\n"
)
SENDMAIL_KEY = b"etrnpol <127.0.0.1><2525><><><other.example>"


def exchange(path: Path, request: bytes, *, half_close: bool = False) -> bytes:
    """Send ``request`` on a hook's unix socket; what comes back until the reply ends."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while not received.endswith((b"\n", b",")) and (chunk := sock.recv(4096)):
            received += chunk
        return received


@pytest.mark.parametrize(("name", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_event_loop_serves_etrn_and_the_hooks(
    start_bridge: Callable[..., Bridge], tmp_path: Path, name: str, module: str
) -> None:
    hooks = {
        "postfix_policy": {"listen": f"unix:{tmp_path / 'postfix.sock'}"},
        "exim": {"listen": f"unix:{tmp_path / 'exim.sock'}"},
        "sendmail": {"listen": f"unix:{tmp_path / 'sendmail.sock'}"},
    }
    bridge = start_bridge({"event_loop": name, "hooks": hooks})
    assert any(line.endswith(f"event loop: {module}") for line in bridge.log_lines)
    client = bridge.session()
    assert client.command("ETRN customer.example").code == 250
    assert client.command("ETRN other.example").code == 459
    client.close()
    assert exchange(tmp_path / "postfix.sock", POSTFIX_ETRN) == b"action=OK\n\n"
    exim = b"ETRN 127.0.0.1 1 - - - customer.example\n"
    assert exchange(tmp_path / "exim.sock", exim, half_close=True).startswith(b"OK 250 ")
    sendmail = str(len(SENDMAIL_KEY)).encode() + b":" + SENDMAIL_KEY + b","
    assert b':OK DENY "459 ' in exchange(tmp_path / "sendmail.sock", sendmail)
    records = bridge.etrn_records()
    assert [(r["frontend"], r["reply"]) for r in records] == [
        ("listener", 250),
        ("listener", 459),
        ("postfix-policy", 250),
        ("exim-acl", 250),
        ("sendmail-socketmap", 459),
    ]
