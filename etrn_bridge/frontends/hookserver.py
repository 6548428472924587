"""Serving an MTA hook protocol on a unix or TCP socket, with limits.

What the three hook front ends (postfix_policy, exim_hook, sendmail_socketmap)
share: binding the socket before privileges are dropped (mode and group of a
unix socket, a stale socket file replaced, never one in a world-writable
directory), a cap on connections, time limits, session ids, and a graceful
stop. Each front end supplies only its protocol, without I/O: a
:class:`HookProtocol` takes complete requests off the bytes received and turns
an Outcome into the bytes of its answer.

A connection is an asyncio Protocol, not a stream and a task: a request that
arrives whole (an MTA writes each in one go) is parsed, decided and answered
inside the callback that received it. With a stream, a task woke up for each
request and a timeout context guarded each read: 40 of the 200 µs of CPU a
Postfix policy request cost, where the MTA waits for every answer.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import grp
import itertools
import logging
import math
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from typing import cast

from etrn_bridge.admission import DEFAULT_LISTEN_BACKLOG
from etrn_bridge.config import Config, ListenAddress
from etrn_bridge.frontends.sockets import bind_listeners, start_accepting
from etrn_bridge.handoff import start_eagerly
from etrn_bridge.hookconfig import HookEndpoint, HookSettings
from etrn_bridge.request import Identity, Outcome, Request
from etrn_bridge.service import Service

log = logging.getLogger("etrn_bridge.hooks")

# The listener's bound on an ETRN argument (RFC 5321 §4.5.3.1.4: 512 octets per
# command line, CRLF and "ETRN " included); a longer one is refused 501 and audited.
_ETRN_OVERHEAD = len("ETRN ") + len("\r\n")


# A TCP port has at most five decimal digits.
MAX_PORT_DIGITS = 5


class RequestError(Exception):
    """The bytes on a hook socket are not a request of its protocol (never reaches the service)."""


def port_field(text: str) -> int | None:
    """A client port as an MTA writes it; None for anything else (ASCII digits only:
    str.isdigit() also takes "²", which int() refuses)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_PORT_DIGITS:
        return int(text)
    return None


def take_through(received: bytearray, separator: bytes, limit: int) -> bytes | None:
    """What ``received`` holds before the first ``separator``, taken off with it;
    None until one arrives. RequestError once more than ``limit`` bytes precede it."""
    end = received.find(separator)
    if end > limit or (end < 0 and len(received) > limit):
        raise RequestError(f"request longer than {limit} bytes")
    if end < 0:
        return None
    taken = bytes(received[:end])
    del received[: end + len(separator)]
    return taken


@dataclass(frozen=True, slots=True)
class HookRequest:
    """An ETRN as an MTA passed it: for the service."""

    argument: str
    identity: Identity
    cut_short: bool = False  # the MTA truncated the argument (refused like an over-long one)


class HookProtocol(abc.ABC):
    """One hook protocol, without I/O."""

    # Bytes a single request may take; a longer one closes the connection.
    max_request: int
    # The Request's ``frontend`` (the audit's name for this hook).
    frontend: str
    # The MTA reads the answer to EOF (Exim's readsocket): close after it.
    closes_after_answer: bool = False

    @abc.abstractmethod
    def take_request(self, received: bytearray) -> HookRequest | bytes | None:
        """Take the first complete request off ``received``: an ETRN for the service,
        or the answer to a query that needs none (bytes); None while it is incomplete.
        Raises RequestError on bytes that are not this protocol's."""

    @abc.abstractmethod
    def answer(self, outcome: Outcome) -> bytes:
        """The answer to an ETRN, from the service's Outcome."""


