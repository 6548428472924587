"""Test kit: a real bridge process on loopback, a byte-exact SMTP client, TLS files.

The fixtures in ``conftest.py`` hand these out; tests import the types from
here (``from bridgekit import Bridge``). ``launch_bridge(dir, config)`` writes
``config`` (a dict merged over :data:`BASE_CONFIG`; lists are replaced,
mappings merged) as YAML into the test's tmp_path, runs
``python -m etrn_bridge serve -c FILE`` and waits for its ready line. The
returned :class:`Bridge` knows its addresses, reads the audit JSON lines,
opens SMTP clients and stops the process (SIGTERM) at the end of the test.
Only loopback addresses are ever used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0
IO_TIMEOUT = 10.0
AUDIT_FILE = "audit.jsonl"

# Loopback clients may flush customer.example, customer.net and its
# subdomains, and the queue "customerq"; anything else is refused.
BASE_CONFIG: dict[str, Any] = {
    "listen": ["127.0.0.1:0"],
    "hostname": "bridge.test",
    "audit": {"file": AUDIT_FILE},
    "backend": {"type": "log"},
    # Every ETRN reaches the backend: tests of rate limits and coalescing set their own.
    "limits": {"per_client": "off", "per_target": "off"},
    "policy": {
        "clients": [
            {
                "id": "loopback",
                "networks": ["127.0.0.0/8", "::1/128"],
                "targets": ["customer.example", "@customer.net", "#customerq"],
            }
        ]
    },
}

_READY = re.compile(r"ready, listening on (?P<addresses>.+)$")


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Reply:
    """One SMTP reply: its code and its lines (without CRLF)."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return self.text


class SmtpClient:
    """A blocking, byte-exact SMTP client for tests (sends exactly what it is given)."""

    def __init__(self, host: str, port: int, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        self.greeting = self.read_reply()

    def send(self, line: bytes | str) -> None:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        self.sock.sendall(raw + b"\r\n")

    def command(self, line: bytes | str) -> Reply:
        self.send(line)
        return self.read_reply()

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.command(f"EHLO {name}")

    def read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def read_reply(self) -> Reply:
        lines: list[str] = []
        while True:
            line = self.read_line().decode("utf-8", "backslashreplace")
            lines.append(line)
            if line[3:4] != "-":
                return Reply(int(line[:3]), lines)

    def starttls(self, context: ssl.SSLContext, server_name: str = "bridge.test") -> Reply:
        reply = self.command("STARTTLS")
        if reply.code == 220:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_name)
        return reply

    def is_closed(self, timeout: float = IO_TIMEOUT) -> bool:
        """True when the server closes the connection (nothing more to read)."""
        self.sock.settimeout(timeout)
        try:
            return not self._buffer and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@dataclass
class Bridge:
    """A running ``etrn-bridge serve`` process."""

    process: subprocess.Popen[str]
    directory: Path
    config_path: Path
    config: dict[str, Any]
    addresses: list[tuple[str, int]]
    log_lines: list[str] = field(default_factory=list)
    clients: list[SmtpClient] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.addresses[0][0]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def audit_path(self) -> Path:
        return self.directory / self.config.get("audit", {}).get("file", AUDIT_FILE)

    def audit(self) -> list[dict[str, Any]]:
        """Every audit record so far, each line parsed as JSON."""
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def etrn_records(self) -> list[dict[str, Any]]:
        return [record for record in self.audit() if record.get("event") == "etrn"]

    def connect(self, host: str | None = None, port: int | None = None) -> SmtpClient:
        client = SmtpClient(host or self.host, port or self.port)
        self.clients.append(client)
        return client

    def session(self, helo: str = "client.test") -> SmtpClient:
        """A connected client that has already said EHLO."""
        client = self.connect()
        assert client.ehlo(helo).code == 250
        return client

    def wait_for_log(self, pattern: str, timeout: float = IO_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log_lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matches {pattern!r}:\n" + "\n".join(self.log_lines))

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def write_config(directory: Path, config: Mapping[str, Any], name: str = "bridge.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def run_bridge_process(config_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "etrn_bridge", "serve", "-c", str(config_path)],
        cwd=config_path.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="backslashreplace",
    )


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def launch_bridge(directory: Path, config: Mapping[str, Any]) -> Bridge:
    """Start a bridge with ``config`` merged over BASE_CONFIG and wait until it listens."""
    full = merge_config(BASE_CONFIG, config)
    config_path = write_config(directory, full)
    process = run_bridge_process(config_path)
    log_lines: list[str] = []
    ready = threading.Event()
    addresses: list[tuple[str, int]] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log_lines.append(line.rstrip("\n"))
            match = _READY.search(line)
            if match and not ready.is_set():
                # "name@endpoint" items are hooks (plugin mode), not listener addresses
                listed = match["addresses"].split()
                addresses.extend(_parse_address(a) for a in listed if "@" not in a)
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read_stderr, daemon=True).start()
    if not ready.wait(START_TIMEOUT) or not (addresses or full.get("hooks")):
        process.kill()
        process.wait()
        raise AssertionError("bridge did not start:\n" + "\n".join(log_lines))
    return Bridge(process, directory, config_path, full, addresses, log_lines)


@dataclass(frozen=True)
class TlsFiles:
    """A test CA, the server's certificate and a client certificate, as PEM files."""

    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: trustme.LeafCert

    def client_context(self, with_certificate: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_certificate:
            self.client_cert.configure_cert(context)
        return context

    def client_fingerprint(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.client_cert.cert_chain_pems[0].bytes().decode())
        return "sha256:" + hashlib.sha256(der).digest().hex(":").upper()

    def config(self, client_ca: bool = False) -> dict[str, Any]:
        """The ``tls:`` section for these files."""
        section = {"cert": str(self.server_cert), "key": str(self.server_key)}
        if client_ca:
            section["client_ca"] = str(self.ca_file)
        return section


def run_send(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``etrn-bridge send --port PORT ARGS...`` as a customer would run it."""
    return subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [
            sys.executable,
            "-m",
            "etrn_bridge",
            "send",
            "--port",
            str(port),
            "--timeout",
            "10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def require_program(program: str) -> str:
    """The program's path. Missing: as root (CI) the test fails, otherwise it skips loudly."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} not installed: run scripts/install-system-deps.sh"
        if os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    return path
