"""``check`` and ``doctor`` refuse a command backend whose program cannot run (issue 7.8)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bridgekit import BASE_CONFIG, merge_config, write_config


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etrn_bridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def command_config(tmp_path: Path, program: Path) -> Path:
    backend = {"type": "command", "argv": [str(program), "{etrn}"]}
    return write_config(tmp_path, merge_config(BASE_CONFIG, {"backend": backend}))


def not_executable(tmp_path: Path) -> Path:
    program = tmp_path / "flush.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o644)
    return program


@pytest.mark.parametrize(
    ("make_program", "says"),
    [
        (lambda tmp: tmp / "no-such-program", "does not exist"),
        (not_executable, "is not executable"),
        (lambda tmp: tmp, "does not exist"),  # a directory
    ],
    ids=["missing", "not-executable", "directory"],
)
@pytest.mark.parametrize("subcommand", ["check", "doctor"])
def test_unrunnable_command_program_fails(
    tmp_path: Path, make_program: Callable[[Path], Path], says: str, subcommand: str
) -> None:
    config = command_config(tmp_path, make_program(tmp_path))
    result = run_cli(subcommand, "-c", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert says in result.stdout


@pytest.mark.parametrize("subcommand", ["check", "doctor"])
def test_runnable_command_program_passes(tmp_path: Path, subcommand: str) -> None:
    program = not_executable(tmp_path)
    program.chmod(0o755)
    result = run_cli(subcommand, "-c", str(command_config(tmp_path, program)))
    assert result.returncode == 0, result.stdout + result.stderr
