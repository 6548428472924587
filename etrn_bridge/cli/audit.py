"""``etrn-bridge audit``: who flushed what, when — a summary of the audit trail.

Reads ``audit.file`` of the config (or ``--file``) with its rotated and gzipped
siblings, oldest first; prints one row per client and target, as a table or as
JSON lines (``--json``). Lines that are not audit records are skipped and
counted on stderr. Exit 0 when some record matched, 1 when none did, 2 on a
usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from json.encoder import encode_basestring_ascii
from operator import add, itemgetter
from pathlib import Path
from typing import Any

from etrn_bridge.auditquery import (
    ROW_COLUMNS,
    Query,
    QueryError,
    Summary,
    audit_files,
    default_workers,
    parse_network,
    parse_time,
    summarise,
)
from etrn_bridge.collector import collector_paused
from etrn_bridge.request import Status
from etrn_bridge.target import TargetError, parse_target

EXIT_FOUND = 0
EXIT_NONE = 1
EXIT_USAGE = 2
HEADINGS = ("client", "target", *ROW_COLUMNS)
# One row as json.dumps(dict(zip(HEADINGS, row)), ensure_ascii=True) writes it: the
# strings given as JSON text, the counts as ints (%d writes their JSON).
_COUNTS = ROW_COLUMNS[:-1]
_JSON_ROW = "{" + ", ".join(f'"{h}": %{"d" if h in _COUNTS else "s"}' for h in HEADINGS) + "}"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="summarise the audit trail per client and target",
        description="Summarise the audit trail (rotated and .gz files included) per client "
        "and target. Filters combine; a repeated filter matches any of its values.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", help="the YAML configuration file (its audit.file)")
    source.add_argument(
        "--file", type=Path, metavar="AUDIT", help="the audit file (rotated siblings included)"
    )
    parser.add_argument(
        "--since", metavar="TIME", help="from this time on: ISO 8601 (UTC if no zone) or 24h, 7d"
    )
    parser.add_argument("--until", metavar="TIME", help="before this time: ISO 8601 or 30m, 7d")
    parser.add_argument(
        "--client", action="append", default=[], metavar="IP|CIDR", help="client address"
    )
    parser.add_argument(
        "--target", action="append", default=[], help="ETRN target, exactly: x, @x or #q"
    )
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        choices=[status.value for status in Status],
        metavar="STATUS",
        help=f"how the request ended: {', '.join(status.value for status in Status)}",
    )
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="ID",
        help="id of the deciding entry ('-': none)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines, one per row")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        path = _audit_path(args)
        query = _query(args)
    except QueryError as exc:
        print(f"etrn-bridge audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    files = audit_files(path)
    if not files:
        print(f"etrn-bridge audit: no audit file at {path}", file=sys.stderr)
        return EXIT_USAGE
    summary = summarise(files, query, workers=default_workers())
    with collector_paused():  # 200k rows of output are as many new tuples
        print(_json_lines(summary) if args.json else _table(summary), end="")
    _report(summary, len(files))
    return EXIT_FOUND if summary.matched else EXIT_NONE


def _audit_path(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    # Imported here: the config's validation (jsonschema, the backends) takes
    # longer to import than a small audit takes to read, and --file needs none.
    from etrn_bridge.cli.configfile import load_or_report  # noqa: PLC0415

    config = load_or_report(args.config)
    if config is None:
        raise QueryError(f"cannot use {args.config}")
    if config.audit.file is None:
        raise QueryError(f"{args.config} has no audit.file (give --file)")
    return config.audit.file


def _query(args: argparse.Namespace) -> Query:
    targets = set()
    for text in args.target:
        try:
            targets.add(str(parse_target(text)))
        except TargetError as exc:
            raise QueryError(f"--target {text!r}: {exc.reason}") from None
    return Query(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        networks=tuple(parse_network(text) for text in args.client),
        targets=frozenset(targets),
        statuses=frozenset(args.status),
        rules=frozenset(args.rule),
    )


def _sorted_rows(summary: Summary) -> list[tuple[Any, ...]]:
    """(client, target, *ROW_COLUMNS values) of every row, by client and target."""
    rows = list(map(add, summary.rows.keys(), summary.rows.values()))
    # One string, client NUL target, sorts as the pair does unless a client holds
    # a NUL (a slow-path one may; a fast-path one never does), and twice as fast.
    if "\0" in "\1".join(map(itemgetter(0), summary.rows)):
        rows.sort()
    else:
        rows.sort(key=_client_nul_target)
    return rows


def _client_nul_target(row: tuple[Any, ...]) -> str:
    return f"{row[0]}\0{row[1]}"


def _json_lines(summary: Summary) -> str:
    if not summary.rows:
        return ""
    clients, targets, *counts, seen = zip(*_sorted_rows(summary), strict=True)
    # ensure_ascii: whatever a hostile file held is printed escaped.
    escape = encode_basestring_ascii
    rows = zip(map(escape, clients), map(escape, targets), *counts, map(escape, seen), strict=True)
    return "\n".join(map(_JSON_ROW.__mod__, rows)) + "\n"


def _table(summary: Summary) -> str:
    if not summary.rows:
        return ""
    rows = _sorted_rows(summary)
    columns = list(zip(*rows, strict=True))
    # Names left-aligned, counts right-aligned, the time last: one printf-style
    # layout for every line (a provider's summary has 200k of them).
    names = [
        max(len(heading), *map(len, column))
        for heading, column in zip(HEADINGS[:2], columns, strict=False)
    ]
    counts = [
        max(len(heading), len(str(max(column))), len(str(min(column))))
        for heading, column in zip(HEADINGS[2:-1], columns[2:], strict=False)
    ]
    heading = "  ".join([*(f"%-{n}s" for n in names), *(f"%{n}s" for n in counts), "%s"])
    layout = "  ".join([*(f"%-{n}s" for n in names), *(f"%{n}d" for n in counts), "%s"])
    lines = [heading % HEADINGS, *map(layout.__mod__, rows)]
    # The rest of a line (spaces, digits, headings) is printable: the texts decide.
    if not all("".join(columns[place]).isprintable() for place in (0, 1, -1)):
        lines = list(map(_printable, lines))
    return "\n".join(lines) + "\n"


def _printable(line: str) -> str:
    """A line a terminal shows as it is: control and other unprintable characters escaped."""
    return line if line.isprintable() else line.encode("unicode_escape").decode("ascii")


def _report(summary: Summary, files: int) -> None:
    print(
        f"etrn-bridge audit: {summary.matched} records matched, "
        f"{summary.lines} lines in {files} files",
        file=sys.stderr,
    )
    malformed = summary.malformed
    if malformed.count:
        print(
            f"etrn-bridge audit: {malformed.count} malformed lines skipped "
            f"(first at {malformed.first})",
            file=sys.stderr,
        )
    for problem in summary.unreadable:
        print(f"etrn-bridge audit: cannot read {problem}", file=sys.stderr)
