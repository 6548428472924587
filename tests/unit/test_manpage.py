"""The man page renders cleanly and names every subcommand and top-level key."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from etrn_bridge.cli import SUBCOMMANDS
from etrn_bridge.schema import config_schema

MAN_PAGE = Path(__file__).parents[2] / "docs" / "etrn-bridge.8"


def test_groff_renders_it_without_warnings() -> None:
    groff = shutil.which("groff")
    assert groff, "groff is needed (Debian: groff-base, scripts/install-system-deps.sh)"
    done = subprocess.run(
        [groff, "-t", "-man", "-Tutf8", "-ww", "-z", str(MAN_PAGE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_every_subcommand_and_top_level_key_is_documented() -> None:
    text = MAN_PAGE.read_text()
    for name in SUBCOMMANDS:
        assert re.search(rf"^\.B etrn-bridge {name}$", text, re.MULTILINE), name
        assert re.search(rf"^\.B {name}$", text, re.MULTILINE), name  # in COMMANDS
    for key in config_schema()["properties"]:
        assert f".BR {key} " in text or f".BR {key} ." in text, key
