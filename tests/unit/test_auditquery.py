"""The audit summary over real files: rotation order, gzip, filters, hostile lines,
and the bulk fast path checked against a plain json.loads reading of the same lines."""

from __future__ import annotations

import gzip
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etrn_bridge import auditquery
from etrn_bridge.audit import AuditLog, flush_record, request_record
from etrn_bridge.auditquery import Query, QueryError, audit_files, parse_network, parse_time
from etrn_bridge.replies import reply_for
from etrn_bridge.request import Decision, FlushResult, Identity, Outcome, Request, Status
from etrn_bridge.target import parse_target

ALLOW = Decision(True, "acme", "allowed")
DENY = Decision(False, None, "no entry allows this target")


def etrn(
    client: str = "127.0.0.1",
    argument: str = "acme.example",
    status: Status = Status.PENDING_STARTED,
    *,
    pending: int | None = 2,
    coalesced: bool = False,
    helo: str = "client.test",
    ts: str | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, Any]:
    """A record exactly as the service writes it."""
    request = Request(Identity(client, 40000, helo=helo), argument, session_id="s1")
    if status in (Status.MISSING_ARGUMENT, Status.BAD_ARGUMENT):
        outcome = Outcome(status, reason="bad")
    else:
        target = parse_target(argument)
        decision = DENY if status is Status.DENIED else ALLOW
        flush = None
        if status in (Status.PENDING_STARTED, Status.NOTHING_WAITING, Status.FAILED):
            ids = tuple(f"Q{i}" for i in range(pending or 0))
            flush = FlushResult(status is not Status.FAILED, pending=pending, queue_ids=ids)
        outcome = Outcome(
            status,
            target,
            decision,
            reason=decision.reason,
            backend="log" if flush else None,
            flush=flush,
            coalesced=coalesced,
            extra=extra or {},
        )
    record = request_record(request, outcome, reply_for(outcome))
    if ts is not None:
        record["ts"] = ts
    return record


def write(path: Path, records: list[dict[str, Any] | bytes]) -> Path:
    """Records through the audit writer itself; raw bytes lines as they are."""
    log = AuditLog(path)
    for record in records:
        if isinstance(record, bytes):
            with path.open("ab") as raw:
                raw.write(record + b"\n")
        else:
            log.write(record)
    log.close()
    return path


def gzip_file(path: Path, records: list[dict[str, Any] | bytes]) -> Path:
    plain = write(path.with_suffix(".tmp"), records)
    with gzip.open(path, "wb") as out:
        out.write(plain.read_bytes())
    plain.unlink()
    return path


def summary_rows(files: list[Path], query: Query | None = None) -> dict[tuple[str, str], tuple]:
    summary = auditquery.summarise(files, query or Query())
    return {key: tuple(row) for key, row in summary.rows.items()}


# The reference: every line through json.loads, counted the simple way.
def reference(lines: list[bytes]) -> tuple[dict[tuple[str, str], list[Any]], int]:
    rows: dict[tuple[str, str], list[Any]] = {}
    malformed = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            malformed += 1
            continue
        ok = isinstance(record, dict) and record.get("event") == "etrn"
        ok = ok and isinstance(record.get("ts"), str) and isinstance(record.get("client_ip"), str)
        ok = (
            ok
            and isinstance(record.get("status"), str)
            and isinstance(record.get("rule"), str | None)
        )
        ok = ok and isinstance(record.get("target"), str | None)
        ok = ok and type(record.get("reply")) is int and type(record.get("coalesced")) is bool
        ok = ok and (record.get("pending") is None or type(record.get("pending")) is int)
        if not ok:
            if not (
                isinstance(record, dict)
                and isinstance(record.get("event"), str)
                and record["event"] != "etrn"
                and isinstance(record.get("ts"), str)
            ):
                malformed += 1
            continue
        row = rows.setdefault((record["client_ip"], record["target"] or "-"), [0] * 6 + [""])
        reply = record["reply"]
        row[0] += 1
        column = 1 if 200 <= reply < 300 else 2 if reply == 459 else 3 if reply == 458 else 4
        row[column] += 1
        if column == 1 and not record["coalesced"] and record["pending"]:
            row[5] += record["pending"]
        row[6] = max(row[6], record["ts"])
    return rows, malformed


