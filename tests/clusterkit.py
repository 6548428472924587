"""Several bridge nodes sharing one real redis-server (tests and bench/cluster.py).

``start_nodes(directory, redis_url, backends)`` runs one ``etrn-bridge serve``
per backend, each with its own directory, audit file and loopback port, all
naming the same Redis; node names are mx1, mx2, ...
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from bridgekit import Bridge, launch_bridge

from etrn_bridge.sharedstate.nodes import HEARTBEAT_TTL, heartbeat_key

LIVE_TIMEOUT = 20.0  # generous: a loaded CI machine


def cluster_config(
    node: str, redis_url: str, backend: Mapping[str, Any], **cluster: Any
) -> dict[str, Any]:
    return {
        "backend": dict(backend),
        "cluster": {"redis": redis_url, "node": node, **cluster},
    }


def start_nodes(
    directory: Path,
    redis_url: str,
    backends: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
    **cluster: Any,
) -> list[Bridge]:
    """Running nodes mx1..mxN; the caller stops them (``Bridge.stop``)."""
    nodes: list[Bridge] = []
    try:
        for number, backend in enumerate(backends, start=1):
            name = f"mx{number}"
            config = {**cluster_config(name, redis_url, backend, **cluster), **(extra or {})}
            node_dir = directory / name
            node_dir.mkdir(parents=True, exist_ok=True)
            nodes.append(launch_bridge(node_dir, config))
        wait_live(redis_url, [f"mx{n}" for n in range(1, len(backends) + 1)])
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def wait_live(redis_url: str, names: Sequence[str], alive: bool = True) -> None:
    """Until every named node's heartbeat is (or, alive=False, is no longer) in Redis."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + LIVE_TIMEOUT + (0 if alive else HEARTBEAT_TTL)
    try:
        while time.monotonic() < deadline:
            if all(bool(client.exists(heartbeat_key(name))) == alive for name in names):
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"nodes {list(names)} not {'live' if alive else 'gone'} in Redis")


def records(node: Bridge, event: str) -> list[dict[str, Any]]:
    return [record for record in node.audit() if record.get("event") == event]
