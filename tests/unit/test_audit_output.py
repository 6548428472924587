"""``etrn-bridge audit``'s printing, built column-wise for speed, against the plain
per-row reading: json.dumps of each row, and str.format of each table line."""

from __future__ import annotations

import json

from etrn_bridge.auditquery import Row, Summary
from etrn_bridge.cli.audit import HEADINGS, _json_lines, _table

# Clients and targets as a hostile file may hold them (the slow path lets any
# string through): quotes, escapes, controls, non-ASCII, a line separator.
NAMES = [
    ("127.0.0.1", "acme.example"),
    ("127.0.0.10", "-"),
    ("::1", "#queue"),
    ("admin:ops", "@b.example"),
    ('127.0.0.2"', 'x\\"y'),
    ("127.0.0.3", "evil\x1b[2J\x00"),
    ("127.0.0.4", "caf\u00e9\u2028\U0001f600"),
    ("127.0.0.5\t", "a\nb"),
    # As pairs, "127.0.0.5" sorts first; as "client NUL target" strings it would not.
    ("127.0.0.5", "z.example"),
    ("127.0.0.5\x00y", "a"),
]


def summary(names: list[tuple[str, str]]) -> Summary:
    result = Summary()
    for number, key in enumerate(reversed(names)):
        # Counts of different widths, one negative (a hostile "pending" is any int).
        allowed, denied, messages = 10**number, number, number - 1
        seen = f"2026-11-29T10:00:0{number}.000Z"
        result.rows[key] = Row(allowed + denied, allowed, denied, 0, 0, messages, seen)
    return result


def rows_in_order(source: Summary) -> list[tuple[object, ...]]:
    return [(*key, *row) for key, row in sorted(source.rows.items())]


def reference_table(source: Summary) -> str:
    cells = [HEADINGS, *(tuple(map(str, row)) for row in rows_in_order(source))]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]
    layout = "  ".join(
        f"{{{i}:{'<' if i < 2 else '>'}{width}}}" for i, width in enumerate(widths[:-1])
    )
    layout += f"  {{{len(widths) - 1}}}"
    lines = [layout.format(*line) for line in cells]
    return "".join(
        (line if line.isprintable() else line.encode("unicode_escape").decode("ascii")) + "\n"
        for line in lines
    )


def test_json_lines_equal_json_dumps_of_each_row() -> None:
    for names in (NAMES, NAMES[:4]):
        source = summary(names)
        expected = "".join(
            json.dumps(dict(zip(HEADINGS, row, strict=True)), ensure_ascii=True) + "\n"
            for row in rows_in_order(source)
        )
        assert _json_lines(source) == expected
        assert _json_lines(source).isascii()


def test_table_equals_formatting_each_line() -> None:
    for names in (NAMES, NAMES[:4]):  # with and without unprintable cells, NUL
        source = summary(names)
        assert _table(source) == reference_table(source)
    printed = _table(summary(NAMES))
    assert all(line.isprintable() for line in printed.splitlines())
    assert len(printed.splitlines()) == len(NAMES) + 1


def test_nothing_matched_prints_nothing() -> None:
    assert _table(Summary()) == _json_lines(Summary()) == ""
