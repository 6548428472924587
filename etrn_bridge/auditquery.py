"""Query and summarise the audit trail: rotated and gzipped files, filters, one row
per client and target.

The files are read oldest first, as logrotate leaves them: ``audit.jsonl-20261127.gz``
(dateext) ..., then ``audit.jsonl.3.gz`` ... ``audit.jsonl.1``, then ``audit.jsonl``.
Every line is hostile until checked: a line that is not a JSON object with the
fields of its event, with the types the writer gives them, is skipped and
counted, never trusted. Text printed from a record is made printable first.

Speed (a million lines in seconds): ``json.loads`` alone costs ~5 us a line, so
ETRN records in exactly the writer's layout (``audit.request_record`` encoded
with ``separators=(",", ":")``) are recognised by one strict regular expression
over a whole block of lines, which checks every member's JSON syntax and
captures only the fields a summary needs, and identical captures are counted
in C (``Counter``). Any other line (another event, an escaped value in a
captured field, a layout this code does not know) takes the ``json.loads``
path, so the fast path can only be faster, never different. Before that, a
query's time bounds, targets, statuses and IPv4 networks drop the lines in
the writer's layout that cannot match, by slicing and substring tests on the
raw bytes (the writer escapes every quote inside a string, so a
``"key":"value"`` token can only be that member). Malformed lines are counted
among the lines those tests keep.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress, repeat
from operator import and_, contains, itemgetter, methodcaller, not_, or_
from pathlib import Path
from typing import Any

from etrn_bridge.audit import timestamp
from etrn_bridge.policy.index import client_address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# logrotate's names for a rotated file: "FILE.N" (rotate count), "FILE-DATE"
# (dateext, dateformat "-%Y%m%d" by default, digits and separators), each
# optionally ".gz" (compress).
_ROTATED = re.compile(r"^(?:\.(?P<number>[0-9]+)|-(?P<date>[0-9][0-9._-]*))(?P<gz>\.gz)?$")
_RELATIVE = re.compile(r"^(?P<amount>[0-9]+)(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SUMMARISED_EVENTS = ("etrn", "admin_flush")
NO_RULE = "-"  # --rule - selects requests no policy entry decided
NO_TARGET = "-"  # the row of requests whose argument did not parse
BLOCK_BYTES = 1 << 22  # read this much at a time; lines are never cut


def _etrn_layout() -> re.Pattern[bytes]:
    """One ``etrn`` record in the writer's layout, or (last group) any other line.

    Groups: ts, client_ip, the members from ``target`` to ``pending`` as one span
    (so counting hashes two strings, not seven), the other line. Strings are
    ASCII, as the writer's ``ensure_ascii`` makes them: anything else is the
    slow path's to judge.
    """
    chars = r'[^"\\\x00-\x1f\x80-\xff]*+'
    string = rf'"{chars}(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{{4}}){chars})*+"'  # RFC 8259 §7
    plain = f'"{chars}"'  # a string without escapes
    integer = r"(?:0|[1-9][0-9]*+)"
    number = rf"-?{integer}(?:\.[0-9]++)?(?:[eE][-+]?[0-9]++)?"  # RFC 8259 §6
    scalar = rf"(?:{string}|{number}|true|false|null)"
    value = rf"(?:{scalar}|\[(?:{scalar}(?:,{scalar})*+)?\])"
    text, name, count = f"(?:{string}|null)", f"(?:{plain}|null)", f"(?:-?{integer}|null)"
    head = {
        "ts": f'"({chars})"',
        "event": '"etrn"',
        "session": plain,
        "frontend": plain,
        "client_ip": f'"({chars})"',
        "client_port": count,
        "helo": text,
        "auth_user": text,
        "tls": "(?:true|false)",
        "tls_fingerprint": name,
        "argument": text,
    }
    span = {
        "target": name,
        "kind": name,
        "decision": name,
        "rule": name,
        "status": plain,
        "coalesced": "(?:true|false)",
        "reply": integer,
        "reason": text,
        "backend": name,
        "exit_status": count,
        "pending": f"(?:{integer}|null)",
    }
    strings = rf"(?:null|\[{string}(?:,{string})*+\])"
    tail = {
        "shared_messages": count,
        "queue_ids": strings,
        "selected_from": count,
        "detail": text,
        "duration_ms": number,
        "client_gone": "(?:true|false)",
        "cut": "(?:true|false)",
    }
    fixed = ",".join(f'"{key}":{pattern}' for key, pattern in head.items())
    fixed += ",(" + ",".join(f'"{key}":{pattern}' for key, pattern in span.items()) + ")"
    fixed += "".join(f',"{key}":{pattern}' for key, pattern in tail.items())
    # The members after them (the outcome's extras) are checked too, and none may
    # repeat a key above: json.loads would let the repeat win.
    known = f"(?:{'|'.join([*head, *span, *tail])})"
    others = rf'(?:,"(?!{known}")[A-Za-z0-9_]++":{value})*+'
    return re.compile(rf"^(?:\{{{fixed}{others}\}}|(.+))$".encode("ascii"), re.MULTILINE)


# The summary's fields in a span the layout has already checked.
_SPAN = re.compile(
    rb'^"target":(null|"[^"]*"),"kind":(?:null|"[^"]*"),"decision":(?:null|"[^"]*"),'
    rb'"rule":(null|"[^"]*"),"status":"([^"]*)","coalesced":(true|false),"reply":([0-9]+),'
    rb'.*,"pending":([0-9]+|null)$',
    re.DOTALL,
)
_LAYOUT = _etrn_layout()
_ROW_TS = itemgetter(0)
_KEY = itemgetter(1, 2)  # client_ip, span
_OTHER = itemgetter(3)


class QueryError(ValueError):
    """A filter that cannot be understood (the command's usage error)."""


def parse_time(text: str, now: datetime | None = None) -> str:
    """A bound as the audit writes times: ISO 8601 (naive = UTC) or "24h", "7d", "30m"."""
    moment = now or datetime.now(UTC)
    relative = _RELATIVE.match(text)
    try:
        if relative:
            delta = timedelta(**{_UNITS[relative["unit"]]: int(relative["amount"])})
            return timestamp(moment - delta)
        parsed = datetime.fromisoformat(text)
        return timestamp(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    except (ValueError, OverflowError):
        raise QueryError(f"not a time: {text!r} (ISO 8601, or 30m, 24h, 7d, 2w)") from None


def parse_network(text: str) -> Network:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise QueryError(f"not an IP address or network: {text!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # the policy compares IPv4-mapped clients as IPv4
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


@dataclass(frozen=True, slots=True)
class Query:
    """Which records count: every given filter must hold; several values of one
    filter are alternatives. Bounds are audit timestamps, since inclusive, until
    exclusive. The client, status and rule filters select ETRN requests only."""

    since: str | None = None
    until: str | None = None
    networks: tuple[Network, ...] = ()
    targets: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()

    @property
    def etrn_only(self) -> bool:
        return bool(self.networks or self.statuses or self.rules)


@dataclass(slots=True)
class Row:
    """One client and target: how its requests ended."""

    requests: int = 0
    allowed: int = 0  # answered 25x: the flush started (or nothing was waiting)
    denied: int = 0  # 459: policy, rate limit, unsupported target kind
    failed: int = 0  # 458: the backend failed or timed out
    invalid: int = 0  # 500/501: no or a malformed argument
    messages: int = 0  # queued messages the flushes selected (coalesced replies not counted)
    last_seen: str = ""

    def add(self, column: str, count: int, messages: int, last_seen: str) -> None:
        """``count`` requests that ended in ``column`` (``outcome_column``)."""
        self.requests += count
        setattr(self, column, getattr(self, column) + count)
        self.messages += messages * count
        self.last_seen = max(self.last_seen, last_seen)

    def values(self) -> tuple[int, int, int, int, int, int, str]:
        """The columns after client and target, in ROW_COLUMNS order."""
        return (
            self.requests,
            self.allowed,
            self.denied,
            self.failed,
            self.invalid,
            self.messages,
            self.last_seen,
        )


ROW_COLUMNS = ("requests", "allowed", "denied", "failed", "invalid", "messages", "last_seen")


def outcome_column(reply: int) -> str:
    """The Row field a request answered with ``reply`` counts in."""
    if 200 <= reply < 300:
        return "allowed"
    if reply == 459:
        return "denied"
    if reply == 458:
        return "failed"
    return "invalid"


@dataclass(slots=True)
class Malformed:
    """Lines skipped because they are not audit records; where the first one was."""

    count: int = 0
    first: str | None = None  # "file:line"

    def add(self, block: Block, line: bytes) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{block.path}:{block.line_number(line)}"


@dataclass(slots=True)
class Summary:
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)
    lines: int = 0
    matched: int = 0
    malformed: Malformed = field(default_factory=Malformed)
    unreadable: list[str] = field(default_factory=list)  # "file: error"


# Files -------------------------------------------------------------------------------


def audit_files(path: Path) -> list[Path]:
    """The live file and its rotated siblings, oldest first (dateext, then numbered)."""
    dated: list[tuple[str, Path]] = []
    numbered: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            if not sibling.name.startswith(path.name) or not sibling.is_file():
                continue
            found = _ROTATED.match(sibling.name[len(path.name) :])
            if found is None:
                continue
            if found["number"] is not None:
                numbered.append((int(found["number"]), sibling))
            else:
                dated.append((found["date"], sibling))
    files = [p for _, p in sorted(dated)] + [p for _, p in sorted(numbered, reverse=True)]
    return [*files, path] if path.is_file() else files


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


@dataclass(frozen=True, slots=True)
class Block:
    """Whole lines of one file; ``first_line`` is the number of the first."""

    path: Path
    first_line: int
    data: bytes
    lines: int

    def line_number(self, line: bytes) -> int:
        """The number of the first whole line equal to ``line`` (not a part of another)."""
        at = (b"\n" + self.data).find(b"\n" + line + b"\n")
        return self.first_line + self.data.count(b"\n", 0, max(0, at))


def read_blocks(files: Iterable[Path], unreadable: list[str]) -> Iterator[Block]:
    """Every file in blocks of whole lines; a file that cannot be read (gone, a
    truncated .gz) is named in ``unreadable`` and the others are still read."""
    for path in files:
        number = 1
        try:
            with _open(path) as stream:
                carry = b""
                while chunk := stream.read(BLOCK_BYTES):
                    cut = chunk.rfind(b"\n") + 1
                    if cut == 0:  # no line ends in this chunk: keep reading
                        carry += chunk
                        continue
                    data, carry = carry + chunk[:cut], chunk[cut:]
                    lines = data.count(b"\n")
                    yield Block(path, number, data, lines)
                    number += lines
                if carry:
                    yield Block(path, number, carry + b"\n", 1)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            unreadable.append(f"{path}: {exc}")


# Matching ----------------------------------------------------------------------------


class _Matcher:
    """A query as tests on a parsed record and on the fields the fast path captures."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self._client_ok: dict[str, bool] = {}

    def in_time(self, stamp: str) -> bool:
        query = self.query
        return (query.since is None or stamp >= query.since) and (
            query.until is None or stamp < query.until
        )

    def matches(self, record: dict[str, Any]) -> bool:
        """A parsed, well-formed record of a summarised event."""
        if record["event"] != "etrn":
            if self.query.etrn_only or not self.in_time(record["ts"]):
                return False
            return not self.query.targets or record["target"] in self.query.targets
        return self.in_time(record["ts"]) and self.etrn_matches(
            record["client_ip"], record["target"], record["rule"], record["status"]
        )

    def etrn_matches(
        self, client: str | None, target: str | None, rule: str | None, status: str
    ) -> bool:
        """The filters on an ETRN record's fields (``client`` None: judged apart)."""
        query = self.query
        if query.targets and target not in query.targets:
            return False
        if query.statuses and status not in query.statuses:
            return False
        if query.rules and (rule or NO_RULE) not in query.rules:
            return False
        return client is None or self.client_matches(client)

    def client_matches(self, client: str) -> bool:
        if not self.query.networks:
            return True
        known = self._client_ok.get(client)
        if known is None:
            try:
                address = client_address(client)
            except ValueError:  # e.g. a unix-socket peer of an MTA hook
                known = False
            else:
                known = any(address in network for network in self.query.networks)
            self._client_ok[client] = known
        return known


class _LinePrefilter:
    """Drops the lines of a block that are in the writer's layout and cannot match
    the query (time bounds, target, status, IPv4 networks), with C-level tests
    only: no line is parsed, and a line in any other layout is kept for the full
    checks."""

    _START = b'{"ts":"'
    _STAMP = slice(len(_START), len(_START) + len("2026-01-01T00:00:00.000Z"))
    _AFTER_STAMP = slice(_STAMP.stop, _STAMP.stop + len('","event":"'))

    def __init__(self, query: Query) -> None:
        self._tests: list[Callable[[list[bytes]], Iterator[bool]]] = []
        stamp = itemgetter(self._STAMP)
        if query.since is not None:
            since = query.since.encode("ascii", "replace")
            self._tests.append(lambda lines: map(since.__le__, map(stamp, lines)))
        if query.until is not None:
            until = query.until.encode("ascii", "replace")
            self._tests.append(lambda lines: map(until.__gt__, map(stamp, lines)))
        for key, values in (("target", query.targets), ("status", query.statuses)):
            if values:
                tokens = [f'"{key}":{json.dumps(value)}'.encode() for value in values]
                self._tests.append(partial(self._any_token, tokens))
        prefixes = _ipv4_prefixes(query.networks)
        if prefixes:
            tokens = [b'"client_ip":"' + prefix for prefix in prefixes]
            self._tests.append(partial(self._ipv4_prefix_or_ipv6, tokens))

    @staticmethod
    def _any_token(tokens: list[bytes], lines: list[bytes]) -> Iterator[bool]:
        found = [map(contains, lines, repeat(token)) for token in tokens]
        return map(any, zip(*found, strict=True)) if len(found) > 1 else found[0]

    @classmethod
    def _ipv4_prefix_or_ipv6(cls, tokens: list[bytes], lines: list[bytes]) -> Iterator[bool]:
        # Any IPv6 text may be an IPv4-mapped address inside the networks: kept.
        ipv6 = map(bool, map(_IPV6_CLIENT.search, lines))
        return map(or_, cls._any_token(tokens, lines), ipv6)

    def apply(self, data: bytes) -> bytes:
        if not self._tests:
            return data
        lines = data.split(b"\n")
        first, *others = self._tests
        passes = first(lines)
        for test in others:
            passes = map(and_, passes, test(lines))
        in_layout = map(
            and_,
            map(methodcaller("startswith", self._START), lines),
            map(b'","event":"'.__eq__, map(itemgetter(self._AFTER_STAMP), lines)),
        )
        return b"\n".join(compress(lines, map(or_, map(not_, in_layout), passes)))


_IPV6_CLIENT = re.compile(rb'"client_ip":"[^"]*:')


def _ipv4_prefixes(networks: Iterable[Network]) -> list[bytes]:
    """Text every IPv4 client in ``networks`` starts with ("127.3." for 127.3.0.0/16,
    the whole octets the prefix covers); none when a network is IPv6 or shorter than /8."""
    prefixes = []
    for network in networks:
        octets = network.prefixlen // 8
        if network.version != 4 or octets == 0:
            return []
        text = str(network.network_address).split(".")[:octets]
        prefixes.append(".".join(text).encode() + (b'"' if octets == 4 else b"."))
    return prefixes


# Field types each summarised event must have; anything else is malformed.
_STR = (str,)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_SHAPES: dict[str, dict[str, tuple[type, ...]]] = {
    "etrn": {
        "ts": _STR,
        "client_ip": _STR,
        "target": _OPT_STR,
        "rule": _OPT_STR,
        "status": _STR,
        "reply": (int,),
        "pending": _OPT_INT,
        "coalesced": (bool,),
    },
    "admin_flush": {
        "ts": _STR,
        "user": _OPT_STR,
        "target": _STR,
        "ok": (bool,),
        "pending": _OPT_INT,
    },
}


def _well_formed(record: object) -> dict[str, Any] | None:
    """The record when it has the fields its event needs, with the right types."""
    if not isinstance(record, dict):
        return None
    event = record.get("event")
    shape = _SHAPES.get(event) if isinstance(event, str) else None
    if shape is None:
        return record if isinstance(event, str) and isinstance(record.get("ts"), str) else None
    for key, types in shape.items():
        value = record.get(key)
        # bool is an int to isinstance: a true "pending" is not a count.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return None
    return record


# Summarising -------------------------------------------------------------------------


class _Tally:
    """Adds requests to the summary's rows."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def add(
        self, key: tuple[str, str], column: str, messages: int, last_seen: str, count: int = 1
    ) -> None:
        row = self.summary.rows.get(key)
        if row is None:
            row = self.summary.rows[key] = Row()
        self.summary.matched += count
        row.add(column, count, messages, last_seen)

    def add_record(self, record: dict[str, Any]) -> None:
        if record["event"] == "etrn":
            reply = record["reply"]
            key = (record["client_ip"], record["target"] or NO_TARGET)
            counted = 200 <= reply < 300 and not record["coalesced"]
        else:  # an administrator's etrn-bridge flush
            reply = 250 if record["ok"] else 458
            key = (f"admin:{record['user'] or '?'}", record["target"])
            counted = record["ok"]
        messages = (record["pending"] or 0) if counted else 0
        self.add(key, outcome_column(reply), messages, record["ts"])


def _string_or_none(captured: bytes) -> str | None:
    return None if captured == b"null" else captured[1:-1].decode("ascii")


# A span's part of a row: (target, Row column, messages it counts); None: filtered out.
_SpanFacts = tuple[str, str, int] | None


def _span_facts(span: bytes, matcher: _Matcher) -> _SpanFacts:
    fields = _SPAN.match(span)
    assert fields is not None  # the layout has checked the span's shape
    target, rule, status, coalesced, reply, pending = fields.groups()
    target_name = _string_or_none(target)
    if not matcher.etrn_matches(None, target_name, _string_or_none(rule), status.decode()):
        return None
    code = int(reply)
    counted = 200 <= code < 300 and coalesced == b"false" and pending != b"null"
    return target_name or NO_TARGET, outcome_column(code), int(pending) if counted else 0


def summarise(files: Iterable[Path], query: Query) -> Summary:
    summary = Summary()
    matcher = _Matcher(query)
    tally = _Tally(summary)
    prefilter = _LinePrefilter(query)
    since = None if query.since is None else query.since.encode("ascii", "replace")
    until = None if query.until is None else query.until.encode("ascii", "replace")
    # Fast-path ETRN records: how often each (client, span) occurred, and when
    # last (files and lines are in time order, so the last one written).
    counts: Counter[tuple[bytes, bytes]] = Counter()
    last_seen: dict[tuple[bytes, bytes], bytes] = {}
    for block in read_blocks(files, summary.unreadable):
        summary.lines += block.lines
        rows = _LAYOUT.findall(prefilter.apply(block.data))
        if any(map(_OTHER, rows)):
            for row in rows:
                if row[3]:
                    _slow_path(block, row[3], matcher, tally)
            rows = [row for row in rows if not row[3]]
        if since is not None:
            rows = list(compress(rows, map(since.__le__, map(_ROW_TS, rows))))
        if until is not None:
            rows = list(compress(rows, map(until.__gt__, map(_ROW_TS, rows))))
        keys = list(map(_KEY, rows))
        counts.update(keys)
        last_seen.update(zip(keys, map(_ROW_TS, rows), strict=True))
    _add_counts(summary, matcher, counts, last_seen)
    return summary


def _add_counts(
    summary: Summary,
    matcher: _Matcher,
    counts: Counter[tuple[bytes, bytes]],
    last_seen: dict[tuple[bytes, bytes], bytes],
) -> None:
    """The fast path's (client, span) counts as rows (a tight loop: ~300k pairs)."""
    # Distinct spans and clients are far fewer than their pairs: judge each once.
    spans = {span: _span_facts(span, matcher) for span in {span for _, span in counts}}
    clients: dict[bytes, str | None] = {}
    for client in {client for client, _ in counts}:
        ip = client.decode("ascii")
        clients[client] = ip if matcher.client_matches(ip) else None
    rows = summary.rows
    for pair, count in counts.items():
        facts, address = spans[pair[1]], clients[pair[0]]
        if facts is None or address is None:
            continue
        target, column, messages = facts
        key = (address, target)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row()
        row.add(column, count, messages, last_seen[pair].decode("ascii"))
        summary.matched += count


def _slow_path(block: Block, line: bytes, matcher: _Matcher, tally: _Tally) -> None:
    """A line the fast path did not recognise: parsed and checked in full."""
    if not line.strip():
        return
    try:
        record = _well_formed(json.loads(line))
    except (ValueError, RecursionError):  # not JSON or UTF-8; too deep; a number too long
        record = None
    if record is None:
        tally.summary.malformed.add(block, line)
    elif record["event"] in SUMMARISED_EVENTS and matcher.matches(record):
        tally.add_record(record)