HOSTILE_LINES = [
    b"",
    b"not json at all",
    b'{"ts":"2026-11-29T10:00:00.000Z","event":"etrn","session":"s',  # cut short
    b"[1, 2, 3]",
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
    b'{"ts":"2026-11-29T10:00:00.000Z","event":"etrn","pending":' + b"9" * 5000 + b"}",
    b'{"ts":"2026-11-29T10:00:00.000Z","event":"etrn","client_ip":"\xff\xfe"}',  # not UTF-8
    b'{"ts":"x","event":"etrn","client_ip":"127.0.0.9","target":null,"rule":null,'
    b'"status":"denied","reply":"459","pending":null,"coalesced":false}',  # reply a string
]


def hostile_variants() -> list[bytes]:
    """Lines in the writer's layout, each broken in one way json.loads notices."""
    good = json.dumps(etrn(), separators=(",", ":")).encode()
    return [
        good[:-1],  # no closing brace
        good + good,  # two records glued (a short write)
        good.replace(b'"client_port":40000', b'"client_port":040000'),  # leading zero
        good.replace(b'"helo":"client.test"', b'"helo":"bad\\qescape"'),
        good.replace(b'"helo":"client.test"', b'"helo":"raw\x01control"'),
        good.replace(b'"tls":false', b'"tls":False'),
        good[:-1] + b',"reply":459}',  # a repeated key: json.loads takes the last
        good[:-1] + b',"nested":{"a":1}}',  # valid JSON the fast path leaves to json.loads
        good.replace(b'"pending":2', b'"pending":true'),  # a bool is not a count
        # The members after "pending", which the layout names one by one.
        good.replace(b'"queue_ids":["Q0","Q1"]', b'"queue_ids":["Q0","Q1",]'),
        good.replace(b'"queue_ids":["Q0","Q1"]', b'"queue_ids":["Q0",1]'),  # valid JSON
        good.replace(b'"duration_ms":0.0', b'"duration_ms":00'),
        good.replace(b'"duration_ms":0.0', b'"duration_ms":1e5'),  # valid JSON
        good.replace(b'"cut":false', b'"cut":nope'),
        good.replace(b'"selected_from":null,', b""),  # a member missing: valid JSON
        good.replace(b'"detail":null', b'"detail":"a\\u2028b"'),  # valid JSON
        good[:-1] + b',"cut":true}',  # repeated: valid JSON, json.loads takes the last
    ]


def test_writer_records_take_the_fast_path() -> None:
    # If the writer's layout changes, this fails: update auditquery._etrn_layout.
    records = [
        etrn(),
        etrn(status=Status.DENIED),
        etrn(status=Status.FAILED, pending=None),
        etrn(argument="", status=Status.MISSING_ARGUMENT),
        etrn(argument="bad..x", status=Status.BAD_ARGUMENT),
        etrn(helo='evil"\\\x1b[2J\u2028é', coalesced=True),
        etrn(extra={"rdns": ["a.example", "b.example"]}),
    ]
    data = b"".join(
        json.dumps(r, ensure_ascii=True, separators=(",", ":")).encode() + b"\n" for r in records
    )
    rows = auditquery._LAYOUT.findall(data, 0, len(data) - 1)
    assert len(rows) == len(records)
    assert [row[3] for row in rows] == [b""] * len(records)
    assert all(row[2].startswith(b'"target":') for row in rows)


def test_fast_path_equals_json_loads_reading(tmp_path: Path) -> None:
    records: list[dict[str, Any] | bytes] = []
    for i in range(300):
        status = [
            Status.PENDING_STARTED,
            Status.DENIED,
            Status.NOTHING_WAITING,
            Status.FAILED,
            Status.RATE_LIMITED,
        ][i % 5]
        records.append(
            etrn(
                f"127.0.{i % 7}.1",
                f"c{i % 11}.example",
                status,
                pending=i % 4,
                coalesced=i % 3 == 0,
                ts=f"2026-11-29T10:{i // 60:02d}:{i % 60:02d}.000Z",
            )
        )
    records += [etrn(argument="", status=Status.MISSING_ARGUMENT)]
    records += [
        flush_record("flush_completed", parse_target("c1.example"), "exim", FlushResult(True))
    ]
    records += HOSTILE_LINES + hostile_variants()
    path = write(tmp_path / "audit.jsonl", records)

    summary = auditquery.summarise([path], Query())
    expected_rows, expected_malformed = reference(path.read_bytes().split(b"\n"))

    assert {k: list(r) for k, r in summary.rows.items()} == expected_rows
    assert summary.malformed.count == expected_malformed
    assert summary.malformed.count >= len(HOSTILE_LINES) - 1  # all but the empty line
    # The repeated key counts as json.loads reads it: a denied request.
    assert summary.rows["127.0.0.1", "acme.example"].denied == 1


