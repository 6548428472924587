"""MTA backends without an MTA: listing parsers (on real captured output), selection, options.

The fixtures are literal output of the lab's Postfix 3.7, Exim 4.96 and
Sendmail 8.17 (tests/mta/lab) with the six test recipients queued, plus one
message to user@Customer.Test and other@noflush.test. In exim-bp.txt that
message's other@noflush.test is marked delivered (exim -Mmd) and one message
is frozen (exim -Mf); in postqueue-j.jsonl the mycustomer.test message is on
hold (postsuper -h).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from etrn_bridge.backends.auto import AutoBackend
from etrn_bridge.backends.base import BackendOptionError, backend_factory, create_backend
from etrn_bridge.backends.exim import EximBackend, parse_exim_bp
from etrn_bridge.backends.mta import (
    QueuedMessage,
    QueueListing,
    recipient_domain,
    select_messages,
)
from etrn_bridge.backends.postfix import PostfixBackend, parse_postqueue_json
from etrn_bridge.backends.sendmail import SendmailBackend, parse_sendmail_bp
from etrn_bridge.target import MissingArgument, TargetError, parse_target

FIXTURES = Path(__file__).parent / "fixtures"


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def selected_recipients(messages: list[QueuedMessage], target: str) -> set[str]:
    ids = set(select_messages(messages, parse_target(target).covers_domain).queue_ids)
    return {r for m in messages if m.queue_id in ids for r in m.recipients}


def test_selection_counts_messages_also_addressed_elsewhere() -> None:
    messages = parse_postqueue_json(read("postqueue-j.jsonl"))
    selection = select_messages(messages, parse_target("customer.test").covers_domain)
    # user@Customer.Test shares its queue file with other@noflush.test.
    assert selection.shared == 1
    assert len(selection.queue_ids) == 3
    only_own = select_messages(messages, parse_target("sub.customer.test").covers_domain)
    assert (len(only_own.queue_ids), only_own.shared) == (1, 0)


def test_postqueue_json() -> None:
    messages = parse_postqueue_json(read("postqueue-j.jsonl"))
    # 7 queue files, one on hold: listed as held, and no selection takes it.
    assert len(messages) == 7
    held = [m for m in messages if m.held]
    assert [(m.queue, m.recipients) for m in held] == [("hold", ("user@mycustomer.test",))]
    assert all(m.queue == "deferred" and m.size > 0 for m in messages if not m.held)
    assert select_messages(messages, lambda domain: True).queue_ids == tuple(
        m.queue_id for m in messages if not m.held
    )
    assert ("user@Customer.Test", "other@noflush.test") in [m.recipients for m in messages]


def test_exim_bp() -> None:
    messages = parse_exim_bp(read("exim-bp.txt"))
    assert [m.queue_id for m in messages][:2] == ["1xXKdU-0002DS-1d", "1xXKdU-0002DU-2I"]
    # 7 messages, one frozen: the operator's freeze is not lifted by an ETRN.
    assert len(messages) == 6
    by_id = {m.queue_id: m.recipients for m in messages}
    assert "1xXKdU-0002DW-2x" not in by_id
    assert by_id["1xXKdV-0002EZ-2j"] == ("user@Customer.Test",)  # "D other@..." delivered
    assert all(m.size > 300 for m in messages)  # "402" bytes; "1.2K" would be 1228


def test_exim_bp_rounded_sizes() -> None:
    listing = b" 5m   12K 1xXKdU-0002DS-1d <s@client.test>\n          u@customer.test\n\n"
    listing += b" 5m  1.5M 1xXKdU-0002DS-1e <s@client.test>\n          u@customer.test\n"
    assert [m.size for m in parse_exim_bp(listing)] == [12 * 1024, int(1.5 * 1024 * 1024)]


def test_sendmail_bp() -> None:
    messages = parse_sendmail_bp(read("sendmail-bp.txt"))
    assert len(messages) == 7
    assert all(len(m.queue_id) == 14 for m in messages)
    assert all(m.size > 0 for m in messages)
    assert ("user@Customer.Test", "other@noflush.test") in [m.recipients for m in messages]


@pytest.mark.parametrize(
    ("fixture", "parse"),
    [
        ("postqueue-j.jsonl", parse_postqueue_json),
        ("exim-bp.txt", parse_exim_bp),
        ("sendmail-bp.txt", parse_sendmail_bp),
    ],
)
def test_selection_is_exact(fixture: str, parse: object) -> None:
    messages = parse(read(fixture))  # type: ignore[operator]
    node = selected_recipients(messages, "customer.test")
    # other@noflush.test shares a message with user@Customer.Test (and is
    # marked delivered in the Exim listing): a message goes as a whole.
    assert {r.lower() for r in node} - {"other@noflush.test"} == {"user@customer.test"}
    assert "user@mycustomer.test" not in node and "user@customer.test.evil" not in node
    subtree = selected_recipients(messages, "@customer.test")
    assert "user@sub.customer.test" in subtree
    assert "user@customer.test.evil" not in subtree
    # the local part never counts
    assert "customer.test@noflush.test" not in subtree
    assert selected_recipients(messages, "nothing.test") == set()


def test_empty_listings() -> None:
    assert parse_postqueue_json(b"") == []
    assert parse_exim_bp(b"") == []
    assert (
        parse_sendmail_bp(b"/opt/mta-lab/sendmail/mqueue is empty\n\t\tTotal requests: 0\n") == []
    )


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("user@customer.test", "customer.test"),
        ("<USER@CUSTOMER.TEST>", "customer.test"),
        ("user@customer.test.", "customer.test"),
        ('"a@b"@customer.test', "customer.test"),
        ("customer.test@other.test", "other.test"),
        ("user@bücher.test", "xn--bcher-kva.test"),
        ("user@BÜCHER.test", "xn--bcher-kva.test"),
        ("postmaster", None),
        ("@customer.test", None),
        ("user@", None),
    ],
)
def test_recipient_domain(address: str, domain: str | None) -> None:
    assert recipient_domain(address) == domain


@pytest.mark.parametrize("argument", ["@", "", "  ", "*", "%", "*.customer.test", "#", "@.", "."])
def test_dangerous_targets_cannot_be_built(argument: str) -> None:
    """What makes -qR/-R run the whole queue never reaches a backend."""
    with pytest.raises((TargetError, MissingArgument)):
        parse_target(argument)


@pytest.mark.parametrize("name", ["postfix", "exim", "sendmail", "auto"])
def test_registered(name: str) -> None:
    assert backend_factory(name).options_schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"postqueue": "postqueue"}, "postqueue"),  # not absolute
        ({"timeout": 0}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"command_prefix": "sudo -n"}, "command_prefix"),
        ({"args": [""]}, "args"),
        ({"exim": "/usr/sbin/exim4"}, "exim"),  # another backend's key
        ({"queues": {"q": ["bad domain"]}}, "queues"),
    ],
)
def test_postfix_option_errors(options: dict[str, object], key: str) -> None:
    with pytest.raises(BackendOptionError) as caught:
        PostfixBackend.from_options(options)
    assert caught.value.key == key


def test_defaults_and_argv() -> None:
    backend = SendmailBackend.from_options(
        {"command_prefix": ["sudo", "-n"], "args": ["-C", "/etc/mail/other.cf"]}
    )
    assert backend.command("-bp") == [
        "sudo",
        "-n",
        "/usr/sbin/sendmail",
        "-C",
        "/etc/mail/other.cf",
        "-bp",
    ]
    assert EximBackend.from_options({}).program == "/usr/sbin/exim4"
    assert PostfixBackend.from_options({}).program == "/usr/sbin/postqueue"
    assert backend.timeout == 30 and backend.max_concurrent == 4


def test_auto_rejects_program_specific_options() -> None:
    with pytest.raises(BackendOptionError) as caught:
        AutoBackend.from_options({"postqueue": "/usr/sbin/postqueue"})
    assert caught.value.key == "postqueue"


def test_auto_builds_something() -> None:
    backend = create_backend({"type": "auto", "timeout": 5})
    assert backend.name in {"postfix", "exim", "sendmail", "log"}


async def test_missing_program_fails_without_a_shell() -> None:
    backend = EximBackend.from_options({"exim": "/nonexistent/exim4"})
    result = await backend.flush(parse_target("customer.test"))
    assert not result.started and result.exit_status is None
    assert "/nonexistent/exim4" in result.detail
    assert await backend.pending(parse_target("customer.test")) is None


async def test_postfix_queue_without_mapping_is_unsupported() -> None:
    backend = PostfixBackend.from_options({"postqueue": "/nonexistent/postqueue"})
    result = await backend.flush(parse_target("#customers"))
    assert not result.started and result.unsupported


@pytest.mark.parametrize("target", ["customer.test", "@customer.test", "noflush.test", "@test"])
@pytest.mark.parametrize(
    ("fixture", "parse"),
    [
        ("postqueue-j.jsonl", parse_postqueue_json),
        ("exim-bp.txt", parse_exim_bp),
        ("sendmail-bp.txt", parse_sendmail_bp),
    ],
)
def test_shared_listing_selects_as_a_scan_of_every_message(
    fixture: str, parse: Callable[[bytes], list[QueuedMessage]], target: str
) -> None:
    messages = parse(read(fixture))
    covers = parse_target(target).covers_domain
    listing = QueueListing(messages)
    first, again = listing.select(covers), listing.select(covers)  # the map is built once
    scanned = select_messages(messages, covers)
    assert sorted(first.queue_ids) == sorted(scanned.queue_ids) and first.queue_ids
    assert first.shared == scanned.shared and again == first
