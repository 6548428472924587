"""Listening sockets, bound before privileges are dropped (so port 25 needs no root
later), and the loop that accepts connections on them."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable

from etrn_bridge.admission import DEFAULT_LISTEN_BACKLOG
from etrn_bridge.config import ListenAddress

# accept(2) failures that mean "out of resources" (file descriptors, memory):
# the connection stays queued in the backlog and is taken once some are free.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A connection that failed before it was accepted: take the next one.
LOST_CONNECTION_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# Seconds accepting pauses after such a failure (asyncio's ACCEPT_RETRY_DELAY).
ACCEPT_PAUSE = 1.0
# At most one log line per this many seconds about them, with a count.
ACCEPT_ERROR_LOG_INTERVAL = 60.0

log = logging.getLogger("etrn_bridge.listener")


def bind_listeners(
    addresses: Iterable[ListenAddress], reuse_port: bool = False
) -> list[socket.socket]:
    """One listening socket per address (every address a name resolves to).

    IPv6 sockets are IPV6_V6ONLY so "[::]:25" and "0.0.0.0:25" can both be
    listed without clashing and v4 clients never show up as ::ffff:a.b.c.d.
    ``reuse_port`` lets several worker processes share one port (SO_REUSEPORT).
    """
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            for family, kind, proto, _, sockaddr in socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(sockaddr)
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"cannot listen on {address}: {exc.strerror}"
                    ) from None
                sock.listen(DEFAULT_LISTEN_BACKLOG)
                sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bound_name(sock: socket.socket) -> str:
    """'127.0.0.1:2525' or '[::1]:2525' of a bound socket (with the real port when 0 was
    asked), 'unix:PATH' of a unix one."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return str(ListenAddress(host, port))


def start_accepting(
    sock: socket.socket, backlog: int, protocol: Callable[[], asyncio.Protocol]
) -> asyncio.Task[None]:
    """Set the configured backlog, then accept on ``sock`` until the task is
    cancelled, each connection served by a new ``protocol``."""
    sock.listen(backlog)
    return asyncio.get_running_loop().create_task(_accept_connections(sock, protocol))


async def _accept_connections(
    sock: socket.socket, protocol: Callable[[], asyncio.Protocol]
) -> None:
    """Accept until cancelled.

    In place of ``loop.create_server``, whose accept loop (CPython 3.11-3.12)
    logs a traceback and schedules another retry for every failed accept() in a
    burst, so that running out of file descriptors filled the log by hundreds
    of MB: here a resource failure pauses accepting and is logged once a while.
    """
    loop = asyncio.get_running_loop()
    failures = 0
    reported = -ACCEPT_ERROR_LOG_INTERVAL
    while True:
        try:
            connection, _ = await loop.sock_accept(sock)
        except OSError as exc:
            if exc.errno in LOST_CONNECTION_ERRORS:
                continue
            if exc.errno not in RESOURCE_ERRORS:
                raise
            failures += 1
            if time.monotonic() - reported >= ACCEPT_ERROR_LOG_INTERVAL:
                log.error(
                    "accept on %s: %s; pausing accepts for %gs (%d failures since the last report)",
                    bound_name(sock),
                    exc.strerror,
                    ACCEPT_PAUSE,
                    failures,
                )
                reported, failures = time.monotonic(), 0
            await asyncio.sleep(ACCEPT_PAUSE)
            continue
        try:
            await loop.connect_accepted_socket(protocol, connection)
        except OSError as exc:  # the client left already, or no resources for it
            connection.close()
            log.info("accept on %s: dropped a connection: %s", bound_name(sock), exc)