def test_block_boundaries_do_not_change_anything(tmp_path: Path, monkeypatch) -> None:
    records = [etrn(f"127.0.0.{i % 5 + 1}", f"c{i % 3}.example") for i in range(200)]
    path = write(tmp_path / "audit.jsonl", [*records, b"garbage", *records])
    whole = auditquery.summarise([path], Query())
    monkeypatch.setattr(auditquery, "BLOCK_BYTES", 97)  # shorter than one line
    cut = auditquery.summarise([path], Query())
    assert {k: tuple(r) for k, r in cut.rows.items()} == {
        k: tuple(r) for k, r in whole.rows.items()
    }
    assert cut.lines == whole.lines == 401
    assert cut.malformed.first == whole.malformed.first == f"{path}:201"


def test_rotated_files_oldest_first_with_and_without_dateext(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, [etrn(ts="2026-11-29T00:00:00.000Z")])
    write(tmp_path / "audit.jsonl.1", [etrn(ts="2026-11-28T00:00:00.000Z")])
    gzip_file(tmp_path / "audit.jsonl.2.gz", [etrn(ts="2026-11-27T00:00:00.000Z")])
    gzip_file(tmp_path / "audit.jsonl.10.gz", [etrn(ts="2026-11-19T00:00:00.000Z")])
    gzip_file(tmp_path / "audit.jsonl-20261101.gz", [etrn(ts="2026-11-01T00:00:00.000Z")])
    write(tmp_path / "audit.jsonl-20261102", [etrn(ts="2026-11-02T00:00:00.000Z")])
    for unrelated in ("audit.jsonl.bak", "audit.jsonl.1.xz", "audit.jsonlx", "other.jsonl.1"):
        write(tmp_path / unrelated, [etrn(client="127.9.9.9")])

    files = audit_files(live)

    assert [f.name for f in files] == [
        "audit.jsonl-20261101.gz",
        "audit.jsonl-20261102",
        "audit.jsonl.10.gz",
        "audit.jsonl.2.gz",
        "audit.jsonl.1",
        "audit.jsonl",
    ]
    rows = summary_rows(files)
    assert list(rows) == [("127.0.0.1", "acme.example")]
    assert rows["127.0.0.1", "acme.example"] == (6, 6, 0, 0, 0, 12, "2026-11-29T00:00:00.000Z")


def test_a_truncated_gz_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    live = write(tmp_path / "audit.jsonl", [etrn()])
    broken = gzip_file(tmp_path / "audit.jsonl.1.gz", [etrn()] * 50)
    broken.write_bytes(broken.read_bytes()[:-20])
    summary = auditquery.summarise(audit_files(live), Query())
    assert summary.unreadable and str(broken) in summary.unreadable[0]
    assert summary.rows["127.0.0.1", "acme.example"].requests >= 1


