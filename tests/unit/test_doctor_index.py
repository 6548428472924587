"""doctor's line about the queue index: writable directory, readable file, freshness."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from etrn_bridge.backends.mta import Level
from etrn_bridge.cli.doctor import check_index
from etrn_bridge.queueindex.settings import IndexSettings
from etrn_bridge.queueindex.store import QueueIndex

ME = pwd.getpwuid(os.geteuid()).pw_name


def settings(path: Path) -> IndexSettings:
    return IndexSettings(path, 300.0)


def test_missing_directory_is_to_fix(tmp_path: Path) -> None:
    finding = check_index(settings(tmp_path / "nowhere" / "index.sqlite"), ME)
    assert finding.level is Level.FIX and "nowhere" in finding.text


def test_directory_of_someone_else_is_to_fix(tmp_path: Path) -> None:
    finding = check_index(settings(tmp_path / "index.sqlite"), "nobody")
    assert finding.level is Level.FIX and "install -d -o nobody" in finding.text
    assert check_index(settings(tmp_path / "i"), "no-such-user-x").level is Level.FIX


def test_new_and_existing_index(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    assert check_index(settings(path), ME).text.endswith("will be created by serve")
    index = QueueIndex(path)
    index.record("A1", ["user@customer.test"], 1)
    index.close()
    finding = check_index(settings(path), ME)
    assert finding.level is Level.OK and "1 messages, never reconciled" in finding.text


def test_unreadable_file_is_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"not sqlite" * 200)
    finding = check_index(settings(path), ME)
    assert finding.level is Level.FIX and "remove it" in finding.text
