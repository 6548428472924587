"""A minimal asyncio SMTP client for many concurrent ETRN sessions (tests and bench/flood.py).

``bridgekit.SmtpClient`` is synchronous and byte-exact; floods need hundreds
of sessions at once, which asyncio does without a thread each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path


async def read_reply(reader: asyncio.StreamReader) -> str:
    """The last line of a (possibly multi-line) reply, without CRLF."""
    while True:
        line = (await reader.readline()).decode()
        if not line or line[3:4] != "-":
            return line.rstrip("\r\n")


async def etrn_session(host: str, port: int, argument: str) -> tuple[str, float]:
    """Connect, EHLO, ETRN ``argument``, QUIT: the ETRN reply and its latency in seconds."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await read_reply(reader)
        writer.write(b"EHLO client.test\r\n")
        await read_reply(reader)
        started = time.perf_counter()
        writer.write(f"ETRN {argument}\r\n".encode())
        reply = await read_reply(reader)
        latency = time.perf_counter() - started
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        return reply, latency
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # the server may have closed first
            await writer.wait_closed()


def write_counting_flush(path: Path, runs_file: Path, seconds: float) -> Path:
    """A flush program for the ``command`` backend: takes ``seconds``, logs one line per run."""
    path.write_text(f'#!/bin/sh\nsleep {seconds}\necho "$1" >> "{runs_file}"\n')
    path.chmod(0o755)
    return path