def test_filters(tmp_path: Path) -> None:
    path = write(
        tmp_path / "audit.jsonl",
        [
            etrn("127.0.0.1", ts="2026-11-28T23:59:59.999Z"),
            etrn("127.0.0.1", ts="2026-11-29T00:00:00.000Z"),
            etrn("127.0.1.7", "other.example", Status.DENIED, ts="2026-11-29T12:00:00.000Z"),
            etrn("::1", "acme.example", Status.RATE_LIMITED, ts="2026-11-29T13:00:00.000Z"),
            etrn("::ffff:127.0.0.2", ts="2026-11-30T00:00:00.000Z"),
            etrn("0:0:0:0:0:ffff:7f00:3", ts="2026-11-30T00:00:00.000Z"),
        ],
    )

    def rows(**filters: Any) -> list[tuple[str, str]]:
        return sorted(summary_rows([path], Query(**filters)))

    day = {"since": "2026-11-29T00:00:00.000Z", "until": "2026-11-30T00:00:00.000Z"}
    assert rows(**day) == [
        ("127.0.0.1", "acme.example"),
        ("127.0.1.7", "other.example"),
        ("::1", "acme.example"),
    ]
    assert summary_rows([path], Query(**day))["127.0.0.1", "acme.example"][0] == 1
    assert rows(networks=(parse_network("127.0.1.0/24"),)) == [("127.0.1.7", "other.example")]
    assert rows(networks=(parse_network("::1"),)) == [("::1", "acme.example")]
    # An IPv4-mapped client is the IPv4 address, as the policy sees it.
    assert rows(networks=(parse_network("127.0.0.2/32"),)) == [("::ffff:127.0.0.2", "acme.example")]
    assert rows(networks=(parse_network("127.0.0.0/30"),)) == [
        ("0:0:0:0:0:ffff:7f00:3", "acme.example"),
        ("127.0.0.1", "acme.example"),
        ("::ffff:127.0.0.2", "acme.example"),
    ]
    assert ("127.0.0.1", "acme.example") in rows(networks=(parse_network("::ffff:127.0.0.0/120"),))
    assert rows(statuses=frozenset({"denied", "rate_limited"})) == [
        ("127.0.1.7", "other.example"),
        ("::1", "acme.example"),
    ]
    assert rows(rules=frozenset({"-"})) == [("127.0.1.7", "other.example")]
    assert rows(targets=frozenset({"other.example"})) == [("127.0.1.7", "other.example")]
    assert rows(targets=frozenset({"nothing.example"})) == []


def test_admin_flushes_are_rows_unless_etrn_filters_are_given(tmp_path: Path) -> None:
    target = parse_target("acme.example")
    admin = flush_record("admin_flush", target, "log", FlushResult(True, pending=5), user="ops")
    path = write(tmp_path / "audit.jsonl", [etrn(), admin])
    assert summary_rows([path])["admin:ops", "acme.example"] == (1, 1, 0, 0, 0, 5, admin["ts"])
    assert ("admin:ops", "acme.example") not in summary_rows(
        [path], Query(statuses=frozenset({"pending_started"}))
    )


def test_coalesced_replies_do_not_count_messages_twice(tmp_path: Path) -> None:
    path = write(
        tmp_path / "audit.jsonl",
        [etrn(pending=4), etrn(pending=4, coalesced=True), etrn(pending=4, coalesced=True)],
    )
    assert summary_rows([path])["127.0.0.1", "acme.example"][:6] == (3, 3, 0, 0, 0, 4)


def test_parse_time() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_time("24h", now) == "2026-11-28T12:00:00.000Z"
    assert parse_time("7d", now) == "2026-11-22T12:00:00.000Z"
    assert parse_time("90m", now) == "2026-11-29T10:30:00.000Z"
    assert parse_time("2026-11-28", now) == "2026-11-28T00:00:00.000Z"
    assert parse_time("2026-11-28T10:00:00+02:00", now) == "2026-11-28T08:00:00.000Z"
    assert parse_time("2026-11-28T10:00:00Z", now) == "2026-11-28T10:00:00.000Z"
    for bad in ("yesterday", "24", "-1h", "99999999999d", "2026-13-01"):
        with pytest.raises(QueryError):
            parse_time(bad, now)
    with pytest.raises(QueryError):
        parse_network("127.0.0.300/8")


@pytest.mark.parametrize(
    "query",
    [
        Query(since="2026-11-29T10:01:00.000Z", until="2026-11-29T10:03:30.000Z"),
        Query(targets=frozenset({"c1.example", "c3.example"})),
        Query(statuses=frozenset({"denied", "failed"})),
        Query(networks=(parse_network("127.0.3.0/24"), parse_network("127.0.4.1/32"))),
        Query(networks=(parse_network("127.0.0.0/20"),), rules=frozenset({"-"})),
    ],
    ids=["time", "targets", "statuses", "networks", "network-and-rule"],
)
def test_raw_line_prefilter_changes_nothing_but_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: Query
) -> None:
    records: list[dict[str, Any] | bytes] = [
        etrn(
            f"127.0.{i % 7}.1" if i % 5 else f"::ffff:127.0.{i % 7}.1",
            f"c{i % 5}.example",
            [Status.PENDING_STARTED, Status.DENIED, Status.FAILED][i % 3],
            ts=f"2026-11-29T10:0{i // 60}:{i % 60:02d}.000Z",
        )
        for i in range(300)
    ]
    path = write(tmp_path / "audit.jsonl", [*records, *hostile_variants()])
    filtered = auditquery.summarise([path], query)
    monkeypatch.setattr(auditquery._LinePrefilter, "apply", lambda self, data: data)
    unfiltered = auditquery.summarise([path], query)
    assert filtered.matched == unfiltered.matched > 0
    assert {k: tuple(r) for k, r in filtered.rows.items()} == {
        k: tuple(r) for k, r in unfiltered.rows.items()
    }


