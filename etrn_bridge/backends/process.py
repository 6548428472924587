"""Running MTA programs: argv only (never a shell), bounded time, captured output.

Every backend that calls a program goes through here, so the rules hold in one
place: the target reaches a program as whole argv elements, the environment is
not inherited beyond a fixed minimum, and a hung program is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

# Enough for queue listings of tens of thousands of messages; more is cut.
MAX_CAPTURE_BYTES = 64 * 1024 * 1024
# What a program's stderr may contribute to an audit record.
MAX_DETAIL_CHARS = 500
# A fixed, minimal environment: the client can influence none of it.
SAFE_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C",
    "LC_ALL": "C",
}


@dataclass(frozen=True, slots=True)
class ProgramResult:
    argv: tuple[str, ...]
    exit_status: int | None  # None: it never ran or was killed
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    error: str = ""  # why it could not run (missing program, permission)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out and not self.error

    def detail(self) -> str:
        """One-line summary for the audit: the program's own words."""
        if self.error:
            return self.error
        if self.timed_out:
            return "timed out"
        # Both streams: Sendmail, for one, says why it failed partly on stdout.
        text = b"\n".join((self.stderr, self.stdout)).decode("utf-8", "replace")
        return " | ".join(line for line in text.splitlines() if line.strip())[:MAX_DETAIL_CHARS]


def program_environment() -> dict[str, str]:
    env = dict(SAFE_ENVIRONMENT)
    # Lab and non-standard installs point MTA wrappers at their libraries.
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


async def start_program(argv: Sequence[str]) -> asyncio.subprocess.Process:
    """Start a program with no shell, stdin closed, output captured."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=program_environment(),
        start_new_session=True,  # so a timeout can kill the whole process group
    )


async def run_program(argv: Sequence[str], timeout: float) -> ProgramResult:
    """Run to completion within ``timeout`` seconds; never raises for program failures."""
    args = tuple(argv)
    try:
        process = await start_program(args)
    except OSError as exc:
        return ProgramResult(args, None, error=f"cannot run {args[0]}: {exc.strerror or exc}")
    return await wait_program(process, args, timeout)


async def wait_program(
    process: asyncio.subprocess.Process, argv: tuple[str, ...], timeout: float
) -> ProgramResult:
    """Collect a started program's exit and output, killing it after ``timeout`` seconds."""
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        return ProgramResult(argv, None, timed_out=True)
    except asyncio.CancelledError:
        _kill_group(process)
        raise
    return ProgramResult(
        argv, process.returncode, stdout[:MAX_CAPTURE_BYTES], stderr[:MAX_CAPTURE_BYTES]
    )


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
