"""The MTA backends against the real Postfix, Exim and Sendmail of the lab.

Every test queues the same six messages (conftest.RECIPIENTS) with the sink
up; the kits keep them queued until a flush. What reaches the sink is what the
flush selected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mtalab import LAB_DIR, NODE, RECIPIENTS, SUBTREE, LabMta, run

from etrn_bridge.audit import AuditLog
from etrn_bridge.config import parse_config
from etrn_bridge.request import FlushResult, Identity, Request, Status
from etrn_bridge.service import Service
from etrn_bridge.target import parse_target


async def flush(mta: LabMta, target: str, **options: object) -> FlushResult:
    result = await mta.backend(**options).flush(parse_target(target))
    if result.completion is not None:  # Exim: the delivery goes on after the reply
        final = await result.completion
        assert final.started, final.detail
    return result


async def test_node_flushes_exactly_that_domain(mta: LabMta) -> None:
    mta.inject()
    result = await flush(mta, "customer.test")
    assert result.started and result.pending == 2 and len(result.queue_ids) == 2
    received = mta.wait_received(NODE)
    assert set(received) == NODE
    for rcpt in NODE:
        assert received[rcpt] == mta.sent[rcpt]  # byte-identical bodies
    assert mta.queued_recipients() == set(RECIPIENTS) - NODE


async def test_subtree_flushes_domain_and_subdomains(mta: LabMta) -> None:
    mta.inject()
    result = await flush(mta, "@customer.test")
    assert result.started and result.pending == 3
    assert set(mta.wait_received(SUBTREE)) == SUBTREE
    assert mta.queued_recipients() == set(RECIPIENTS) - SUBTREE


async def test_subdomain_alone(mta: LabMta) -> None:
    mta.inject()
    result = await flush(mta, "sub.customer.test")
    assert result.pending == 1
    assert set(mta.wait_received({"user@sub.customer.test"})) == {"user@sub.customer.test"}


async def test_domain_only_in_a_local_part_is_not_selected(mta: LabMta) -> None:
    # "customer.test@noflush.test" is for noflush.test, which on Postfix is
    # also not fast-flush eligible: the postqueue -i path.
    mta.inject()
    result = await flush(mta, "noflush.test")
    assert result.pending == 1
    assert set(mta.wait_received({"customer.test@noflush.test"})) == {"customer.test@noflush.test"}


async def test_nothing_waiting_runs_no_flush(mta: LabMta) -> None:
    mta.inject()
    result = await mta.backend().flush(parse_target("nothing.test"))
    assert result == FlushResult(started=True, pending=0, queue_ids=())
    assert result.completion is None
    assert mta.wait_received(set()) == {}
    assert mta.queued_recipients() == set(RECIPIENTS)


async def test_pending_counts_from_the_listing(mta: LabMta) -> None:
    mta.inject()
    backend = mta.backend()
    counts = {
        target: await backend.pending(parse_target(target))
        for target in ("customer.test", "CUSTOMER.TEST.", "@customer.test", "mycustomer.test")
    }
    assert counts == {
        "customer.test": 2,
        "CUSTOMER.TEST.": 2,
        "@customer.test": 3,
        "mycustomer.test": 1,
    }
    assert await backend.pending(parse_target("nothing.test")) == 0


async def test_a_multi_recipient_message_counts_once(mta: LabMta) -> None:
    mta.inject(())
    import smtplib

    with smtplib.SMTP("127.0.0.1", mta.smtp_port, local_hostname="client.test") as smtp:
        smtp.sendmail(
            "sender@client.test",
            ["a@customer.test", "b@Customer.Test", "c@noflush.test"],
            b"Subject: three\r\n\r\nthree recipients\r\n",
        )
    mta.wait_queued(1)
    assert await mta.backend().pending(parse_target("customer.test")) == 1


async def test_listing_timeout_is_a_failure(mta: LabMta) -> None:
    mta.inject()
    result = await mta.backend(timeout=0.0001).flush(parse_target("customer.test"))
    assert not result.started and result.detail == "timed out"
    assert mta.wait_received(set()) == {}


async def test_caller_without_privilege_is_a_failure(mta: LabMta) -> None:
    """As user nobody (command_prefix, as sudo would be): the MTA's own refusal.

    Postfix lets any user list and flush in a normal install, but this lab's
    unpacked postqueue is not setgid postdrop, so nobody cannot read the queue.
    """
    mta.inject()
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    result = await mta.backend(command_prefix=nobody).flush(parse_target("customer.test"))
    assert not result.started
    assert result.exit_status not in (0, None)
    assert result.detail  # the program's own words, for the audit
    assert mta.wait_received(set()) == {}


async def test_missing_program_is_a_failure(mta: LabMta) -> None:
    result = await mta.backend(**{mta.program_option: "/nonexistent/mta"}).flush(
        parse_target("customer.test")
    )
    assert not result.started and result.exit_status is None
    assert "/nonexistent/mta" in result.detail


async def test_unknown_queue(mta: LabMta) -> None:
    mta.inject()
    result = await mta.backend().flush(parse_target("#nosuchqueue"))
    if mta.name == "exim":
        # Exim lists an unknown named queue as empty: nothing waiting.
        assert result == FlushResult(started=True, pending=0)
    else:
        # Postfix has no named queues; Sendmail says "Queue group nosuchqueue unknown".
        assert not result.started and result.unsupported
    assert mta.wait_received(set()) == {}


async def test_postfix_queue_mapped_to_domains(lab: dict[str, LabMta]) -> None:
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    result = await flush(mta, "#customers", queues={"customers": ["customer.test"]})
    assert result.started and result.pending == 2
    assert set(mta.wait_received(NODE)) == NODE


async def test_postfix_down_is_a_failure(lab: dict[str, LabMta]) -> None:
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    subprocess.run([mta.program.replace("postqueue", "postfix"), "stop"], check=True)
    try:
        result = await mta.backend().flush(parse_target("customer.test"))
    finally:
        mta.script("start")
    assert not result.started and result.exit_status == 69
    assert "mail system is down" in result.detail


@pytest.mark.parametrize("name", ["exim", "sendmail"])
async def test_exim_and_sendmail_deliver_without_their_daemon(
    lab: dict[str, LabMta], name: str
) -> None:
    """Documented behaviour: -M / -qI need no daemon, so a stopped MTA still delivers."""
    mta = lab[name]
    mta.reset()
    mta.inject()
    mta.script("stop")
    mta.script("sink-start")  # stop also stops the sink
    try:
        result = await flush(mta, "customer.test")
        assert result.started and result.pending == 2
        assert set(mta.wait_received(NODE)) == NODE
    finally:
        mta.script("start")


# -- what the bridge prevents: the MTAs' own flush commands over-match ------------


async def test_native_exim_flush_overmatches(lab: dict[str, LabMta]) -> None:
    # -Rf: the kit holds the domains (hold_domains), which plain -R honours.
    mta = lab["exim"]
    mta.reset()
    mta.inject()
    subprocess.run([mta.program, "-Rf", "customer.test"], check=True)
    assert set(mta.wait_received(set(RECIPIENTS))) == set(RECIPIENTS)


async def test_native_sendmail_flush_overmatches(lab: dict[str, LabMta]) -> None:
    mta = lab["sendmail"]
    mta.reset()
    mta.inject()
    subprocess.run([mta.program, "-qR@customer.test"], check=True)
    expected = NODE | {"user@customer.test.evil"}
    assert set(mta.wait_received(expected)) == expected


async def test_native_postfix_flush_ignores_subdomains(lab: dict[str, LabMta]) -> None:
    # Postfix is exact for a node but has no "@node": sub.customer.test stays.
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    subprocess.run([mta.program, "-s", "customer.test"], check=True)
    assert set(mta.wait_received(SUBTREE)) == NODE


async def test_exim_slow_delivery_completes_after_the_reply(
    lab: dict[str, LabMta], tmp_path: Path
) -> None:
    """exim -M waits for the deliveries: the flush returns once started and the
    end comes through ``completion`` (the service awaits and audits it)."""
    mta = lab["exim"]
    mta.reset()
    mta.inject()
    mta.script("sink-stop")
    sink = subprocess.Popen(
        [
            *(sys.executable, str(LAB_DIR / "sink.py"), "serve"),
            *("--port", str(mta.sink_port), "--dir", str(mta.sink_dir), "--delay", "1"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        mta.wait_sink()
        started = time.monotonic()
        result = await mta.backend().flush(parse_target("customer.test"))
        assert time.monotonic() - started < 0.9  # did not wait for the 1 s DATA delay
        assert result.started and result.pending == 2 and result.completion is not None
        final = await result.completion
        assert final.started and final.queue_ids == result.queue_ids
        assert set(mta.received()) == NODE  # -M returned: both delivered

        # Through the service: the reply comes first, the end is audited after it.
        mta.reset()
        mta.inject()
        audit_file = tmp_path / "audit.jsonl"
        config = parse_config(
            "policy: {clients: [{id: lab, networks: [127.0.0.0/8], targets: [customer.test]}]}",
            tmp_path / "etrn.yaml",
        )
        service = Service(config.policy, mta.backend(), AuditLog(audit_file))
        started = time.monotonic()
        outcome = await service.handle(Request(Identity("127.0.0.1"), "customer.test"))
        assert time.monotonic() - started < 0.9
        assert outcome.status is Status.PENDING_STARTED
        await service.drain()
        etrn, completed = (json.loads(line) for line in audit_file.read_text().splitlines())
        assert (etrn["event"], etrn["reply"]) == ("etrn", 253)
        assert completed["event"] == "flush_completed" and completed["ok"] is True
        assert (
            completed["queue_ids"] == etrn["queue_ids"] and completed["target"] == "customer.test"
        )
        assert set(mta.received()) == NODE
    finally:
        sink.terminate()
        sink.wait()


async def test_exim_frozen_message_is_left_alone(lab: dict[str, LabMta]) -> None:
    """exim -M would thaw a frozen message; the bridge neither counts nor flushes it."""
    mta = lab["exim"]
    mta.reset()
    mta.inject()
    frozen = next(qid for qid, rcpts, _ in mta.listing() if rcpts == ("USER@CUSTOMER.TEST",))
    subprocess.run([mta.program, "-Mf", frozen], capture_output=True, check=True)
    assert await mta.backend().pending(parse_target("customer.test")) == 1
    result = await flush(mta, "customer.test")
    assert result.pending == 1 and frozen not in result.queue_ids
    assert set(mta.wait_received(NODE)) == {"user@customer.test"}
    assert f"{frozen} <sender@client.test> *** frozen ***" in run([mta.program, "-bp"]).decode()
