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

The work is shared by processes (``workers``, one per CPU): a plain file is cut
into ranges of whole lines, read with ``os.pread`` through one descriptor, a
gzipped one is read whole by one process, and each process takes the next
piece when done. A process hands back its rows, not its lines (~200k rows
for a million lines, 0.3 s to pass and add up), and the rows add up to the
same whatever the pieces: counts are sums, ``last_seen`` the latest time by
value, and a malformed line is named by its number in its file.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import json
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress, islice, repeat
from multiprocessing.connection import Connection
from multiprocessing.context import ForkProcess
from operator import and_, contains, itemgetter, le, methodcaller, not_, or_
from pathlib import Path
from typing import Any, NamedTuple

from etrn_bridge.audit import timestamp
from etrn_bridge.collector import collector_paused
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
PIECE_BYTES = 1 << 25  # a bigger plain file is read in ranges this long, by any process
PARALLEL_BYTES = 1 << 26  # less than this is read by one process: a fork would not pay
MAX_WORKERS = 4  # each process more costs the first one a merge of its rows


def _etrn_layout() -> re.Pattern[bytes]:
    """One ``etrn`` record in the writer's layout, or (last group) any other line.

    Groups: ts, client_ip, the members from ``target`` to ``pending`` as one span
    (so counting hashes two strings, not seven), the other line. Every line is
    one match, an empty one too (search up to the last newline), so the matches
    count the lines. Strings are
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
    return re.compile(rf"^(?:\{{{fixed}{others}\}}|(.*))$".encode("ascii"), re.MULTILINE)


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
_SPAN_OF = itemgetter(2)  # never empty in a record of the layout


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


class Row(NamedTuple):
    """One client and target: how its requests ended (the columns in ROW_COLUMNS order)."""

    requests: int = 0
    allowed: int = 0  # answered 25x: the flush started (or nothing was waiting)
    denied: int = 0  # 459: policy, rate limit, unsupported target kind
    failed: int = 0  # 458: the backend failed or timed out
    invalid: int = 0  # 500/501: no or a malformed argument
    messages: int = 0  # queued messages the flushes selected (coalesced replies not counted)
    last_seen: str = ""


ROW_COLUMNS = Row._fields


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
    """Whole lines of one piece; ``first_line`` is the number of the first in the piece."""

    path: Path
    first_line: int
    data: bytes

    def line_number(self, line: bytes) -> int:
        """The number of the first whole line equal to ``line`` (not a part of another)."""
        at = (b"\n" + self.data).find(b"\n" + line + b"\n")
        return self.first_line + self.data.count(b"\n", 0, max(0, at))


@dataclass(frozen=True, slots=True)
class Piece:
    """Lines of one file that one process reads: all of a gzipped or small file, or
    the lines that begin in ``[start, stop)`` of a big plain one. The ranges of a
    file are read through one ``descriptor``, opened before any is read, so they
    are of the same file even if logrotate renames it meanwhile."""

    file: int  # the file's place in the list, oldest first
    path: Path
    size: int  # bytes on disk, to judge whether more processes pay
    start: int = 0
    stop: int | None = None  # None: to the end of the file as it is when read
    descriptor: int | None = None

    def blocks(self) -> Iterator[bytes]:
        """The piece in blocks of whole lines (OSError, EOFError: cannot be read on)."""
        return self._streamed() if self.descriptor is None else self._ranged()

    def _streamed(self) -> Iterator[bytes]:
        with _open(self.path) as stream:
            carry = b""
            while chunk := stream.read(BLOCK_BYTES):
                cut = chunk.rfind(b"\n") + 1
                if cut == 0:  # no line ends in this chunk: keep reading
                    carry += chunk
                    continue
                yield carry + chunk[:cut]
                carry = chunk[cut:]
            if carry:
                yield carry + b"\n"

    def _ranged(self) -> Iterator[bytes]:
        # os.pread: processes reading one descriptor share no file offset.
        descriptor = self.descriptor
        assert descriptor is not None
        position = _line_start(descriptor, self.start)
        stop = None if self.stop is None else _line_start(descriptor, self.stop)
        size = BLOCK_BYTES
        while stop is None or position < stop:
            wanted = size if stop is None else min(size, stop - position)
            data = os.pread(descriptor, wanted, position)
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line ends in it
                if len(data) == wanted and position + wanted != stop:
                    size *= 2  # a line longer than a block: read it whole
                    continue
                yield data + b"\n"  # the file's last line, unfinished
                return
            yield data[:cut] if cut < len(data) else data
            position += cut
            size = BLOCK_BYTES


def _line_start(descriptor: int, offset: int) -> int:
    """Where the first line that begins at or after ``offset`` begins (or the end).
    Two neighbour ranges ask this of the same offset, so each line is in one."""
    if offset == 0:
        return 0
    position = offset - 1
    while data := os.pread(descriptor, 1 << 16, position):
        newline = data.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(data)
    return position


def _pieces(files: list[Path], unreadable: dict[int, str]) -> list[Piece]:
    """The files as pieces, in order; a big plain file is opened and cut in ranges
    of PIECE_BYTES (the caller closes the descriptors)."""
    pieces = []
    for number, path in enumerate(files):
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # opening it says why
        if path.suffix == ".gz" or size <= PIECE_BYTES:
            pieces.append(Piece(number, path, size))
            continue
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            unreadable[number] = f"{path}: {exc}"
            continue
        size = os.fstat(descriptor).st_size
        for start in range(0, max(size, 1), PIECE_BYTES):
            stop = start + PIECE_BYTES if start + PIECE_BYTES < size else None
            length = (stop or size) - start
            pieces.append(Piece(number, path, length, start, stop, descriptor=descriptor))
    return pieces


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

# A row while it is counted: its values in ROW_COLUMNS order, in a list (cheaper
# to add to, and to hand from one process to another, than a Row).
_Counts = list[Any]
_PLACE = {column: place for place, column in enumerate(ROW_COLUMNS)}
_REQUESTS, _MESSAGES, _LAST_SEEN = _PLACE["requests"], _PLACE["messages"], _PLACE["last_seen"]


def _string_or_none(captured: bytes) -> str | None:
    return None if captured == b"null" else captured[1:-1].decode("ascii")


# A span's part of a row: (target, place of its column, messages it counts); None: filtered out.
_SpanFacts = tuple[str, int, int] | None


def _span_facts(span: bytes, matcher: _Matcher) -> _SpanFacts:
    fields = _SPAN.match(span)
    assert fields is not None  # the layout has checked the span's shape
    target, rule, status, coalesced, reply, pending = fields.groups()
    target_name = _string_or_none(target)
    if not matcher.etrn_matches(None, target_name, _string_or_none(rule), status.decode()):
        return None
    code = int(reply)
    counted = 200 <= code < 300 and coalesced == b"false" and pending != b"null"
    place = _PLACE[outcome_column(code)]
    return target_name or NO_TARGET, place, int(pending) if counted else 0


# Requests of one row: (client, target), the place of their column, how many,
# the messages each counts, the latest time.
_Entry = tuple[tuple[str, str], int, int, int, str]


def _tally(rows: dict[tuple[str, str], _Counts], entries: Iterable[_Entry]) -> None:
    # Spelled out for speed (~300k entries): a literal of the 7 ROW_COLUMNS, no max().
    for key, place, requests, messages, last_seen in entries:
        counts = rows.get(key)
        if counts is None:
            counts = rows[key] = [0, 0, 0, 0, 0, 0, last_seen]
        counts[_REQUESTS] += requests
        counts[place] += requests
        counts[_MESSAGES] += messages * requests
        if last_seen > counts[_LAST_SEEN]:  # noqa: PLR1730
            counts[_LAST_SEEN] = last_seen


@dataclass(slots=True)
class _Part:
    """What one process found in the pieces it read (pieces by their number)."""

    rows: dict[tuple[str, str], _Counts] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)
    malformed: int = 0
    first_malformed: dict[int, int] = field(default_factory=dict)  # its line in the piece
    unreadable: dict[int, str] = field(default_factory=dict)


class _Reader:
    """Reads pieces into one _Part: fast-path lines counted per (client, span) in
    bulk, any other line parsed and checked by the slow path."""

    def __init__(self, query: Query) -> None:
        self.matcher = _Matcher(query)
        self.prefilter = _LinePrefilter(query)
        self.since = None if query.since is None else query.since.encode("ascii", "replace")
        self.until = None if query.until is None else query.until.encode("ascii", "replace")
        # Fast-path ETRN records: how often each (client, span) occurred, and its
        # latest time; ``latest``: the latest time of any.
        self.counts: Counter[tuple[bytes, bytes]] = Counter()
        self.last_seen: dict[tuple[bytes, bytes], bytes] = {}
        self.latest = b""
        self.part = _Part()

    def read(self, number: int, piece: Piece) -> None:
        lines = 0
        try:
            for data in piece.blocks():
                lines += self._read_block(number, Block(piece.path, lines + 1, data))
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            self.part.unreadable[number] = f"{piece.path}: {exc}"
        self.part.lines[number] = lines

    def _read_block(self, number: int, block: Block) -> int:
        """Counts the block's records; returns how many lines it has."""
        kept = self.prefilter.apply(block.data)
        rows = _LAYOUT.findall(kept, 0, len(kept) - 1)  # not the empty line after the last
        lines = len(rows) if kept is block.data else block.data.count(b"\n")
        if not all(map(_SPAN_OF, rows)):
            for row in rows:
                if not row[2]:
                    self._slow_path(number, block, row[3])
            rows = list(filter(_SPAN_OF, rows))
        if self.since is not None:
            rows = list(compress(rows, map(self.since.__le__, map(_ROW_TS, rows))))
        if self.until is not None:
            rows = list(compress(rows, map(self.until.__gt__, map(_ROW_TS, rows))))
        keys = list(map(_KEY, rows))
        self.counts.update(keys)
        stamps = list(map(_ROW_TS, rows))
        if not stamps:
            return lines
        if stamps[0] >= self.latest and all(map(le, stamps, islice(stamps, 1, None))):
            # In time order, as the writer writes: each record is the latest of its key.
            self.last_seen.update(zip(keys, stamps, strict=True))
            self.latest = stamps[-1]
            return lines
        # A clock set back, files out of order, a hostile line: the latest by value.
        last_seen = self.last_seen
        for key, stamp in zip(keys, stamps, strict=True):
            if stamp >= last_seen.get(key, stamp):
                last_seen[key] = stamp
        self.latest = max(self.latest, *stamps)
        return lines

    def _slow_path(self, number: int, block: Block, line: bytes) -> None:
        """A line the fast path did not recognise: parsed and checked in full."""
        if not line.strip():
            return
        try:
            record = _well_formed(json.loads(line))
        except (ValueError, RecursionError):  # not JSON or UTF-8; too deep; a number too long
            record = None
        if record is None:
            self.part.malformed += 1
            if number not in self.part.first_malformed:
                self.part.first_malformed[number] = block.line_number(line)
        elif record["event"] in SUMMARISED_EVENTS and self.matcher.matches(record):
            self._add_record(record)

    def _add_record(self, record: dict[str, Any]) -> None:
        if record["event"] == "etrn":
            reply = record["reply"]
            key = (record["client_ip"], record["target"] or NO_TARGET)
            counted = 200 <= reply < 300 and not record["coalesced"]
        else:  # an administrator's etrn-bridge flush
            reply = 250 if record["ok"] else 458
            key = (f"admin:{record['user'] or '?'}", record["target"])
            counted = record["ok"]
        messages = (record["pending"] or 0) if counted else 0
        place = _PLACE[outcome_column(reply)]
        _tally(self.part.rows, [(key, place, 1, messages, record["ts"])])

    def finish(self) -> _Part:
        """The fast path's (client, span) counts added as rows (a tight loop: ~300k pairs)."""
        # Distinct spans and clients are far fewer than their pairs: judge each once.
        spans = {span: _span_facts(span, self.matcher) for span in {s for _, s in self.counts}}
        clients: dict[bytes, str | None] = {}
        for client in {client for client, _ in self.counts}:
            ip = client.decode("ascii")
            clients[client] = ip if self.matcher.client_matches(ip) else None
        _tally(self.part.rows, self._fast_entries(spans, clients))
        return self.part

    def _fast_entries(
        self, spans: dict[bytes, _SpanFacts], clients: dict[bytes, str | None]
    ) -> Iterator[_Entry]:
        # Both dicts got their keys in one order, from the same lists (the same
        # objects, as the assert checks): zipped, not looked up (0.1 s less in a
        # million lines).
        pairs = zip(self.counts.items(), self.last_seen.items(), strict=True)
        for ((client, span), requests), (pair, seen) in pairs:
            assert pair[1] is span and pair[0] is client
            facts, address = spans[span], clients[client]
            if facts is not None and address is not None:
                target, place, messages = facts
                yield (address, target), place, requests, messages, seen.decode("ascii")