class HookConnection(asyncio.Protocol):
    """One MTA connection: its requests, in order, one at a time, and their time limits.

    Time limits: a connection awaiting a request may wait ``idle_timeout``; a
    request begun must be complete within ``request_timeout``; a request with
    the service has none here (the backend's own timeout bounds it). One timer
    watches a deadline that each request only moves (a float), and looks again
    when it fires early: on a busy Postfix it serves thousands of requests
    before it ever fires.
    """

    def __init__(self, server: HookServer) -> None:
        self.server = server
        self.protocol = server.protocol
        self.session_id = server.next_session_id()
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._received = bytearray()
        self._request_begun = False  # bytes of a request not yet complete were received
        self._pending: asyncio.Future[Outcome] | None = None  # a request with the service
        self._reading_paused = False
        self._writing_paused = False
        self._eof = False
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        """A request is with the service: a stop waits for its answer."""
        return self._pending is not None

    # asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.admit(self):
            self.transport.abort()
            return
        self._watch(self.server.settings.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._received += data
        if self.busy or self._writing_paused:
            self._hold_back()
            return
        self._serve()

    def eof_received(self) -> bool:
        self._eof = True
        if not self.busy and not self._received:
            return False  # nothing more to answer: asyncio closes the transport
        # What came whole before the end is still answered (Exim shuts its side
        # down after writing the request); the connection closes after that.
        self._serve()
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True  # the MTA reads no answers: take no more requests

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        # A request with the service goes on (its flush may have started) and is
        # audited; its answer has nowhere to go.
        self._stop_watching()
        self.server.forget(self)

    # Requests --------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the first complete request received, if any (one per loop turn:
        a client that sends many at once cannot hold the loop)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.busy or self._writing_paused:
            return
        try:
            taken = self.protocol.take_request(self._received) if self._received else None
        except RequestError as exc:
            self._close_for(exc)
            return
        except Exception:  # one broken connection must not take the server down
            log.exception("%s session=%s: internal error", self.server.name, self.session_id)
            transport.abort()
            return
        if taken is None:
            if self._eof:
                self._close_for(RequestError("connection closed inside a request"))
            else:
                self._waiting_for_more()
            return
        self._request_begun = False
        if isinstance(taken, bytes):
            self._answered(taken)
            return
        self._deadline = math.inf
        work = start_eagerly(self.server.service.handle(self._request(taken)))
        if work.done():
            self._send_answer(work)
        else:
            self._pending = work
            work.add_done_callback(self._send_answer)

    def _request(self, taken: HookRequest) -> Request:
        too_long = taken.cut_short or (
            len(taken.argument.encode("utf-8", "surrogateescape")) > self.server.argument_limit
        )
        return Request(
            identity=taken.identity,
            argument=taken.argument,
            session_id=self.session_id,
            frontend=self.protocol.frontend,
            too_long=too_long,
        )

    def _send_answer(self, work: asyncio.Future[Outcome]) -> None:
        self._pending = None
        if work.cancelled():  # cut by a stop: audited as such by the service
            self._abort()
            return
        if (error := work.exception()) is not None:
            log.error("%s session=%s: internal error: %r", self.server.name, self.session_id, error)
            self._abort()
            return
        self._answered(self.protocol.answer(work.result()))

    def _answered(self, answer: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if self.protocol.closes_after_answer:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._received:
            self._loop.call_soon(self._serve)
        elif self._eof:
            transport.close()
        else:
            self._watch(self.server.settings.idle_timeout)

    def _waiting_for_more(self) -> None:
        """Part of a request is here: it must be complete within request_timeout
        of its first byte."""
        if self._received and not self._request_begun:
            self._request_begun = True
            self._watch(self.server.settings.request_timeout)

    def _hold_back(self) -> None:
        """While a request is with the service, what comes next waits, up to one
        request's worth; then the socket is not read until the answer is out."""
        transport = self.transport
        if (
            transport is not None
            and not self._reading_paused
            and len(self._received) > self.protocol.max_request
        ):
            self._reading_paused = True
            transport.pause_reading()

    def _close_for(self, problem: RequestError) -> None:
        log.warning("%s session=%s: %s: closing", self.server.name, self.session_id, problem)
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # Time limits -----------------------------------------------------------------

    def _watch(self, seconds: float) -> None:
        """What the connection waits for now must come within ``seconds``."""
        self._deadline = deadline = self._loop.time() + seconds
        # The timer may go off before the deadline (it looks again then), never after.
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._time_check)

    def _time_check(self) -> None:
        self._timer = None
        if self._loop.time() < self._deadline:
            if self._deadline != math.inf:
                self._timer = self._loop.call_at(self._deadline, self._time_check)
            return
        if self._request_begun:
            self._close_for(
                RequestError(
                    f"request not finished within {self.server.settings.request_timeout:g} s"
                )
            )
        else:
            self._abort()  # idle: closed quietly, the MTA reconnects

    def _stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_if_idle(self) -> None:
        if not self.busy:
            self._abort()

    def cut(self) -> None:
        """Stop waiting for the service (it audits the request when its work ends)."""
        if self._pending is not None:
            self._pending.cancel()
        self._abort()


