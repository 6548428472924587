"""The milter over its real unix socket, with PyPI ``miltertest`` as the MTA side.

What Postfix and Sendmail do at each step (macros, RCPT, headers, body, end of
message), byte for byte, against a real ``etrn-bridge milter`` process; the
index is then read back from its SQLite file.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from milterkit import MilterProcess, milter_config, need_pymilter, start_milter
from miltertest import constants
from miltertest.client import MilterConnection

from etrn_bridge.queueindex.store import QueueIndex
from etrn_bridge.target import parse_target

POLICY = {
    "clients": [
        {"id": "plain", "networks": ["127.0.0.0/8"], "targets": ["customer.test"]},
        {
            "id": "held",
            "networks": ["127.0.0.0/8"],
            "targets": ["held.test", "@heldtoo.test"],
            "hold": True,
            "quota": {"messages": 2},
        },
    ]
}
BODY = b"Subject: test\r\n\r\nhello\r\n"


@pytest.fixture
def milter(tmp_path: Path) -> Iterator[MilterProcess]:
    need_pymilter()
    running = start_milter(tmp_path, milter_config(tmp_path, POLICY))
    yield running
    running.stop()


class Mta:
    """The MTA side of one milter connection, as Postfix drives it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.conn = MilterConnection(self.sock)
        self.conn.optneg_mta()
        self.conn.send(
            constants.SMFIC_CONNECT,
            hostname="client.test",
            family="4",
            port=2525,
            address="127.0.0.1",
        )

    def close(self) -> None:
        self.sock.close()

    def mail(self, queue_id: str | None, sender: str = "<s@sender.test>") -> None:
        macros = {"i": queue_id} if queue_id else {}
        self.conn.send_macro(constants.SMFIC_MAIL, **macros)
        self.conn.send(constants.SMFIC_MAIL, args=[sender])

    def rcpt(self, recipient: str) -> tuple[str, dict[str, object]]:
        reply: tuple[str, dict[str, object]] = self.conn.send_ar(
            constants.SMFIC_RCPT, args=[f"<{recipient}>"]
        )
        return reply

    def data(self, queue_id: str | None = None) -> list[tuple[str, dict[str, object]]]:
        """Headers, body and end of message; the milter's end-of-message replies."""
        self.conn.send(constants.SMFIC_DATA)
        self.conn.send_headers([("Subject", "test"), ("From", "s@sender.test")])
        self.conn.send(constants.SMFIC_EOH)
        self.conn.send_body("hello\r\n" * 10)
        if queue_id:
            self.conn.send_macro(constants.SMFIC_BODYEOB, i=queue_id)
        replies: list[tuple[str, dict[str, object]]] = self.conn.send_eom()
        if replies[-1][0] == constants.SMFIR_QUARANTINE:
            replies.append(self.conn.recv())  # miltertest stops at 'q'; the disposition follows
        return replies

    def message(self, queue_id: str, *recipients: str) -> list[str]:
        self.mail(queue_id)
        for recipient in recipients:
            assert self.rcpt(recipient)[0] == constants.SMFIR_CONTINUE
        return [code for code, _ in self.data()]


@pytest.fixture
def mta(milter: MilterProcess) -> Iterator[Mta]:
    client = Mta(milter.socket)
    yield client
    client.close()


