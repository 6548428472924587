"""The ``cluster:`` section: off when absent, every key checked with file:line:column."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from etrn_bridge.config import ConfigError, load_config
from etrn_bridge.sharedstate.settings import (
    SentinelAddress,
    default_node,
    parse_sentinel_url,
    redacted,
)


def load(tmp_path: Path, cluster: str):  # type: ignore[no-untyped-def]
    config = tmp_path / "etrn.yaml"
    config.write_text("backend: {type: log}\n" + textwrap.dedent(cluster))
    return load_config(config)


def problems(tmp_path: Path, cluster: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, cluster)
    return [str(p).replace(str(tmp_path) + "/", "") for p in caught.value.problems]


def test_absent_means_one_host(tmp_path: Path) -> None:
    assert load(tmp_path, "").cluster is None


def test_defaults(tmp_path: Path) -> None:
    cluster = load(tmp_path, 'cluster: {redis: "redis://127.0.0.1:6379/0"}\n').cluster
    assert cluster is not None
    assert (cluster.node, cluster.fanout_timeout, cluster.on_redis_failure) == (
        default_node(),
        5.0,
        "local",
    )


def test_every_key(tmp_path: Path) -> None:
    cluster = load(
        tmp_path,
        """\
        cluster:
          redis: "rediss://user:pw@127.0.0.1:6380/2"
          node: mx-1.a
          fanout_timeout: 1500ms
          on_redis_failure: tempfail
        """,
    ).cluster
    assert cluster is not None
    assert (cluster.node, cluster.fanout_timeout, cluster.on_redis_failure) == (
        "mx-1.a",
        1.5,
        "tempfail",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster: {node: mx1}\n", "etrn.yaml:2:1: cluster: 'redis' is a required property"),
        (
            'cluster: {redis: "http://127.0.0.1/"}\n',
            "etrn.yaml:2:18: cluster.redis: the URL scheme must be one of redis, rediss, unix, "
            "redis+sentinel, rediss+sentinel",
        ),
        (
            'cluster: {redis: "redis+sentinel://127.0.0.1/"}\n',
            "etrn.yaml:2:18: cluster.redis: '127.0.0.1': a sentinel is host:port",
        ),
        ('cluster: {redis: "redis://h:1/0", node: "mx 1"}\n', "cluster.node"),
        ('cluster: {redis: "redis://h:1/0", node: "a:b"}\n', "cluster.node"),
        ('cluster: {redis: "redis://h:1/0", fanout_timeout: "5"}\n', "cluster.fanout_timeout"),
        ('cluster: {redis: "redis://h:1/0", fanout_timeout: "0s"}\n', "must be longer than zero"),
        ('cluster: {redis: "redis://h:1/0", on_redis_failure: crash}\n', "on_redis_failure"),
        ('cluster: {redis: "redis://h:1/0", colour: blue}\n', "cluster.colour: unknown key"),
    ],
)
def test_problems(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and expected in found[0], found


def test_sentinel_url() -> None:
    assert parse_sentinel_url("redis+sentinel://h1:26379,[::1]:26380/mymaster/3") == (
        SentinelAddress((("h1", 26379), ("::1", 26380)), "mymaster", 3)
    )
    assert parse_sentinel_url("rediss+sentinel://:pw@h1:26379/m").db == 0
    for bad in (
        "redis+sentinel://h1:26379/",
        "redis+sentinel://h1:26379/m/x",
        "redis+sentinel://h1/m",
    ):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


def test_password_never_shown() -> None:
    assert redacted("redis://user:secret@127.0.0.1:6379/0") == "redis://user:***@127.0.0.1:6379/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_without_redis_py_serve_refuses_to_start_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from etrn_bridge.audit import AuditLog
    from etrn_bridge.service import Service

    config = load(tmp_path, 'cluster: {redis: "redis://127.0.0.1:6379/0"}\n')
    monkeypatch.setitem(sys.modules, "redis.exceptions", None)  # as if not installed
    with pytest.raises(OSError, match=r"pip install 'etrn-bridge\[cluster\]'"):
        Service.from_config(config, AuditLog())


def test_check_summarises_the_cluster_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from etrn_bridge.cli import main

    example = Path(__file__).parents[2] / "examples" / "cluster.yaml"
    assert main(["check", "-c", str(example)]) == 0
    out = capsys.readouterr().out
    assert "  cluster:  node mx1, Redis rediss://etrn-bridge:***@redis.isp.example:6380/0" in out
    assert "change-me" not in out
