"""A real ``redis-server`` of the test's own: a free loopback port, a temporary
directory, no persistence; never the system's service.

``RedisServer(directory).start()``; ``kill()`` stops it the hard way (SIGKILL, as
a crash or a partition looks to its clients) and ``start()`` brings it back on
the same port, empty.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT = 30.0  # generous: a loaded CI machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def require_redis_server() -> str:
    """The program's path; as root (CI) a missing one fails, otherwise it skips loudly."""
    program = shutil.which("redis-server")
    if program is None:
        reason = "redis-server is not installed: run scripts/install-system-deps.sh"
        if os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason)
    return program


class RedisServer:
    """``tls``: (certificate, key, CA) PEM files: TLS only, the URL is rediss://."""

    def __init__(self, directory: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.program = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen_options(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        cert, key, ca = self.tls
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self) -> RedisServer:
        argv = [
            self.program,
            "--bind", "127.0.0.1",
            *self._listen_options(),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server exited: {log}")
            time.sleep(0.02)
        raise AssertionError("redis-server did not answer PING")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                conn = raw
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.tls[2]))
                    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisSentinel(RedisServer):
    """A Sentinel (redis-server --sentinel) watching ``master`` as ``service``."""

    def __init__(self, directory: Path, master: RedisServer, service: str) -> None:
        super().__init__(directory)
        self.master = master
        self.service = service

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self) -> RedisSentinel:
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it: its own copy
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'redis.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
        )
        self.process = subprocess.Popen(
            [self.program, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.02)
        raise AssertionError("redis sentinel did not answer PING")