class HookServer:
    """One hook: its socket, its connections, and their limits."""

    def __init__(
        self,
        settings: HookSettings,
        protocol: HookProtocol,
        service: Service,
        config: Config,
        sock: socket.socket,
    ) -> None:
        self.settings = settings
        self.protocol = protocol
        self.service = service
        self.argument_limit = config.session.max_line_length - _ETRN_OVERHEAD
        self.socket = sock
        self.connections: set[HookConnection] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._id_prefix = ""
        self._counter = itertools.count(1)
        self._unix_inode = _inode(settings.listen.path) if settings.listen.path else None

    @property
    def name(self) -> str:
        return self.settings.frontend

    def next_session_id(self) -> str:
        return f"{self._id_prefix}{next(self._counter):x}"

    async def serve(self) -> None:
        self._id_prefix = f"{self.settings.name[0]}{secrets.token_hex(3)}"
        self._accepting = start_accepting(self.socket, DEFAULT_LISTEN_BACKLOG, self._connection)

    def _connection(self) -> HookConnection:
        return HookConnection(self)

    def admit(self, connection: HookConnection) -> bool:
        if len(self.connections) >= self.settings.max_connections:
            log.warning("%s: %d connections open: refusing one", self.name, len(self.connections))
            return False
        self.connections.add(connection)
        return True

    def forget(self, connection: HookConnection) -> None:
        self.connections.discard(connection)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let requests with the service answer (at most ``grace`` s)."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        for connection in list(self.connections):
            connection.close_if_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while any(c.busy for c in self.connections):
                    await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.cut()
        self.remove_socket_file()

    def remove_socket_file(self) -> None:
        """Remove our unix socket file (not one another process has put there since)."""
        path = self.settings.listen.path
        if path is not None and self._unix_inode is not None and _inode(path) == self._unix_inode:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _inode(path: str) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


# Binding (before privileges are dropped) --------------------------------------------


def bind_hook(settings: HookSettings) -> socket.socket:
    """The listening socket of one hook: unix (mode, group) or TCP."""
    endpoint = settings.listen
    if endpoint.path is None:
        return bind_listeners([_tcp(endpoint)])[0]
    return bind_unix(endpoint.path, settings.mode, settings.group)


def _tcp(endpoint: HookEndpoint) -> ListenAddress:
    return ListenAddress(endpoint.host or "127.0.0.1", endpoint.port)


def bind_unix(path: str, mode: int, group: str | None) -> socket.socket:
    """Bind a unix socket with exactly ``mode`` (no window with wider permissions).

    Sendmail refuses a socket in a world-writable directory (anyone could put
    their own socket in its place), and so does the bridge, for every MTA.
    """
    where = f"cannot listen on unix:{path}"
    directory = os.path.dirname(path) or "."
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise OSError(exc.errno, f"{where}: {directory}: {exc.strerror}") from None
    if info.st_mode & stat.S_IWOTH:
        raise OSError(errno.EPERM, f"{where}: {directory} is world-writable")
    gid = _group_id(group, where)
    _remove_stale(path, where)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.listen(DEFAULT_LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{where}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    return sock


def _group_id(group: str | None, where: str) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(errno.EINVAL, f"{where}: no such group {group!r}") from None


def _remove_stale(path: str, where: str) -> None:
    """A socket file left by a process that ended is removed; anything else stays."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{where}: exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: stale
            return
        except OSError as exc:
            raise OSError(exc.errno, f"{where}: {exc.strerror}") from None
    raise OSError(errno.EADDRINUSE, f"{where}: another process is listening on it")