def test_the_first_malformed_line_is_named_by_its_own_number(tmp_path: Path) -> None:
    # The malformed line also occurs inside the record before it.
    path = write(tmp_path / "audit.jsonl", [etrn(), b'"acme.example"', b"null"])
    summary = auditquery.summarise([path], Query())
    assert summary.malformed.count == 2
    assert summary.malformed.first == f"{path}:2"


def trail_in_pieces(tmp_path: Path) -> list[Path]:
    """Three rotated files with hostile lines spread through them, a truncated .gz,
    a line longer than the blocks, and a live file whose last line is unfinished."""
    records: list[dict[str, Any] | bytes] = [
        etrn(
            f"127.0.{i % 7}.1",
            f"c{i % 5}.example",
            [Status.PENDING_STARTED, Status.DENIED, Status.FAILED][i % 3],
            pending=i % 4,
            coalesced=i % 6 == 0,
            ts=f"2026-11-29T10:{i // 60:02d}:{i % 60:02d}.000Z",
        )
        for i in range(120)
    ]
    hostile = [*HOSTILE_LINES[1:4], *hostile_variants()]
    mixed: list[dict[str, Any] | bytes] = []
    for number, record in enumerate(records):
        mixed.append(record)
        if number % 6 == 5:
            mixed.append(hostile[number // 6 % len(hostile)])
    long = etrn(helo="h" * 3000, ts="2026-11-29T11:00:00.000Z")
    live = write(tmp_path / "audit.jsonl", [*mixed[:40], long, *mixed[40:80]])
    with live.open("ab") as unfinished:
        unfinished.write(json.dumps(etrn(ts="2026-11-29T12:00:00.000Z")).encode()[:-9])
    write(tmp_path / "audit.jsonl.1", [*mixed[80:], b"", *mixed[:30]])
    gzip_file(tmp_path / "audit.jsonl.2.gz", mixed[30:100])
    broken = gzip_file(tmp_path / "audit.jsonl.3.gz", mixed[:60])
    broken.write_bytes(broken.read_bytes()[:-30])
    return audit_files(live)


def everything(summary: auditquery.Summary) -> tuple[object, ...]:
    rows = {key: tuple(row) for key, row in summary.rows.items()}
    malformed = (summary.malformed.count, summary.malformed.first)
    return rows, summary.lines, summary.matched, malformed, summary.unreadable


@pytest.mark.parametrize("query", [Query(), Query(statuses=frozenset({"denied", "failed"}))])
def test_files_read_in_ranges_and_processes_count_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: Query
) -> None:
    files = trail_in_pieces(tmp_path)
    monkeypatch.setattr(auditquery, "BLOCK_BYTES", 700)  # some lines are longer
    whole = auditquery.summarise(files, query)  # one piece per file: how it was always read
    assert len(auditquery._pieces(files, {})) == len(files)
    assert whole.matched > 0 and whole.malformed.count > 5 and len(whole.unreadable) == 1
    monkeypatch.setattr(auditquery, "PARALLEL_BYTES", 0)
    # Ranges that end on every kind of byte, shorter than a line, about a line, many lines.
    for piece_bytes in (7, 97, 613, 4000):
        monkeypatch.setattr(auditquery, "PIECE_BYTES", piece_bytes)
        assert len(auditquery._pieces(files, {})) > len(files)
        for workers in (1, 2):
            assert everything(auditquery.summarise(files, query, workers)) == everything(whole), (
                piece_bytes,
                workers,
            )


def test_a_malformed_line_in_a_later_range_is_named_by_its_line_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "audit.jsonl.1", [etrn()] * 50)
    live = write(tmp_path / "audit.jsonl", [*[etrn()] * 300, b"garbage", etrn(), b"more"])
    monkeypatch.setattr(auditquery, "PIECE_BYTES", 1000)
    monkeypatch.setattr(auditquery, "PARALLEL_BYTES", 0)
    for workers in (1, 2):
        summary = auditquery.summarise(audit_files(live), Query(), workers)
        assert (summary.malformed.count, summary.malformed.first) == (2, f"{live}:301")
        assert summary.lines == 353


