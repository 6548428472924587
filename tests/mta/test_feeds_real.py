"""The queue index feeds against the real MTAs, configured from the kits:
the milter on Postfix and Sendmail (postfix/milter.cf.snippet,
sendmail/milter.mc.snippet), the data-ACL feed on Exim (exim/feed-*.snippet).

The lab is reconfigured with the feeds for this module (ETRN_BRIDGE_LAB_FEEDS)
and put back as it was afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from milterkit import MilterProcess, milter_config, need_pymilter, start_milter
from mtalab import LAB_DIR, MTA_LAB, LabMta, lab_env, script_env
from test_bridge_real import running_bridge
from test_least_privilege import as_user

from etrn_bridge.backends.mta import FROM_INDEX, MtaBackend
from etrn_bridge.backends.reconcile import reconcile
from etrn_bridge.queueindex.store import QueueIndex
from etrn_bridge.target import parse_target

FEEDS = MTA_LAB / "feeds"  # under the lab: every MTA user can reach it
POLICY = {
    "clients": [
        {
            "id": "customer",
            "networks": ["127.0.0.0/8"],
            "targets": ["customer.test", "@customer.test"],
        },
        {
            "id": "held",
            "networks": ["127.0.0.0/8"],
            "targets": ["noflush.test"],
            "hold": True,
            "quota": {"messages": 2},
        },
    ]
}
SERVED = ("user@customer.test", "user@sub.customer.test")
# A queue id as Postfix writes it with enable_long_queue_ids = yes: time and inode
# in an alphabet without vowels (0-9, consonants), so "ALL" never looks like one.
LONG_QUEUE_ID = "4mPRtq6nb7zKRvX"
NOT_SERVED = ("user@mycustomer.test", "user@customer.test.evil")


def _restart_lab(feeds: bool) -> None:
    env = script_env()
    env.pop("ETRN_BRIDGE_LAB_FEEDS", None)
    if feeds:
        env["ETRN_BRIDGE_LAB_FEEDS"] = str(FEEDS)
    all_sh = ["bash", str(LAB_DIR / "all.sh")]
    subprocess.run([*all_sh, "stop"], capture_output=True, check=False, env=env)
    subprocess.run([*all_sh, "configure"], capture_output=True, check=True, env=env)
    subprocess.run([*all_sh, "start"], capture_output=True, check=True, env=env)


@pytest.fixture(scope="module")
def feeds_lab(lab: dict[str, LabMta]) -> Iterator[dict[str, LabMta]]:
    FEEDS.mkdir(mode=0o755, exist_ok=True)
    FEEDS.chmod(0o755)
    _restart_lab(feeds=True)
    yield lab
    _restart_lab(feeds=False)


@pytest.fixture(params=["postfix", "sendmail", "exim"])
def fed_mta(request: pytest.FixtureRequest, feeds_lab: dict[str, LabMta]) -> LabMta:
    chosen = feeds_lab[request.param]
    chosen.reset()
    return chosen


@pytest.fixture
def milter(tmp_path: Path) -> Iterator[MilterProcess]:
    need_pymilter()
    config = milter_config(tmp_path, POLICY)
    config["milter"]["socket"] = f"unix:{FEEDS / 'milter.sock'}"
    running = start_milter(tmp_path, config)
    yield running
    running.stop()


def indexed(milter: MilterProcess, target: str) -> dict[str, set[str]]:
    index = QueueIndex(milter.index)
    try:
        return {m.queue_id: set(m.recipients) for m in index.select(parse_target(target))}
    finally:
        index.close()


def listed_ids(mta: LabMta, recipients: tuple[str, ...]) -> set[str]:
    return {queue_id for queue_id, rcpts, _ in mta.listing() if set(rcpts) & set(recipients)}


def test_queued_mail_for_served_domains_is_in_the_index(
    fed_mta: LabMta, milter: MilterProcess
) -> None:
    fed_mta.inject((*SERVED, *NOT_SERVED))

    rows = indexed(milter, "@customer.test")
    assert set(rows) == listed_ids(fed_mta, SERVED)  # the MTA's own queue ids
    assert {r.strip("<>") for rcpts in rows.values() for r in rcpts} == set(SERVED)
    assert indexed(milter, "mycustomer.test") == {}
    assert indexed(milter, "customer.test.evil") == {}


async def test_etrn_flushes_exactly_what_the_feed_recorded(
    fed_mta: LabMta, milter: MilterProcess
) -> None:
    index = QueueIndex(milter.index)
    backend = fed_mta.backend()
    assert isinstance(backend, MtaBackend)
    backend.use_index(index)
    await reconcile(backend, index)  # on an empty queue: from now on the index answers
    fed_mta.inject((*SERVED, *NOT_SERVED))

    result = await backend.flush(parse_target("customer.test"))
    if result.completion is not None:  # Exim delivers in the foreground
        assert (await result.completion).started
    assert result.started and result.selected_from == FROM_INDEX and result.pending == 1
    assert set(fed_mta.wait_received({"user@customer.test"})) == {"user@customer.test"}
    index.close()


async def test_a_killed_feed_costs_no_mail(fed_mta: LabMta, milter: MilterProcess) -> None:
    fed_mta.inject(("user@customer.test",))
    milter.process.kill()
    milter.process.wait()

    # Mail keeps being accepted and queued; only the index misses it.
    fed_mta.inject(("user@sub.customer.test", "user@mycustomer.test"))
    assert len(fed_mta.listing()) == 3
    assert set(indexed(milter, "@customer.test")) == listed_ids(fed_mta, ("user@customer.test",))

    # The next reconciliation finds what the feed missed, and ETRN flushes it.
    index = QueueIndex(milter.index)
    backend = fed_mta.backend()
    assert isinstance(backend, MtaBackend)
    backend.use_index(index)
    await reconcile(backend, index)
    result = await backend.flush(parse_target("sub.customer.test"))
    if result.completion is not None:  # Exim delivers in the foreground
        assert (await result.completion).started
    assert result.selected_from == FROM_INDEX and result.pending == 1
    assert set(fed_mta.wait_received({"user@sub.customer.test"})) == {"user@sub.customer.test"}
    index.close()


def send(mta: LabMta, recipients: tuple[str, ...]) -> dict[str, tuple[int, bytes]]:
    """One message over SMTP; what the MTA refused at RCPT (recipient -> reply)."""
    with smtplib.SMTP("127.0.0.1", mta.smtp_port, local_hostname="client.test") as smtp:
        try:
            refused = smtp.sendmail(
                "sender@client.test",
                list(recipients),
                b"Subject: quota\r\n\r\nquota test\r\n",
            )
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
    return refused


@pytest.mark.parametrize("name", ["postfix", "sendmail"])
def test_hold_and_quota_at_the_mta(
    name: str, feeds_lab: dict[str, LabMta], milter: MilterProcess
) -> None:
    mta = feeds_lab[name]
    mta.reset()
    assert send(mta, ("user@noflush.test",)) == {}
    assert send(mta, ("user@noflush.test", "user@customer.test")) == {}  # mixed: never held

    wait_for(lambda: len(_held(milter, "noflush.test")) == 2)
    held = {qid for qid, (_, h) in _held(milter, "noflush.test").items() if h}
    assert len(held) == 1
    wait_for(lambda: _mta_held(mta) == held)

    # The quota (2 messages) is reached: RCPT for the held domain is refused for now.
    refused = send(mta, ("user@noflush.test", "other@customer.test"))
    assert list(refused) == ["user@noflush.test"]
    code, text = refused["user@noflush.test"]
    assert code == 452 and b"4.2.2" in text


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _held(milter: MilterProcess, target: str) -> dict[str, tuple[set[str], bool]]:
    index = QueueIndex(milter.index)
    try:
        return {m.queue_id: (set(m.recipients), m.held) for m in index.select(parse_target(target))}
    finally:
        index.close()


def _mta_held(mta: LabMta) -> set[str]:
    """Queue ids the MTA itself has on hold (Postfix hold queue, Sendmail hf files)."""
    if mta.name == "postfix":
        return {qid for qid, _, queue in mta.listing() if queue == "hold"}
    queue_dir = MTA_LAB / "sendmail" / "mqueue"
    return {path.name[2:] for path in queue_dir.rglob("hf*")}


@pytest.mark.parametrize("name", ["postfix", "sendmail"])
async def test_etrn_releases_held_mail_and_frees_the_quota(
    name: str, feeds_lab: dict[str, LabMta], milter: MilterProcess
) -> None:
    mta = feeds_lab[name]
    mta.reset()
    index = QueueIndex(milter.index)
    options = {"postsuper": [lab_env("postfix")["POSTSUPER"]]} if name == "postfix" else {}
    backend = mta.backend(**options)
    assert isinstance(backend, MtaBackend)
    backend.use_index(index)
    await reconcile(backend, index)  # on an empty queue: from now on the index answers
    send(mta, ("a@noflush.test",))
    send(mta, ("b@noflush.test",))
    wait_for(lambda: len(_mta_held(mta)) == 2)
    assert list(send(mta, ("c@noflush.test",))) == ["c@noflush.test"]  # over quota: 452
    # A reconciliation meanwhile keeps them, held (Sendmail lists hf files only with -qQ).
    await reconcile(backend, index)
    assert [held for _, held in _held(milter, "noflush.test").values()] == [True, True]

    result = await backend.flush(parse_target("noflush.test"))

    assert result.started and result.pending == 2 and result.selected_from == FROM_INDEX
    received = mta.wait_received({"a@noflush.test", "b@noflush.test"})
    assert set(received) == {"a@noflush.test", "b@noflush.test"}
    assert _mta_held(mta) == set()
    # Delivered, so no longer counted: the domain takes mail again.
    assert send(mta, ("c@noflush.test",)) == {}
    index.close()


@pytest.fixture
def bridge_index(sudoers: str) -> Iterator[Path]:
    """A queue index in a directory of the bridge's user, where the kit puts it
    (``install -d -o etrn-bridge /var/lib/etrn-bridge``); the lab's own is reachable
    by every MTA user."""
    directory = FEEDS / "bridge-index"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o755)
    user = pwd.getpwnam(sudoers)
    os.chown(directory, user.pw_uid, user.pw_gid)
    yield directory / "index.sqlite"
    shutil.rmtree(directory, ignore_errors=True)


def test_unprivileged_bridge_releases_held_mail_through_the_kit_sudoers_line(
    feeds_lab: dict[str, LabMta], postdrop_member: str, bridge_index: Path, tmp_path: Path
) -> None:
    """``serve`` runs as the kit's user (group postdrop for the lab's postqueue);
    its ``postsuper -H`` goes through ``sudo -n`` with exactly the line of
    postfix/README.md (conftest's ``sudoers``), and the held message is delivered
    after ETRN. The same user cannot use the line for anything else: not to
    delete, not to release ALL or mail held by the operator, not another queue
    directory or Postfix instance."""
    mta = feeds_lab["postfix"]
    mta.reset()
    postsuper = lab_env("postfix")["POSTSUPER"]
    backend = {**mta.backend_options, "postsuper": ["/usr/bin/sudo", "-n", postsuper]}
    index_config = f"index: {{file: {bridge_index}}}\n"
    with running_bridge(
        tmp_path, backend, postdrop_member, ["noflush.test"], index_config
    ) as bridge:
        # The bridge made the index as its own user and reconciled it: from now on
        # ETRN selects from it. Then the milter (root here) records into the same file.
        wait_for(lambda: bridge_index.exists() and _last_reconciled(bridge_index) is not None)
        config = milter_config(tmp_path / "milter", POLICY)
        config["index"]["file"] = str(bridge_index)
        config["milter"]["socket"] = f"unix:{FEEDS / 'milter.sock'}"
        milter = start_milter(tmp_path / "milter", config)
        try:
            # Mail the operator put on hold (not through the milter) must stay there.
            mta.inject(("user@mycustomer.test",))
            (operators,) = listed_ids(mta, ("user@mycustomer.test",))
            subprocess.run([postsuper, "-h", operators], capture_output=True, check=True)
            assert send(mta, ("user@noflush.test",)) == {}
            wait_for(lambda: len(_mta_held(mta)) == 2)
            (held,) = _mta_held(mta) - {operators}

            for misuse in (
                ["-d", "ALL"],
                ["-d", held],
                ["-H", "ALL"],
                ["-H", "-"],  # queue ids from stdin
                ["-H", held, "-d", operators],
                ["-H", operators, "hold"],  # a queue directory argument
                ["-c", lab_env("postfix")["POSTFIX_CONFIG_DIR"], "-H", held],
                ["-r", held],
            ):
                refused = as_user(postdrop_member, "sudo", "-n", postsuper, *misuse)
                assert refused.returncode != 0, misuse
                assert "password is required" in refused.stderr, (misuse, refused.stderr)
            assert _mta_held(mta) == {held, operators}
            # Ids in Postfix's long format (enable_long_queue_ids) pass too (asked, not run).
            long_ids = ["-H", LONG_QUEUE_ID, "-H", LONG_QUEUE_ID]
            asked = as_user(postdrop_member, "sudo", "-n", "-l", postsuper, *long_ids)
            assert asked.returncode == 0, asked.stderr

            code, text = bridge.etrn("noflush.test")
            assert code == 253 and "1 pending messages" in text, text
            assert set(mta.wait_received({"user@noflush.test"})) == {"user@noflush.test"}
            assert _mta_held(mta) == {operators}
            (record,) = [r for r in bridge.records() if r["event"] == "etrn"]
            assert record["selected_from"] == FROM_INDEX and record["queue_ids"] == [held]
        finally:
            milter.stop()


def _last_reconciled(path: Path) -> float | None:
    index = QueueIndex(path)
    try:
        return index.last_reconciled()
    finally:
        index.close()
