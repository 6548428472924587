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
    One reader callback watches it for the whole exchange (the loop's sock_recv
    would add and remove the reader for each of the two replies).
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, path)
                exchange = _Exchange(sock, site, loop.create_future())
                loop.add_reader(sock.fileno(), exchange.readable)
                try:
                    announced, status = await exchange.replies
                finally:
                    loop.remove_reader(sock.fileno())
                if announced.get("protocol") != PROTOCOL:
                    return FlushReply(None, f"{path}: not the flush service: {announced}")
                return FlushReply(int(status.get("status", "")))
    except TimeoutError:
        return FlushReply(None, f"{path}: timed out")
    except OSError as exc:
        return FlushReply(None, f"{path}: {exc.strerror or exc}")
    except ValueError as exc:
        return FlushReply(None, f"{path}: unreadable reply: {exc}")


Attributes = dict[str, str]


class _Exchange:
    """flush_clnt.c's order: the announcement first, then the request, then the
    status. Sending the request ahead of the announcement was measured worse: a
    flood's flushes (and the deliveries they start) all began at once and took
    the CPU this process needed to answer them."""

    def __init__(
        self, sock: socket.socket, site: str, replies: asyncio.Future[tuple[Attributes, Attributes]]
    ) -> None:
        self.sock = sock
        self.request = encode({"request": REQUEST_SEND_SITE, "site": site})
        self.replies = replies  # (announcement, status group)
        self.received = bytearray()
        self.announced: Attributes | None = None

    def readable(self) -> None:
        if self.replies.done():
            return
        try:
            self._read()
        except (OSError, ValueError) as exc:
            self.replies.set_exception(exc)

    def _read(self) -> None:
        try:
            chunk = self.sock.recv(MAX_REPLY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            raise ValueError("connection closed before the reply")
        self.received += chunk
        while (end := self.received.find(b"\0\0")) >= 0:
            group = decode(bytes(self.received[: end + 2]))
            del self.received[: end + 2]
            if self.announced is not None:
                self.replies.set_result((self.announced, group))
                return
            self.announced = group
            if group.get("protocol") != PROTOCOL:
                self.replies.set_result((group, {}))  # refused by send_site, nothing sent
                return
            # A few dozen bytes into an empty socket buffer: sent whole, or an error.
            if self.sock.send(self.request) != len(self.request):
                raise OSError("the request was not sent whole")
        if len(self.received) > MAX_REPLY_BYTES:
            raise ValueError(f"no attribute group within {MAX_REPLY_BYTES} bytes")