def summarise(files: Iterable[Path], query: Query, workers: int = 1) -> Summary:
    """The rows of ``files`` (oldest first) that ``query`` selects, read by up to
    ``workers`` processes (more than one only for PARALLEL_BYTES or more). The
    others are forked: a caller with threads (a server) keeps ``workers`` at 1."""
    unreadable: dict[int, str] = {}
    with collector_paused():
        pieces = _pieces(list(files), unreadable)
        try:
            parts = _read(pieces, query, workers)
        finally:
            for descriptor in {p.descriptor for p in pieces if p.descriptor is not None}:
                os.close(descriptor)
        return _summary(pieces, parts, unreadable)


def default_workers() -> int:
    """The CPUs this process may use (Linux; elsewhere the machine's), at most MAX_WORKERS."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(len(usable) if usable else os.cpu_count() or 1, MAX_WORKERS))


def _read(pieces: list[Piece], query: Query, workers: int) -> list[_Part]:
    """Every piece read once, by this process and ``workers - 1`` forked ones; each
    takes the next piece in order (oldest first, as the writer wrote) when it is
    done with one."""
    workers = min(workers, len(pieces))
    if workers < 2 or sum(piece.size for piece in pieces) < PARALLEL_BYTES:
        reader = _Reader(query)
        for number, piece in enumerate(pieces):
            reader.read(number, piece)
        return [reader.finish()]
    # fork: the children start with the pieces, the query and the open descriptors.
    context = multiprocessing.get_context("fork")
    taken = context.Value("q", 0)  # pieces handed out so far

    def read_taken() -> _Part:
        reader = _Reader(query)
        while True:
            with taken.get_lock():
                place = taken.value
                taken.value = place + 1
            if place >= len(pieces):
                return reader.finish()
            reader.read(place, pieces[place])

    def child(connection: Connection) -> None:
        connection.send(read_taken())

    children: list[tuple[ForkProcess, Connection]] = []
    try:
        for _ in range(workers - 1):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=child, args=(sender,), daemon=True)
            process.start()
            sender.close()
            children.append((process, receiver))
        parts = [read_taken()]
        for process, receiver in children:
            try:
                parts.append(receiver.recv())
            except EOFError:
                process.join()
                raise RuntimeError(
                    f"an audit reading process ended with status {process.exitcode}"
                ) from None
    finally:
        for process, receiver in children:
            receiver.close()
            if process.is_alive():
                process.terminate()
            process.join()
    return parts


def _summary(pieces: list[Piece], parts: list[_Part], unreadable: dict[int, str]) -> Summary:
    """The parts merged: rows added up, lines and errors placed in their files."""
    rows = parts[0].rows
    for part in parts[1:]:
        for key, counts in part.rows.items():
            mine = rows.get(key)
            if mine is None:
                rows[key] = counts
                continue
            for place in range(_LAST_SEEN):
                mine[place] += counts[place]
            mine[_LAST_SEEN] = max(mine[_LAST_SEEN], counts[_LAST_SEEN])
    # tuple.__new__ is what Row._make calls, less a Python call per row (200k).
    as_row = partial(tuple.__new__, Row)
    summary = Summary(rows=dict(zip(rows, map(as_row, rows.values()), strict=True)))
    summary.matched = sum(counts[_REQUESTS] for counts in rows.values())
    lines: dict[int, int] = {}
    first_malformed: dict[int, int] = {}
    read_errors: dict[int, str] = {}
    for part in parts:
        lines.update(part.lines)
        first_malformed.update(part.first_malformed)
        read_errors.update(part.unreadable)
        summary.malformed.count += part.malformed
    summary.lines = sum(lines.values())
    before = 0  # lines of the file in the pieces before this one
    for number, piece in enumerate(pieces):
        if number == 0 or pieces[number - 1].file != piece.file:
            before = 0
        if number in first_malformed and summary.malformed.first is None:
            summary.malformed.first = f"{piece.path}:{before + first_malformed[number]}"
        if number in read_errors:
            unreadable.setdefault(piece.file, read_errors[number])
        before += lines.get(number, 0)
    summary.unreadable = [unreadable[file] for file in sorted(unreadable)]
    return summary
