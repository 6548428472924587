"""The whole-file path for plain targets files gives what parsing line by line gives."""

from __future__ import annotations

import pytest

from etrn_bridge.target import Target, TargetError, parse_plain_targets, parse_target

PLAIN = "a.example\n@B.Example\nx-y.z9.example\n1.2.3.4\n"
LINES = [
    "a.example",
    "@sub.example",
    "UPPER.example",
    "",
    "   ",
    "# comment",
    "a.example # trailing comment",
    "trailing.dot.",
    "@",
    "@@double.example",
    "a@b.example",
    "-lead.example",
    "trail-.example",
    "a..b",
    ".lead",
    "xn--bcher-kva.example",
    "XN--bcher-kva.example",
    "xn--invalid-.example",
    "axn--b.example",
    "bücher.example",
    "\u212a.example",  # KELVIN SIGN: lower-cases to ASCII 'k'
    "l" * 63 + ".example",
    "l" * 64 + ".example",
    ".".join(["a" * 50] * 5),
    ".".join(["a" * 49] * 5) + "a",
    "#queue",
    "[192.0.2.1]",
    "a_b.example",
    "tab\there.example",
    "cr.example\r",
    "nul\x00.example",
    "sep\u2028.example",
]


def line_by_line(text: str) -> list[Target] | None:
    """The reference: every line through parse_target (None if any line fails)."""
    try:
        return [parse_target(line) for line in text.splitlines()]
    except TargetError:
        return None


def test_a_plain_file_takes_the_whole_file_path() -> None:
    assert parse_plain_targets(PLAIN) == line_by_line(PLAIN)
    assert parse_plain_targets(PLAIN) is not None
    assert parse_plain_targets(PLAIN.rstrip("\n")) == line_by_line(PLAIN)
    assert parse_plain_targets("") == []


@pytest.mark.parametrize("line", LINES)
def test_each_odd_line_is_either_parsed_the_same_or_left_to_the_line_path(line: str) -> None:
    for text in (line, f"{PLAIN}{line}\n", f"{line}\n{PLAIN}", f"{PLAIN}{line}"):
        fast = parse_plain_targets(text)
        if fast is not None:
            assert fast == line_by_line(text)
            assert [str(t) for t in fast] == [str(t) for t in line_by_line(text) or []]


def test_a_file_of_many_chunks_is_checked_in_every_chunk() -> None:
    lines = [f"{'@' if k % 3 == 0 else ''}t{k}.bulk.example" for k in range(20_000)]
    text = "\n".join(lines) + "\n"
    assert parse_plain_targets(text) == line_by_line(text)
    for position in (0, 1_000, 1_912, 1_913, 10_000, 19_999, 20_000):
        for bad in ("", "bad..example", "# comment", "xn--bcher-kva.example"):
            spoiled = "\n".join([*lines[:position], bad, *lines[position:]]) + "\n"
            assert parse_plain_targets(spoiled) is None, (position, bad)
