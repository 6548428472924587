"""Three real bridge nodes (``etrn-bridge serve``) sharing one real redis-server.

Each node's backend is the ``command`` backend running a script that appends
one line per flush to that node's own file, so flushes are counted per node for
real. The MTA version (Postfix, Exim, Sendmail behind the three nodes) is in
tests/mta/test_cluster_real.py.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncsmtp import etrn_session, write_counting_flush
from bridgekit import Bridge
from clusterkit import records, start_nodes, wait_live
from rediskit import RedisServer

DOMAIN = "customer.example"
FLOOD = 300


class Cluster:
    def __init__(self, directory: Path, redis_server: RedisServer) -> None:
        self.directory = directory
        self.redis = redis_server
        self.nodes: list[Bridge] = []
        self.runs = [directory / f"runs-mx{n}.txt" for n in (1, 2, 3)]

    def start(self, flush_seconds: tuple[float, ...] = (0.05, 0.05, 0.05), **settings: Any) -> None:
        backends = []
        for number, (runs, seconds) in enumerate(zip(self.runs, flush_seconds, strict=True), 1):
            script = write_counting_flush(self.directory / f"flush-mx{number}", runs, seconds)
            backends.append({"type": "command", "argv": [str(script), "{etrn}"]})
        limits = settings.pop("limits", {"per_client": "off", "per_target": "1/60s"})
        # Floods come from one loopback address here: lift the per-client session cap.
        extra = {"limits": limits, "connections": {"max_sessions_per_client": FLOOD}}
        self.nodes = start_nodes(self.directory, self.redis.url, backends, extra, **settings)

    def flushes(self) -> list[list[str]]:
        return [p.read_text().split() if p.exists() else [] for p in self.runs]

    def etrn(self, node: int, argument: str = DOMAIN) -> tuple[int, dict[str, Any]]:
        """ETRN on node ``node`` (0-based): the reply code and its audit record."""
        before = len(self.nodes[node].etrn_records())
        client = self.nodes[node].session()
        code = client.command(f"ETRN {argument}").code
        client.close()
        record = wait_record(self.nodes[node], before)
        return code, record

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def wait_record(node: Bridge, before: int, timeout: float = 10.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = node.etrn_records()
        if len(found) > before:
            return found[before]
        time.sleep(0.02)
    raise AssertionError("no audit record")


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    made = Cluster(tmp_path, redis_server)
    try:
        yield made
    finally:
        made.stop()


def wait_cluster_flushes(node: Bridge, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(node, "cluster_flush")
        if len(found) >= count:
            return found
        time.sleep(0.02)
    return records(node, "cluster_flush")


def test_one_etrn_flushes_every_node_each_audits_its_own(cluster: Cluster) -> None:
    cluster.start()
    code, record = cluster.etrn(0)
    assert code == 250  # the command backend cannot count
    assert record["nodes_asked"] == ["mx1", "mx2", "mx3"]
    assert record["nodes_answered"] == ["mx1", "mx2", "mx3"]
    assert record["nodes_missing"] == []
    assert cluster.flushes() == [["customer.example"]] * 3
    for name, node in zip(("mx1", "mx2", "mx3"), cluster.nodes, strict=True):
        (flush,) = wait_cluster_flushes(node, 1)
        assert flush["node"] == name
        assert (flush["origin_node"], flush["origin_session"]) == ("mx1", record["session"])
        assert flush["flush_id"] == record["flush_id"]
        assert flush["target"] == DOMAIN and flush["ok"] is True


def test_flood_over_three_nodes_makes_one_flush_per_node(cluster: Cluster) -> None:
    cluster.start(flush_seconds=(0.3, 0.3, 0.3))

    async def flood() -> list[tuple[str, float]]:
        sessions = [
            etrn_session("127.0.0.1", cluster.nodes[i % 3].port, DOMAIN) for i in range(FLOOD)
        ]
        return await asyncio.gather(*sessions)

    replies = asyncio.run(flood())
    assert all(reply.startswith("250 ") for reply, _ in replies), {r for r, _ in replies}
    assert cluster.flushes() == [["customer.example"]] * 3
    etrn = [r for node in cluster.nodes for r in node.etrn_records()]
    assert len(etrn) == FLOOD
    assert sum(not r["coalesced"] for r in etrn) == 1


def test_per_client_holds_across_nodes(cluster: Cluster) -> None:
    cluster.start(limits={"per_client": "3/60s", "per_target": "off"})
    codes = [cluster.etrn(node)[0] for node in (0, 1, 2, 0, 1)]
    assert codes == [250, 250, 250, 459, 459]


def test_redis_killed_local_fallback_then_recovery(cluster: Cluster) -> None:
    cluster.start(limits={"per_client": "off", "per_target": "off"})
    cluster.redis.kill()
    code, record = cluster.etrn(0)
    assert code == 250
    assert record["cluster_fallback"] == "local"
    assert cluster.flushes() == [["customer.example"], [], []]
    cluster.nodes[0].wait_for_log("cluster: Redis unreachable")

    cluster.redis.start()  # back, empty, on the same port
    wait_live(cluster.redis.url, ["mx1", "mx2", "mx3"])
    cluster.nodes[0].wait_for_log("Redis reachable again")
    for _ in range(50):  # every node re-subscribes on its own
        code, record = cluster.etrn(0)
        if record.get("nodes_answered") == ["mx1", "mx2", "mx3"]:
            break
    assert code == 250 and "cluster_fallback" not in record
    assert record["nodes_answered"] == ["mx1", "mx2", "mx3"]


def test_redis_killed_tempfail(cluster: Cluster) -> None:
    cluster.start(on_redis_failure="tempfail")
    cluster.redis.kill()
    code, record = cluster.etrn(1)
    assert code == 458
    assert record["cluster_fallback"] == "tempfail" and record["decision"] == "allow"
    assert cluster.flushes() == [[], [], []]


def test_node_killed_mid_flush_does_not_block_the_reply(cluster: Cluster) -> None:
    # mx3's flush takes 30 s; it is killed while flushing.
    cluster.start(flush_seconds=(0.05, 0.05, 30.0), fanout_timeout="1s")
    code, record = cluster.etrn(0)
    assert code == 250
    assert record["nodes_answered"] == ["mx1", "mx2"] and record["nodes_missing"] == ["mx3"]
    cluster.nodes[2].process.send_signal(signal.SIGKILL)
    cluster.nodes[2].process.wait(10)
    code, record = cluster.etrn(1, "other.customer.net")
    assert code == 250
    assert record["nodes_answered"] == ["mx1", "mx2"]


def test_a_stopped_node_leaves_at_once_and_doctor_still_shows_it(cluster: Cluster) -> None:
    cluster.start()
    assert cluster.nodes[2].stop() == 0  # SIGTERM: a graceful stop
    code, record = cluster.etrn(0)
    assert code == 250
    assert record["nodes_asked"] == ["mx1", "mx2"] and record["nodes_missing"] == []
    done = subprocess.run(
        [sys.executable, "-m", "etrn_bridge", "doctor", "-c", str(cluster.nodes[0].config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    lines = [line for line in done.stdout.splitlines() if "cluster: node " in line]
    assert [line.split()[0] for line in lines] == ["ok", "ok", "advice"], done.stdout
    assert [line.split()[3] for line in lines] == ["mx1:", "mx2:", "mx3:"]
    assert "(this node)" in lines[0] and "gone (stopped" in lines[2]
    assert all("last heartbeat" in line and "clock skew" in line for line in lines)


def test_limits_hold_across_the_workers_of_one_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """workers: 3 on one host: one flush per flood and one per_client window, not three."""
    runs = tmp_path / "runs.txt"
    script = write_counting_flush(tmp_path / "flush", runs, 0.3)
    backend = {"type": "command", "argv": [str(script), "{etrn}"]}
    extra = {
        "workers": 3,
        "limits": {"per_client": "off", "per_target": "1/60s"},
        "connections": {"max_sessions_per_client": FLOOD},
    }
    (node,) = start_nodes(tmp_path, redis_server.url, [backend], extra)
    try:

        async def flood() -> list[tuple[str, float]]:
            return await asyncio.gather(
                *(etrn_session("127.0.0.1", node.port, DOMAIN) for _ in range(60))
            )

        assert {reply[:3] for reply, _ in asyncio.run(flood())} == {"250"}
        assert runs.read_text().split() == [DOMAIN]
        served = {str(r["session"])[:6] for r in node.etrn_records()}
        assert len(served) > 1  # the kernel spread the sessions over several workers
        assert len(records(node, "cluster_flush")) == 1  # one worker took the request
    finally:
        node.stop()
