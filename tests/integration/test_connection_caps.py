"""Caps across connections (issue 7.3, 7.7): sessions per client and in all, session
lifetime, AUTH failures per client address, password checks at once, the listen
backlog, and running out of file descriptors. Past a cap: 421 4.7.0 and close.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bridgekit import Bridge, SmtpClient, TlsFiles

from etrn_bridge.frontends.passwords import hash_password

PASSWORD = "correct horse battery staple"


def connect_from(bridge: Bridge, source: str) -> SmtpClient:
    client = SmtpClient.__new__(SmtpClient)
    client.sock = socket.create_connection((bridge.host, bridge.port), 10, (source, 0))
    client._buffer = b""
    client.greeting = client.read_reply()
    bridge.clients.append(client)
    return client


def test_sessions_per_client_are_capped(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"connections": {"max_sessions_per_client": 3}})
    held = [bridge.connect() for _ in range(3)]
    assert [c.greeting.code for c in held] == [220] * 3
    refused = bridge.connect()
    assert refused.greeting.text == ("421 4.7.0 bridge.test Too many connections, try again later")
    assert refused.is_closed()
    assert connect_from(bridge, "127.0.0.2").greeting.code == 220  # another address
    held[0].command("QUIT")
    assert held[0].is_closed()
    time.sleep(0.2)
    assert bridge.connect().greeting.code == 220  # a place is free again


def test_sessions_in_all_are_capped(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"connections": {"max_sessions": 2}})
    assert connect_from(bridge, "127.0.0.2").greeting.code == 220
    assert connect_from(bridge, "127.0.0.3").greeting.code == 220
    refused = connect_from(bridge, "127.0.0.4")
    assert refused.greeting.code == 421
    assert refused.is_closed()


def test_session_lifetime_ends_a_busy_session(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge({"connections": {"max_session_time": 1}})
    client = bridge.session()
    codes = []
    for _ in range(200):  # NOOP keeps it active: only the lifetime can end it
        reply = client.command("NOOP")
        codes.append(reply.code)
        if reply.code != 250:
            break
        time.sleep(0.05)
    assert reply.text == "421 4.7.0 bridge.test Session time limit reached, closing connection"
    assert client.is_closed()
    bridge.wait_for_log(r"end=session time limit")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def auth_bridge(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles, tmp_path: Path
) -> Callable[..., Bridge]:
    passwords = tmp_path / "passwords"
    passwords.write_text(f"alice:{hash_password(PASSWORD)}\n")

    def start(connections: dict[str, object]) -> Bridge:
        return start_bridge(
            {
                "tls": tls_files.config(),
                "auth": {"passwords_file": str(passwords)},
                "connections": connections,
            }
        )

    return start


def tls_session(bridge: Bridge, tls_files: TlsFiles) -> SmtpClient:
    client = bridge.session()
    assert client.starttls(tls_files.client_context()).code == 220
    assert client.ehlo().code == 250
    return client


def test_auth_failures_are_throttled_per_address_across_sessions(
    auth_bridge: Callable[..., Bridge], tls_files: TlsFiles
) -> None:
    bridge = auth_bridge({"auth_failures": "3/10m"})
    for guess in range(3):  # reconnecting does not reset the count
        client = tls_session(bridge, tls_files)
        assert client.command("AUTH PLAIN " + b64(f"\0alice\0guess{guess}")).code == 535
        client.close()
    client = tls_session(bridge, tls_files)
    # Even the right password is not checked now.
    reply = client.command("AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}"))
    assert reply.text == "421 4.7.0 bridge.test Too many failed authentications, try again later"
    assert client.is_closed()
    assert tls_session(bridge, tls_files).command("ETRN customer.example").code == 250


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_password_checks_run_a_bounded_number_at_once(
    auth_bridge: Callable[..., Bridge], tls_files: TlsFiles
) -> None:
    bridge = auth_bridge({"max_password_checks": 1, "auth_failures": "off"})
    baseline = thread_count(bridge.process.pid)
    clients = [tls_session(bridge, tls_files) for _ in range(8)]
    most = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, thread_count(bridge.process.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for client in clients:  # eight checks asked for at once
        client.send("AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}"))
    try:
        assert [client.read_reply().code for client in clients] == [235] * 8
    finally:
        done.set()
        sampler.join()
    assert most == baseline + 1  # one checking thread, however many clients ask


def listen_backlog(port: int) -> int:
    output = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    (line,) = output.splitlines()
    return int(line.split()[2])  # Send-Q of a listening socket: its backlog


def test_listen_backlog_is_what_the_config_says(start_bridge: Callable[..., Bridge]) -> None:
    assert listen_backlog(start_bridge().port) == 1024
    assert listen_backlog(start_bridge({"connections": {"listen_backlog": 77}}).port) == 77


def test_out_of_file_descriptors_logs_one_line_and_recovers(
    start_bridge: Callable[..., Bridge],
) -> None:
    bridge = start_bridge()
    pid = bridge.process.pid
    limit = len(os.listdir(f"/proc/{pid}/fd")) + 5
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={limit}:{limit}"], check=True)
    flood = [socket.create_connection((bridge.host, bridge.port), 10) for _ in range(60)]
    time.sleep(3)  # three pauses' worth of retries
    log_size = sum(len(line) for line in bridge.log_lines)
    accept_lines = [line for line in bridge.log_lines if "accept on" in line]
    assert len(accept_lines) == 1, accept_lines
    assert "Too many open files" in accept_lines[0]
    assert not any("Traceback" in line for line in bridge.log_lines)
    assert log_size < 20_000
    for sock in flood:
        sock.close()
    time.sleep(1.5)  # the next accept after the pause
    assert bridge.session().command("ETRN customer.example").code == 250
