"""Listening sockets, bound before privileges are dropped (so port 25 needs no root later)."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from etrn_bridge.config import ListenAddress

# Pending connections the kernel queues per socket (Postfix's default is 100;
# short ETRN sessions arrive in bursts, so allow more).
LISTEN_BACKLOG = 1024


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
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bound_name(sock: socket.socket) -> str:
    """'127.0.0.1:2525' or '[::1]:2525' of a bound socket (with the real port when 0 was asked)."""
    host, port = sock.getsockname()[:2]
    return str(ListenAddress(host, port))
