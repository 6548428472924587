"""ETRN argument parsing: every accepted form and every hostile one."""

from __future__ import annotations

import pytest

from etrn_bridge.target import (
    MAX_DOMAIN_LENGTH,
    MissingArgument,
    Target,
    TargetError,
    TargetKind,
    parse_domain,
    parse_target,
)

NODE, SUBTREE, QUEUE = TargetKind.NODE, TargetKind.SUBTREE, TargetKind.QUEUE

ACCEPTED = [
    ("customer.example", NODE, "customer.example"),
    ("CUSTOMER.Example", NODE, "customer.example"),
    ("customer.example.", NODE, "customer.example"),  # one trailing dot stripped
    (" customer.example", NODE, "customer.example"),  # libESMTP: "ETRN  customer.example"
    ("\tcustomer.example  ", NODE, "customer.example"),
    ("localhost", NODE, "localhost"),
    ("a-b.c-d.example", NODE, "a-b.c-d.example"),
    ("123.example", NODE, "123.example"),
    ("@customer.example", SUBTREE, "customer.example"),
    ("@Sub.Customer.Example.", SUBTREE, "sub.customer.example"),
    ("#acme", QUEUE, "acme"),
    ("#Queue_1.b-c", QUEUE, "Queue_1.b-c"),
    ("#" + "q" * 64, QUEUE, "q" * 64),
    ("[127.0.0.1]", NODE, "[127.0.0.1]"),
    ("[IPv6:::1]", NODE, "[IPv6:::1]"),
    ("[ipv6:2001:DB8:0:0:0:0:0:1]", NODE, "[IPv6:2001:db8::1]"),
    ("bücher.example", NODE, "xn--bcher-kva.example"),  # IDNA 2008 A-label
    ("BÜCHER.example", NODE, "xn--bcher-kva.example"),  # UTS #46 case mapping
    ("@münchen.example", SUBTREE, "xn--mnchen-3ya.example"),
    ("xn--bcher-kva.example", NODE, "xn--bcher-kva.example"),
    ("a" * 63 + ".example", NODE, "a" * 63 + ".example"),
]


@pytest.mark.parametrize(("argument", "kind", "name"), ACCEPTED)
def test_accepted_forms(argument: str, kind: TargetKind, name: str) -> None:
    target = parse_target(argument)
    assert target == Target(kind, name)


@pytest.mark.parametrize("argument", ["", " ", "  \t "])
def test_missing_argument(argument: str) -> None:
    with pytest.raises(MissingArgument):
        parse_target(argument)


def _long_name(length: int) -> str:
    labels = []
    while sum(len(label) + 1 for label in labels) < length:
        labels.append("a" * 60)
    return ".".join(labels)[:length].rstrip(".")


REJECTED = [
    "-customer.example",  # would be an option to a program
    "--help",
    "customer.example;reboot",
    "customer.example|cat",
    "$(id).example",
    "`id`.example",
    "customer.example&",
    "customer example",
    "customer.example\x00",
    "customer.example\r\nMAIL FROM:<x>",
    "cust\x1bomer.example",
    "customer.example\x7f",
    "cust\udcffomer.example",  # non-UTF-8 byte, surrogate-escaped by the listener
    "customer..example",
    ".customer.example",
    "customer.example..",
    "@",
    "#",
    "@@customer.example",
    "#@acme",
    "@#acme",
    "#acme;x",
    "#" + "q" * 65,
    "#-acme",
    "@[127.0.0.1]",
    "[127.0.0.1",
    "[999.0.0.1]",
    "[IPv6:zz::1]",
    "[customer.example]",
    "customer-.example",
    "under_score.example",
    "*.example",
    "%.example",
    "a" * 64 + ".example",
    _long_name(MAX_DOMAIN_LENGTH + 1),
    "x" * 300,
    "xn--zz.example",  # not a valid A-label
    "customer.example\u2028",
    "%s",
]


@pytest.mark.parametrize("argument", REJECTED)
def test_rejected_forms(argument: str) -> None:
    with pytest.raises(TargetError) as caught:
        parse_target(argument)
    assert not isinstance(caught.value, MissingArgument)
    assert caught.value.reason


def test_longest_name_accepted() -> None:
    name = _long_name(MAX_DOMAIN_LENGTH)
    assert len(name) <= MAX_DOMAIN_LENGTH
    assert parse_domain(name) == name


@pytest.mark.parametrize(
    ("target", "domain", "covered"),
    [
        (Target(NODE, "customer.test"), "customer.test", True),
        (Target(NODE, "customer.test"), "sub.customer.test", False),
        (Target(NODE, "customer.test"), "mycustomer.test", False),
        (Target(SUBTREE, "customer.test"), "customer.test", True),
        (Target(SUBTREE, "customer.test"), "a.b.customer.test", True),
        (Target(SUBTREE, "customer.test"), "mycustomer.test", False),
        (Target(SUBTREE, "customer.test"), "customer.test.evil", False),
        (Target(QUEUE, "customer.test"), "customer.test", False),
    ],
)
def test_covers_domain_is_exact(target: Target, domain: str, covered: bool) -> None:
    assert target.covers_domain(domain) is covered


@pytest.mark.parametrize("target", [Target(NODE, "a.example"), Target(SUBTREE, "a.example")])
def test_str_round_trips(target: Target) -> None:
    assert parse_target(str(target)) == target


def test_queue_str_round_trips() -> None:
    target = Target(QUEUE, "acme")
    assert str(target) == "#acme"
    assert parse_target(str(target)) == target
