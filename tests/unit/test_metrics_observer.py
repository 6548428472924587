"""The Prometheus observer in-process (the HTTP endpoint is tested in
tests/integration/test_metrics.py), and the example alert rules."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etrn_bridge.metrics.prometheus import PrometheusObserver

ALERTS = Path(__file__).resolve().parents[2] / "examples" / "prometheus" / "etrn-bridge.rules.yaml"
# Names Prometheus itself makes for every scrape target.
PROMETHEUS_OWN = {"up"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
METRIC_NAME = re.compile(r"\b(etrn_bridge_[a-z_]+)\b")
# Sample names each metric type exposes, by family name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def families(observer: PrometheusObserver) -> dict[str, str]:
    """Family name -> type, as a scrape parses them."""
    text = generate_latest(observer.registry).decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def exported_names() -> set[str]:
    """Every etrn_bridge_* sample name a bridge with an index can expose."""
    observer = PrometheusObserver()
    observer.count_sessions(lambda: 0)
    observer.index_reported(1, time.time())
    return {
        name + suffix
        for name, kind in families(observer).items()
        if name.startswith("etrn_bridge_")
        for suffix in SUFFIXES[kind]
    }


def index_samples(observer: PrometheusObserver) -> dict[str, float]:
    text = generate_latest(observer.registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("etrn_bridge_index_")
    }


def test_index_metrics_appear_once_an_index_reports() -> None:
    observer = PrometheusObserver()
    assert index_samples(observer) == {}

    observer.index_reported(1234, time.time() - 60)
    first = index_samples(observer)
    observer.index_reported(7, None)
    second = index_samples(observer)

    assert first["etrn_bridge_index_messages"] == 1234
    assert 60 <= first["etrn_bridge_index_age_seconds"] < 120
    assert second["etrn_bridge_index_messages"] == 7
    assert second["etrn_bridge_index_age_seconds"] != second["etrn_bridge_index_age_seconds"]  # NaN


def test_counter_and_histogram_names_follow_prometheus_conventions() -> None:
    kinds = families(PrometheusObserver())
    for name, kind in kinds.items():
        if not name.startswith("etrn_bridge_"):
            continue
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert kind in SUFFIXES, (name, kind)


def test_alert_rules_parse_and_name_only_existing_metrics() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    names = exported_names()
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert rules
    seen_alerts: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] not in seen_alerts
        seen_alerts.add(rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["for"]
        assert "summary" in rule["annotations"]
        used = set(METRIC_NAME.findall(rule["expr"]))
        if not used:
            assert set(re.findall(r"\b[a-z_]+(?=\{)", rule["expr"])) <= PROMETHEUS_OWN
        assert used <= names, (rule["alert"], used - names)