def selected(milter: MilterProcess, target: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    index = QueueIndex(milter.index)
    try:
        return {m.queue_id: (m.recipients, m.held) for m in index.select(parse_target(target))}
    finally:
        index.close()


def test_a_message_for_a_served_domain_is_recorded_with_all_its_recipients(
    milter: MilterProcess, mta: Mta
) -> None:
    codes = mta.message("4ABC01", "a@customer.test", "b@elsewhere.test")

    assert codes == [constants.SMFIR_CONTINUE]  # accepted, nothing changed
    rows = selected(milter, "customer.test")
    assert rows == {"4ABC01": (("<a@customer.test>", "<b@elsewhere.test>"), False)}
    index = QueueIndex(milter.index)
    (message,) = index.select(parse_target("customer.test"))
    index.close()
    assert message.size > len("hello\r\n" * 10)  # headers and body


def test_mail_for_other_domains_is_not_recorded(milter: MilterProcess, mta: Mta) -> None:
    assert mta.message("4ABC02", "x@elsewhere.test") == [constants.SMFIR_CONTINUE]
    assert mta.message("4ABC03", "x@notcustomer.test") == [constants.SMFIR_CONTINUE]

    index = QueueIndex(milter.index)
    assert index.stats().rows == 0
    index.close()


def test_several_messages_on_one_connection_are_kept_apart(milter: MilterProcess, mta: Mta) -> None:
    mta.message("4ABC04", "a@customer.test")
    mta.message("4ABC05", "c@customer.test")

    rows = selected(milter, "customer.test")
    assert rows == {
        "4ABC04": (("<a@customer.test>",), False),
        "4ABC05": (("<c@customer.test>",), False),
    }


def test_the_queue_id_sent_only_at_end_of_message_is_used(milter: MilterProcess, mta: Mta) -> None:
    mta.mail(None)
    assert mta.rcpt("a@customer.test")[0] == constants.SMFIR_CONTINUE
    mta.data(queue_id="4ABC06")

    assert list(selected(milter, "customer.test")) == ["4ABC06"]


def test_without_a_queue_id_the_message_is_accepted_and_not_recorded(
    milter: MilterProcess, mta: Mta
) -> None:
    mta.mail(None)
    mta.rcpt("a@customer.test")
    assert [code for code, _ in mta.data()] == [constants.SMFIR_CONTINUE]

    assert selected(milter, "customer.test") == {}
    assert "no queue id macro" in milter.log_text()


def test_mail_only_for_held_domains_is_quarantined(milter: MilterProcess, mta: Mta) -> None:
    codes = mta.message("4ABC07", "a@held.test", "b@sub.heldtoo.test")

    assert codes == [constants.SMFIR_QUARANTINE, constants.SMFIR_CONTINUE]
    assert selected(milter, "held.test") == {
        "4ABC07": (("<a@held.test>", "<b@sub.heldtoo.test>"), True)
    }


def test_mixed_recipient_mail_is_never_held(milter: MilterProcess, mta: Mta) -> None:
    assert mta.message("4ABC08", "a@held.test", "b@customer.test") == [constants.SMFIR_CONTINUE]
    assert mta.message("4ABC09", "a@held.test", "b@elsewhere.test") == [constants.SMFIR_CONTINUE]

    assert {qid: held for qid, (_, held) in selected(milter, "held.test").items()} == {
        "4ABC08": False,
        "4ABC09": False,
    }


def test_a_held_domain_over_its_quota_gets_452_at_rcpt_and_an_audit_record(
    milter: MilterProcess, mta: Mta
) -> None:
    mta.message("4ABC10", "a@held.test")
    mta.message("4ABC11", "b@held.test")  # the quota: 2 messages

    mta.mail("4ABC12")
    code, reply = mta.rcpt("c@held.test")
    other_code, _ = mta.rcpt("d@customer.test")

    assert code == constants.SMFIR_REPLYCODE
    assert reply["smtpcode"] == "452"
    assert str(reply["text"]).startswith("4.2.2 ")
    assert other_code == constants.SMFIR_CONTINUE  # other domains are not affected
    records = [json.loads(line) for line in milter.audit.read_text().splitlines()]
    (record,) = [r for r in records if r["event"] == "quota"]
    assert (record["domain"], record["rule"], record["queued_messages"]) == ("held.test", "held", 2)
    assert record["reply"] == 452 and record["client_ip"] == "127.0.0.1"
    # The refused recipient is not part of the message the MTA queues.
    mta.data()
    assert selected(milter, "customer.test")["4ABC12"][0] == ("<d@customer.test>",)


def test_hostile_recipients_are_recorded_harmlessly(milter: MilterProcess, mta: Mta) -> None:
    codes = mta.message(
        "4ABC13", "a@customer.test", '"x y"@customer.test', "no-domain", "b@bad..name"
    )

    assert codes == [constants.SMFIR_CONTINUE]
    assert list(selected(milter, "customer.test")) == ["4ABC13"]
    assert milter.process.poll() is None


def test_a_broken_index_costs_no_mail(tmp_path: Path) -> None:
    need_pymilter()
    config = milter_config(tmp_path, POLICY)
    (tmp_path / "index-is-a-directory").mkdir()
    config["index"]["file"] = str(tmp_path / "index-is-a-directory")
    running = start_milter(tmp_path, config)
    try:
        client = Mta(running.socket)
        # Every callback fails inside (RCPT reads the quota, EOM writes): the mail goes on.
        assert client.message("4ABC14", "a@held.test") == [constants.SMFIR_CONTINUE]
        assert client.message("4ABC15", "a@customer.test") == [constants.SMFIR_CONTINUE]
        client.close()
        assert "mail continues unaffected" in running.log_text()
        assert running.process.poll() is None
    finally:
        running.stop()


def test_a_changed_config_file_is_followed(milter: MilterProcess, mta: Mta) -> None:
    config = yaml.safe_load(milter.config.read_text())
    config["policy"]["clients"][0]["targets"] = ["other.test"]
    milter.config.write_text(yaml.safe_dump(config))
    deadline = time.monotonic() + 20
    while "is in force" not in milter.log_text():
        assert time.monotonic() < deadline, milter.log_text()
        time.sleep(0.1)

    mta.message("4ABC16", "a@customer.test")
    mta.message("4ABC17", "a@other.test")

    assert selected(milter, "customer.test") == {}
    assert list(selected(milter, "other.test")) == ["4ABC17"]
