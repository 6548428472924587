"""Three MX hosts as one: three real bridge nodes, each in front of a different
real MTA of the lab (Postfix, Exim, Sendmail), sharing one real redis-server.

Each MTA holds the same mail (tests/mta/mtalab.py's RECIPIENTS: two messages
for customer.test, the rest traps of a substring match). One ETRN to one node
must deliver exactly the customer.test mail from all three queues.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mtalab import MTAS, NODE, RECIPIENTS, LabMta
from rediskit import RedisServer

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from asyncsmtp import etrn_session
from bridgekit import Bridge
from clusterkit import records, start_nodes, wait_live

FLOOD = 300
POLICY = {"clients": [{"id": "lab", "networks": ["127.0.0.0/8"], "targets": ["customer.test"]}]}


@pytest.fixture
def mtas(lab: dict[str, LabMta]) -> list[LabMta]:
    """Postfix, Exim, Sendmail, each with RECIPIENTS queued and the sink up."""
    chosen = [lab[name] for name in MTAS]
    for mta in chosen:
        mta.reset()
        mta.inject()
    return chosen


class MtaCluster:
    def __init__(self, tmp_path: Path, redis_server: RedisServer, mtas: list[LabMta]) -> None:
        self.tmp_path = tmp_path
        self.redis = redis_server
        self.mtas = mtas
        self.nodes: list[Bridge] = []

    def start(self, limits: dict[str, Any], **cluster: Any) -> None:
        backends = [mta.backend_options for mta in self.mtas]
        # The flood comes from one loopback address: lift the per-client session cap.
        extra = {
            "policy": POLICY,
            "limits": limits,
            "connections": {"max_sessions_per_client": FLOOD},
        }
        self.nodes = start_nodes(self.tmp_path, self.redis.url, backends, extra, **cluster)

    def etrn(self, node: int, argument: str = "customer.test") -> tuple[str, dict[str, Any]]:
        before = len(self.nodes[node].etrn_records())
        reply, _ = asyncio.run(etrn_session("127.0.0.1", self.nodes[node].port, argument))
        deadline = time.monotonic() + 10
        while len(self.nodes[node].etrn_records()) <= before:
            assert time.monotonic() < deadline, "no audit record"
            time.sleep(0.02)
        return reply, self.nodes[node].etrn_records()[before]

    def assert_delivered(self, mtas: list[LabMta]) -> None:
        """Exactly customer.test's mail left the queues of ``mtas``, nothing else anywhere."""
        for mta in self.mtas:
            expected = NODE if mta in mtas else set()
            received = mta.wait_received(expected)
            assert set(received) == expected, mta.name
            assert all(received[rcpt] == mta.sent[rcpt] for rcpt in expected), mta.name
            assert mta.queued_recipients() == set(RECIPIENTS) - expected, mta.name

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer, mtas: list[LabMta]) -> Iterator[MtaCluster]:
    made = MtaCluster(tmp_path, redis_server, mtas)
    try:
        yield made
    finally:
        made.stop()


def test_one_etrn_delivers_customer_mail_from_all_three_queues(cluster: MtaCluster) -> None:
    cluster.start({"per_client": "off", "per_target": "1/60s"})
    reply, record = cluster.etrn(1)  # the Exim node
    total = len(NODE) * len(MTAS)
    assert reply == f"253 2.0.0 OK, {total} pending messages for node customer.test started"
    assert record["nodes_answered"] == ["mx1", "mx2", "mx3"]
    cluster.assert_delivered(cluster.mtas)
    for node, mta in zip(cluster.nodes, cluster.mtas, strict=True):
        (flush,) = records(node, "cluster_flush")
        assert (flush["origin_node"], flush["origin_session"]) == ("mx2", record["session"])
        assert flush["backend"] == mta.name and flush["pending"] == len(NODE)


def test_flood_over_three_nodes_makes_one_flush_per_node(cluster: MtaCluster) -> None:
    cluster.start({"per_client": "off", "per_target": "1/60s"})

    async def flood() -> list[tuple[str, float]]:
        ports = [node.port for node in cluster.nodes]
        return await asyncio.gather(
            *(etrn_session("127.0.0.1", ports[i % 3], "customer.test") for i in range(FLOOD))
        )

    replies = {reply for reply, _ in asyncio.run(flood())}
    assert replies == {"253 2.0.0 OK, 6 pending messages for node customer.test started"}
    cluster.assert_delivered(cluster.mtas)
    assert [len(records(node, "cluster_flush")) for node in cluster.nodes] == [1, 1, 1]


def test_per_client_holds_across_nodes(cluster: MtaCluster) -> None:
    cluster.start({"per_client": "2/60s", "per_target": "off"})
    outcomes = [cluster.etrn(node) for node in (0, 1, 2)]
    # The second may still find mail queued (delivery runs on after the reply): 25x.
    assert [reply[:2] for reply, _ in outcomes] == ["25", "25", "45"]
    assert outcomes[2][0].startswith("459 4.7.1 Node customer.test not allowed: rate limited")
    assert outcomes[2][1]["status"] == "rate_limited"


def test_redis_killed_falls_back_to_this_node_then_recovers(cluster: MtaCluster) -> None:
    cluster.start({"per_client": "off", "per_target": "off"}, on_redis_failure="local")
    cluster.redis.kill()
    reply, record = cluster.etrn(0)  # the Postfix node flushes its own queue only
    assert reply.startswith("253 2.0.0 OK, 2 pending")
    assert record["cluster_fallback"] == "local"
    cluster.assert_delivered(cluster.mtas[:1])

    cluster.redis.start()
    wait_live(cluster.redis.url, ["mx1", "mx2", "mx3"])
    for _ in range(50):  # until every node has re-subscribed
        reply, record = cluster.etrn(0)
        if record.get("nodes_answered") == ["mx1", "mx2", "mx3"]:
            break
    assert "cluster_fallback" not in record
    cluster.assert_delivered(cluster.mtas)


def test_node_killed_the_others_still_answer(cluster: MtaCluster) -> None:
    cluster.start({"per_client": "off", "per_target": "off"}, fanout_timeout="2s")
    sendmail_node = cluster.nodes[2]
    sendmail_node.process.send_signal(signal.SIGKILL)
    sendmail_node.process.wait(10)
    reply, record = cluster.etrn(0)
    assert reply == "250 2.0.0 OK, queuing for node customer.test started"
    assert record["nodes_answered"] == ["mx1", "mx2"] and record["nodes_missing"] == ["mx3"]
    cluster.assert_delivered(cluster.mtas[:2])
