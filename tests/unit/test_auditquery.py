"""The audit summary over real files: rotation order, gzip, filters, hostile lines,
and the bulk fast path checked against a plain json.loads reading of the same lines."""

from __future__ import annotations

import gzip
import json
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
    rows = auditquery._LAYOUT.findall(data)
    assert len(rows) == len(records)
    assert [row[3] for row in rows] == [b""] * len(records)


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
