"""Metrics of a real ``etrn-bridge serve``, scraped over HTTP after real ETRNs and
parsed with prometheus_client's own parser: every count is what was sent."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bridgekit import BASE_CONFIG, Bridge, merge_config, write_config
from prometheus_client.parser import text_string_to_metric_families

from etrn_bridge.queueindex.store import IndexedMessage, QueueIndex

METRICS_ON = r"metrics on (http://\S+/metrics)"
LOOPBACK_ANY_PORT = {"metrics": {"listen": "127.0.0.1:0"}}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_url(bridge: Bridge) -> str:
    line = bridge.wait_for_log(METRICS_ON)
    return line.split("metrics on ", 1)[1].strip()


def test_counts_match_the_etrns_sent(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge(LOOPBACK_ANY_PORT)
    url = metrics_url(bridge)
    held_open = [bridge.session(), bridge.session()]
    for argument in ["customer.example", "customer.example", "www.customer.net"]:
        assert held_open[0].command(f"ETRN {argument}").code == 250
    for argument in ["other.example", "customer.example.evil"]:
        assert held_open[1].command(f"ETRN {argument}").code == 459
    assert held_open[1].command("ETRN").code == 500
    assert held_open[1].command("ETRN bad..name").code == 501

    samples = scrape(url)

    requests = "etrn_bridge_requests_total"
    assert value(samples, requests, frontend="listener", status="started", code="250") == 3
    assert value(samples, requests, frontend="listener", status="denied", code="459") == 2
    assert value(samples, requests, frontend="listener", status="missing_argument", code="500") == 1
    assert value(samples, requests, frontend="listener", status="bad_argument", code="501") == 1
    every_request = sum(v for (name, _), v in samples.items() if name == requests)
    assert every_request == len(bridge.etrn_records()) == 7
    assert value(samples, "etrn_bridge_decisions_total", decision="allow", rule="loopback") == 3
    assert value(samples, "etrn_bridge_decisions_total", decision="deny", rule="-") == 2
    assert value(samples, "etrn_bridge_backend_runs_total", backend="log", result="started") == 3
    assert value(samples, "etrn_bridge_backend_run_seconds_count", backend="log") == 3
    assert value(samples, "etrn_bridge_reply_seconds_count", frontend="listener") == 7
    assert value(samples, "etrn_bridge_reply_seconds_bucket", frontend="listener", le="+Inf") == 7
    assert value(samples, "etrn_bridge_sessions_open") == 2
    assert value(samples, "etrn_bridge_coalesced_total") == 0

    held_open[0].command("QUIT")
    wait_for_value(url, "etrn_bridge_sessions_open", 1)


def test_coalesced_and_rate_limited(start_bridge: Callable[..., Bridge]) -> None:
    # per_client 2/60s: the 3rd and 4th ETRN are refused; per_target 1/60s: the
    # 2nd gets the 1st one's result without a backend run.
    limits = {"limits": {"per_client": "2/60s", "per_target": "1/60s"}}
    bridge = start_bridge({**LOOPBACK_ANY_PORT, **limits})
    url = metrics_url(bridge)
    client = bridge.session()
    codes = [client.command("ETRN customer.example").code for _ in range(4)]
    assert codes == [250, 250, 459, 459]

    samples = scrape(url)

    assert value(samples, "etrn_bridge_coalesced_total") == 1
    assert value(samples, "etrn_bridge_rate_limited_total") == 2
    assert value(samples, "etrn_bridge_backend_runs_total", backend="log", result="started") == 1
    requests = "etrn_bridge_requests_total"
    assert value(samples, requests, frontend="listener", status="rate_limited", code="459") == 2


def wait_for_value(url: str, name: str, expected: float, **labels: str) -> None:
    deadline = time.monotonic() + 10
    while (found := value(scrape(url), name, **labels)) != expected:
        assert time.monotonic() < deadline, f"{name}{labels} = {found}, expected {expected}"
        time.sleep(0.05)


def test_reloads_by_result(start_bridge: Callable[..., Bridge]) -> None:
    bridge = start_bridge(LOOPBACK_ANY_PORT)
    url = metrics_url(bridge)
    config: dict[str, Any] = merge_config(BASE_CONFIG, LOOPBACK_ANY_PORT)

    bridge.send_signal(signal.SIGHUP)
    wait_for_value(url, "etrn_bridge_reloads_total", 1, result="success")
    bridge.config_path.write_text("policy: [this is not a mapping\n")
    bridge.send_signal(signal.SIGHUP)
    wait_for_value(url, "etrn_bridge_reloads_total", 1, result="failure")
    write_config(bridge.directory, config)
    bridge.send_signal(signal.SIGHUP)
    wait_for_value(url, "etrn_bridge_reloads_total", 2, result="success")
    assert value(scrape(url), "etrn_bridge_reloads_total", result="failure") == 1


def free_port_pair() -> int:
    """A port P with P and P+1 both free on 127.0.0.1 (at the time of asking)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two consecutive free ports")


def test_each_worker_serves_its_own_counts_on_port_plus_index(
    start_bridge: Callable[..., Bridge],
) -> None:
    port = free_port_pair()
    bridge = start_bridge({"workers": 2, "metrics": {"listen": f"127.0.0.1:{port}"}})
    urls = [f"http://127.0.0.1:{p}/metrics" for p in (port, port + 1)]
    for url in urls:
        bridge.wait_for_log(f"metrics on {url}")
    sent = 20
    for _ in range(sent):
        client = bridge.session()
        assert client.command("ETRN customer.example").code == 250
        client.command("QUIT")

    per_worker = [
        value(
            scrape(url),
            "etrn_bridge_requests_total",
            frontend="listener",
            status="started",
            code="250",
        )
        for url in urls
    ]

    assert sum(per_worker) == sent


def test_metrics_port_in_use_stops_serve(start_bridge: Callable[..., Bridge]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssertionError, match="cannot start: metrics endpoint"):
            start_bridge({"metrics": {"listen": f"127.0.0.1:{port}"}})


def test_index_size_and_age_once_the_index_reports(
    start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    # The index as its writers and a reconciliation 120 s ago left it.
    index = QueueIndex(tmp_path / "index.sqlite")
    queued = [IndexedMessage(f"Q{i}", (f"u{i}@customer.example",), 1000) for i in range(3)]
    index.reconcile(queued, time.time() - 120)
    index.record("Q9", ["v@customer.net"], 500)
    index.close()

    bridge = start_bridge({**LOOPBACK_ANY_PORT, "index": {"file": "index.sqlite"}})
    url = metrics_url(bridge)
    wait_for_value(url, "etrn_bridge_index_messages", 4)

    age = value(scrape(url), "etrn_bridge_index_age_seconds")
    assert 120 <= age < 180
