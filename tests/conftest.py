"""Shared fixtures (types and helpers live in ``bridgekit.py``, importable by tests).

- ``start_bridge(config=None)``: factory of running ``etrn-bridge serve`` processes,
  ``config`` merged over ``bridgekit.BASE_CONFIG``; all stopped after the test.
- ``bridge``: one started with the base config (log backend).
- ``tls_files``: a trustme CA, server and client certificates as PEM files.
- ``redis_server``: a real redis-server of the test's own on a free loopback port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trustme
from bridgekit import Bridge, TlsFiles, launch_bridge
from rediskit import RedisServer


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """Factory: ``start_bridge({"session": {"idle_timeout": 0.5}})`` -> running Bridge."""
    bridges: list[Bridge] = []

    def start(config: Mapping[str, Any] | None = None) -> Bridge:
        bridge = launch_bridge(tmp_path, config or {})
        bridges.append(bridge)
        return bridge

    yield start
    for bridge in bridges:
        bridge.stop()


@pytest.fixture
def bridge(start_bridge: Callable[..., Bridge]) -> Bridge:
    """A bridge with BASE_CONFIG: log backend, loopback may flush customer.*"""
    return start_bridge()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    ca = trustme.CA()
    server = ca.issue_cert("bridge.test", "127.0.0.1", "::1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_cert = tmp_path / "server.pem"
    server_key = tmp_path / "server.key"
    server.private_key_and_cert_chain_pem.write_to_path(str(server_cert))
    server.private_key_pem.write_to_path(str(server_key))
    client = ca.issue_cert("client.example")
    return TlsFiles(ca, ca_file, server_cert, server_key, client)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
