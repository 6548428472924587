"""hold and quota on policy entries, and what the feeds' recorder makes of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from etrn_bridge.config import ConfigError, parse_config
from etrn_bridge.feeds.recorder import QueueRecorder
from etrn_bridge.policy.hold import Quota, parse_size
from etrn_bridge.queueindex.store import QueueIndex

CONFIG = """
policy:
  clients:
    - id: plain
      networks: [127.0.0.0/8]
      targets: [customer.test]
    - id: held
      networks: [127.0.0.0/8]
      targets: [held.test, "@heldzone.test"]
      hold: true
      quota: {messages: 2, bytes: 1K}
"""


@pytest.fixture
def recorder(tmp_path: Path) -> QueueRecorder:
    policy = parse_config(CONFIG, tmp_path / "etrn.yaml").policy
    return QueueRecorder(QueueIndex(tmp_path / "index.sqlite"), policy)


def test_sizes_and_quota() -> None:
    assert [parse_size(t) for t in ("10", "1K", "500M", "2G")] == [10, 1024, 500 << 20, 2 << 30]
    with pytest.raises(ValueError):
        parse_size("1T")
    quota = Quota(messages=2, bytes=1000)
    assert not quota.exceeded(1, 999)
    assert quota.exceeded(2, 0) and quota.exceeded(0, 1000)
    assert not Quota(bytes=10).exceeded(1_000_000, 9)


def test_a_quota_without_hold_is_refused(tmp_path: Path) -> None:
    text = (
        "policy: {clients: [{id: x, networks: [10.0.0.0/8], targets: [a.test],"
        " quota: {messages: 1}}]}"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "etrn.yaml")
    assert "a quota applies to held mail: set hold: true" in str(caught.value)


def test_held_only_when_every_recipient_is_in_a_held_domain(recorder: QueueRecorder) -> None:
    assert recorder.message_queued("Q1", ["a@held.test", "b@x.heldzone.test"], 10).hold
    assert not recorder.message_queued("Q2", ["a@held.test", "b@customer.test"], 10).hold
    assert not recorder.message_queued("Q3", ["a@held.test", "b@nobody.test"], 10).hold
    assert not recorder.message_queued("Q4", ["a@held.test"], 10, can_hold=False).hold
    unserved = recorder.message_queued("Q5", ["a@nobody.test", "broken"], 10)
    assert not unserved.recorded and not unserved.hold
    assert recorder.index.stats().rows == 4


def test_quota_counts_what_is_queued_for_the_domain(recorder: QueueRecorder) -> None:
    recorder.message_queued("Q1", ["a@held.test"], 100)
    assert recorder.quota_refusal("b@held.test") is None
    recorder.message_queued("Q2", ["a@held.test"], 100)
    refusal = recorder.quota_refusal("B@HELD.TEST", "127.0.0.1")
    assert refusal is not None and (refusal.domain, refusal.messages) == ("held.test", 2)
    # Other domains and unheld entries have no quota.
    assert recorder.quota_refusal("a@customer.test") is None
    assert recorder.quota_refusal("not-an-address") is None
    # Flushed mail no longer counts.
    recorder.index.mark_flushed(["Q1"])
    assert recorder.quota_refusal("b@held.test") is None