def test_pieces_are_shared_out_among_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "audit.jsonl", [etrn(f"127.0.0.{i % 9 + 1}") for i in range(400)])
    readers = tmp_path / "readers"
    read = auditquery._Reader.read

    def read_slowly(self: auditquery._Reader, number: int, piece: auditquery.Piece) -> None:
        with readers.open("a") as log:  # the file is shared across fork, a list is not
            log.write(f"{os.getpid()}\n")
        time.sleep(0.01)  # so that every process takes some pieces
        read(self, number, piece)

    monkeypatch.setattr(auditquery._Reader, "read", read_slowly)
    monkeypatch.setattr(auditquery, "PIECE_BYTES", 2000)
    monkeypatch.setattr(auditquery, "PARALLEL_BYTES", 0)
    summary = auditquery.summarise([path], Query(), workers=2)
    assert summary.rows["127.0.0.1", "acme.example"].requests == 45
    assert summary.matched == summary.lines == 400
    taken = readers.read_text().split()
    assert len(taken) == len(auditquery._pieces([path], {})) > 2
    assert len(set(taken)) == 2 and str(os.getpid()) in taken


def test_a_reading_process_that_fails_fails_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "audit.jsonl", [etrn()] * 100)
    parent = os.getpid()
    finish = auditquery._Reader.finish

    def finish_or_fail(self: auditquery._Reader) -> auditquery._Part:
        if os.getpid() != parent:
            os._exit(3)  # as if killed: no result comes back
        return finish(self)

    monkeypatch.setattr(auditquery._Reader, "finish", finish_or_fail)
    monkeypatch.setattr(auditquery, "PIECE_BYTES", 1000)
    monkeypatch.setattr(auditquery, "PARALLEL_BYTES", 0)
    with pytest.raises(RuntimeError, match="status 3"):
        auditquery.summarise([path], Query(), workers=2)


def test_last_seen_is_the_latest_time_even_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock set back, or rotated files named out of order: the latest time wins,
    # as json.loads reads it, however the lines fall in blocks, ranges and processes.
    minutes = [7, 3, 9, 1, 8, 2, 9, 0, 5, 4, 6, 3] * 25
    records: list[dict[str, Any] | bytes] = [
        etrn(f"127.0.0.{i % 3 + 1}", f"c{i % 2}.example", ts=f"2026-11-29T10:0{m}:00.{i:03d}Z")
        for i, m in enumerate(minutes)
    ]
    records[100:100] = [etrn("127.0.0.9", ts=""), etrn("127.0.0.9", ts="")]  # any string
    path = write(tmp_path / "audit.jsonl", records)
    expected, _ = reference(path.read_bytes().split(b"\n"))
    monkeypatch.setattr(auditquery, "PARALLEL_BYTES", 0)
    for block_bytes, piece_bytes, workers in (
        (1 << 22, 1 << 25, 1),
        (900, 3000, 1),
        (900, 3000, 2),
    ):
        monkeypatch.setattr(auditquery, "BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(auditquery, "PIECE_BYTES", piece_bytes)
        summary = auditquery.summarise([path], Query(), workers)
        assert {k: list(r) for k, r in summary.rows.items()} == expected


@pytest.mark.parametrize("block_bytes", [1 << 22, 50])
def test_every_line_is_counted_empty_ones_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    monkeypatch.setattr(auditquery, "BLOCK_BYTES", block_bytes)
    path = write(tmp_path / "audit.jsonl", [b"", b"", etrn(), b"", b"", b"", b"\r", b" ", etrn()])
    with path.open("ab") as unfinished:
        unfinished.write(b"\n\n{")
    for query in (Query(), Query(statuses=frozenset({"denied"}))):
        summary = auditquery.summarise([path], query)
        assert summary.lines == path.read_bytes().count(b"\n") + 1
    assert summary.malformed.count == 1  # "{"; the blank ones are skipped, not malformed
    assert auditquery.summarise([path], Query()).matched == 2
