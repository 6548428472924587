"""The Exim feed's line protocol over its real loopback port: what the kit's
ACL sends is recorded; anything else is refused without harm."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from milterkit import MilterProcess, milter_config, start_milter

from etrn_bridge.feeds.exim import EximFeedError, parse_line
from etrn_bridge.queueindex.store import QueueIndex
from etrn_bridge.target import parse_target

POLICY = {
    "clients": [
        {"id": "c", "networks": ["127.0.0.0/8"], "targets": ["customer.test"], "hold": True},
    ]
}


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[MilterProcess]:
    # Only the Exim feed: this test needs no pymilter.
    running = start_milter(tmp_path, milter_config(tmp_path, POLICY, enabled=False))
    yield running
    running.stop()


def exchange(feed: MilterProcess, request: bytes) -> bytes:
    with socket.create_connection(feed.exim_feed, timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # as Exim's readsocket does
        return sock.makefile("rb").read()


def rows(feed: MilterProcess) -> dict[str, tuple[tuple[str, ...], int, bool]]:
    index = QueueIndex(feed.index)
    try:
        found = index.select(parse_target("customer.test"))
        return {m.queue_id: (m.recipients, m.size, m.held) for m in found}
    finally:
        index.close()


def test_the_kit_line_is_recorded_never_held(feed: MilterProcess) -> None:
    line = b"QUEUED 1xXgiS-00023f-1W 1234 a@customer.test, b@other.test\n"

    assert exchange(feed, line) == b"OK\n"

    # Exim holds with hold_domains itself: the index has nothing to release.
    assert rows(feed) == {"1xXgiS-00023f-1W": (("a@customer.test", "b@other.test"), 1234, False)}


def test_mail_for_other_domains_is_acknowledged_not_recorded(feed: MilterProcess) -> None:
    assert exchange(feed, b"QUEUED 1xXgiS-00023f-1X 10 a@other.test\n") == b"OK\n"
    assert rows(feed) == {}


@pytest.mark.parametrize(
    "request_line",
    [
        b"",
        b"\n",
        b"QUEUED\n",
        b"QUEUED 1xXgiS-00023f-1W 12\n",
        b"QUEUED ../../etc 12 a@customer.test\n",
        b"QUEUED 1xXgiS-00023f-1W -5 a@customer.test\n",
        b"QUEUED 1xXgiS-00023f-1W 12 \n",
        b"queued 1xXgiS-00023f-1W 12 a@customer.test\n",
        b"QUEUED 1xXgiS-00023f-1W 12 a@customer.test\xff\n",
        b"QUEUED 1xXgiS;rm -rf 12 a@customer.test\n",
    ],
)
def test_hostile_lines_are_refused_and_change_nothing(
    feed: MilterProcess, request_line: bytes
) -> None:
    assert exchange(feed, request_line).startswith(b"ERR ")
    assert rows(feed) == {}
    assert feed.process.poll() is None


def test_an_endless_line_is_cut_off(feed: MilterProcess) -> None:
    huge = b"QUEUED 1xXgiS-00023f-1W 12 " + b"a@customer.test, " * 70_000 + b"\n"
    assert exchange(feed, huge) == b"ERR line too long\n"
    assert rows(feed) == {}
    # And the feed still serves the next line.
    assert exchange(feed, b"QUEUED 1xXgiS-00023f-1Y 1 a@customer.test\n") == b"OK\n"


def test_parse_line_reads_exims_recipient_list() -> None:
    assert parse_line(b"QUEUED 1xXgiS-00023f-1W 99 a@x.test, b@y.test\n") == (
        "1xXgiS-00023f-1W",
        99,
        ["a@x.test", "b@y.test"],
    )
    # Exim 4.97+ ids are longer (6-11-4).
    assert parse_line(b"QUEUED 1tNBsF-00000001Mm2-0Ex4 1 a@x.test")[0] == "1tNBsF-00000001Mm2-0Ex4"
    with pytest.raises(EximFeedError):
        parse_line(b"QUEUED 1xXgiS-00023f-1W 99 , \n")
