"""The flush(8) socket client against stand-in servers on real unix sockets: what it
sends, and that nothing but a well-formed ``status=0`` counts as started."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from etrn_bridge.backends.postfix_flush import decode, encode, send_site

ANNOUNCE = encode({"protocol": "queue_flush_protocol"})
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(tmp_path: Path, handler: Handler) -> AsyncIterator[str]:
    path = str(tmp_path / "flush")
    unix = await asyncio.start_unix_server(handler, path)
    try:
        yield path
    finally:
        unix.close()
        await unix.wait_closed()


def answering(*replies: bytes, seen: list[dict[str, str]] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(replies[0])
        if len(replies) > 1:
            request = await reader.readuntil(b"\0\0")
            if seen is not None:
                seen.append(decode(request))
            writer.write(replies[1])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    return handle


async def test_send_site_speaks_the_flush_protocol(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []
    handler = answering(ANNOUNCE, encode({"status": "0"}), seen=seen)
    async with server(tmp_path, handler) as path:
        reply = await send_site(path, "customer.test", 5)
    assert reply.status == 0 and not reply.error
    assert seen == [{"request": "send_site", "site": "customer.test"}]


async def test_denied_status_is_passed_on(tmp_path: Path) -> None:
    async with server(tmp_path, answering(ANNOUNCE, encode({"status": "4"}))) as path:
        assert (await send_site(path, "noflush.test", 5)).status == 4


async def test_hostile_or_broken_servers_are_failures(tmp_path: Path) -> None:
    cases = {
        "other protocol": answering(encode({"protocol": "showq_protocol"})),
        "no status": answering(ANNOUNCE, encode({"result": "0"})),
        "status not a number": answering(ANNOUNCE, encode({"status": "ok"})),
        "odd attribute": answering(ANNOUNCE, b"status\0\0"),
        "cut short": answering(ANNOUNCE, b"status\x000"),
        "endless": answering(b"x" * 5000),
        "binary": answering(ANNOUNCE, b"status\0\xff\xfe\0\0"),
    }
    for name, handler in cases.items():
        async with server(tmp_path, handler) as path:
            reply = await send_site(path, "customer.test", 2)
        assert reply.status is None and reply.error, name


async def test_silent_server_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with server(tmp_path, silent) as path:
        reply = await send_site(path, "customer.test", 0.2)
    assert reply.status is None and reply.error == f"{path}: timed out"


async def test_no_socket_is_a_failure(tmp_path: Path) -> None:
    reply = await send_site(str(tmp_path / "missing"), "customer.test", 1)
    assert reply.status is None and "No such file" in reply.error
