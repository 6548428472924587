"""The audit file on a really full disk holds only whole lines, and no record is lost (issue 7.4).

A 64 KiB tmpfs is mounted for the test (root only: as a normal user it is
skipped, saying so; CI runs as root, where it must run).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from etrn_bridge.audit import AuditLog

TMPFS_SIZE = "64k"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("NOT TESTED: mounting a small tmpfs for the full-disk audit test needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk_leaves_whole_lines_and_loses_no_record(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(7)
    # Room the audit file cannot use until it is deleted, to free space later.
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * 16384)
    audit = AuditLog(small_disk / "audit.jsonl")
    sent = []
    for seq in range(150):
        if seq == 100:
            filler.unlink()  # space again: the next records must start on a line of their own
        record = {"seq": seq, "pad": "p" * rng.randrange(300, 1500)}
        sent.append(record)
        audit.write(record)
    audit.close()

    lines = (small_disk / "audit.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends in the middle of a line"
    in_file = [json.loads(line) for line in lines[:-1]]  # raises on a cut or glued line
    logged = [
        json.loads(r.getMessage().split("): ", 1)[1])
        for r in caplog.records
        if r.getMessage().startswith("audit: cannot write")
    ]
    assert logged, "the disk never filled up: the test proves nothing"
    assert any(r["seq"] > 100 for r in in_file), "no record written after space was freed"
    assert sorted(in_file + logged, key=lambda r: r["seq"]) == sent
