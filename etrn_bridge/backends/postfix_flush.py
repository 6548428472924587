"""Postfix's flush(8) service over its public socket: what ``postqueue -s`` and smtpd's
own ETRN do, without starting a process per request.

Protocol (Postfix 3.x global/flush_clnt.c, mail_command_client(); checked on 3.7):
the server announces ``protocol=queue_flush_protocol``, the client sends
``request=send_site`` and ``site=<domain>``, the server answers ``status=<n>``.
Framing is attr_print0: ``name NUL value NUL`` per attribute, one more NUL ends
a group. Everything the socket sends back is checked; anything unexpected is a
failure, never a success.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

# global/mail_proto.h, global/flush_clnt.h
PROTOCOL = "queue_flush_protocol"
REQUEST_SEND_SITE = "send_site"
STATUS_OK = 0
STATUS_BAD = 3  # invalid parameter
STATUS_DENY = 4  # the destination is not in fast_flush_domains
# A reply group is a few short attributes; anything longer is not flush(8).
MAX_REPLY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class FlushReply:
    status: int | None  # None: no valid answer (then ``error`` says why)
    error: str = ""


def encode(attributes: dict[str, str]) -> bytes:
    return b"".join(f"{name}\0{value}\0".encode() for name, value in attributes.items()) + b"\0"


def decode(group: bytes) -> dict[str, str]:
    """One attr_print0 group (its final NUL included); raises ValueError if malformed."""
    if not group.endswith(b"\0\0"):
        raise ValueError("unterminated attribute group")
    fields = group[:-2].split(b"\0")
    if len(fields) % 2:
        raise ValueError("attribute without a value")
    text = [field.decode("ascii") for field in fields]
    return dict(zip(text[::2], text[1::2], strict=True))


async def send_site(path: str, site: str, timeout: float) -> FlushReply:
    """Ask flush(8) to deliver the mail it has logged for ``site``.

    A bare non-blocking socket, not asyncio streams: one flush per ETRN, and
    the transport, protocol and stream objects cost more than the exchange.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, path)
                # Announcement first, then the request, as flush_clnt.c does. Sending
                # the request ahead of it was measured worse: a flood's flushes (and
                # the deliveries they start) all began at once and took the CPU this
                # process needed to answer them.
                received = bytearray()
                announced = decode(await _read_group(loop, sock, received))
                if announced.get("protocol") != PROTOCOL:
                    return FlushReply(None, f"{path}: not the flush service: {announced}")
                await loop.sock_sendall(sock, encode({"request": REQUEST_SEND_SITE, "site": site}))
                status = decode(await _read_group(loop, sock, received)).get("status", "")
                return FlushReply(int(status))
    except TimeoutError:
        return FlushReply(None, f"{path}: timed out")
    except OSError as exc:
        return FlushReply(None, f"{path}: {exc.strerror or exc}")
    except ValueError as exc:
        return FlushReply(None, f"{path}: unreadable reply: {exc}")


async def _read_group(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, received: bytearray
) -> bytes:
    """The next attribute group (through its final NUL); what follows stays in
    ``received``. Raises ValueError when the peer closes first or sends too much."""
    while True:
        end = received.find(b"\0\0")
        if end >= 0:
            group = bytes(received[: end + 2])
            del received[: end + 2]
            return group
        if len(received) > MAX_REPLY_BYTES:
            raise ValueError(f"no attribute group within {MAX_REPLY_BYTES} bytes")
        chunk = await loop.sock_recv(sock, MAX_REPLY_BYTES)
        if not chunk:
            raise ValueError("connection closed before the reply")
        received += chunk
