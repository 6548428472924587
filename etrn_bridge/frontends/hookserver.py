"""Serving an MTA hook protocol on a unix or TCP socket, with limits.

What the three hook front ends (postfix_policy, exim_hook, sendmail_socketmap)
share: binding the socket before privileges are dropped (mode and group of a
unix socket, a stale socket file replaced, never one in a world-writable
directory), a cap on connections, a time limit on each request, session ids,
and a graceful stop. Each front end supplies only its protocol: a
:class:`HookProtocol` reading requests from a :class:`HookConnection` and
answering them.
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

from etrn_bridge.admission import DEFAULT_LISTEN_BACKLOG
from etrn_bridge.config import Config, ListenAddress
from etrn_bridge.frontends.sockets import bind_listeners
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


class _Expired(Exception):
    """Set on a connection's reader when its time is up (wakes the read that waits)."""


class HookConnection:
    """One MTA connection: bounded reads, the session id, and the service.

    Time limits: a connection awaiting a request may wait ``idle_timeout``; a
    request begun must be complete within ``request_timeout``. One timer per
    connection watches a deadline that every read only moves (a float): asyncio's
    own timeout per read cost about 30 µs of a hook request's 200 (three timer
    handles and their bookkeeping), and on a busy Postfix the same timer serves
    thousands of requests before it ever fires.
    """

    def __init__(
        self,
        server: HookServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session_id: str,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.session_id = session_id
        self.busy = False  # a request is with the service: stop waits for its answer
        self._loop = asyncio.get_running_loop()
        self._deadline = math.inf  # inf: no read in progress
        self._timer: asyncio.TimerHandle | None = None

    async def read_until(self, separator: bytes, *, first: bool) -> bytes | None:
        """Bytes up to and including ``separator``; None at a clean end of stream.

        ``first``: the start of a request is awaited for up to the idle timeout
        (None when none comes); from its first byte on, the request timeout
        applies. Raises RequestError for a request over the protocol's size, one
        cut short, or one too slow.
        """
        settings = self.server.settings
        start = b""
        try:
            if first:
                self._watch(settings.idle_timeout)
                try:
                    start = await self.reader.read(1)
                except _Expired:
                    return None  # idle: closed quietly, the MTA reconnects
                if not start:
                    return None
                if start == separator:
                    return start
            self._watch(settings.request_timeout)
            return start + await self._read_until(separator, cut_short=bool(start))
        except _Expired:
            raise self._too_slow() from None
        finally:
            self._deadline = math.inf

    async def _read_until(self, separator: bytes, cut_short: bool) -> bytes:
        try:
            return await self.reader.readuntil(separator)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not cut_short:
                raise RequestError("connection closed before a request") from None
            raise RequestError("connection closed inside a request") from None
        except asyncio.LimitOverrunError:
            raise RequestError(
                f"request longer than {self.server.protocol.max_request} bytes"
            ) from None

    async def read_exactly(self, count: int) -> bytes:
        self._watch(self.server.settings.request_timeout)
        try:
            return await self.reader.readexactly(count)
        except _Expired:
            raise self._too_slow() from None
        except asyncio.IncompleteReadError:
            raise RequestError("connection closed inside a request") from None
        finally:
            self._deadline = math.inf

    def _watch(self, seconds: float) -> None:
        """The read that follows must end within ``seconds``."""
        self._deadline = deadline = self._loop.time() + seconds
        # The timer may go off before the deadline (it looks again then), never after.
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._time_check)

    def _time_check(self) -> None:
        self._timer = None
        if self._loop.time() >= self._deadline:
            self.reader.set_exception(_Expired())  # the read waiting raises it
        elif self._deadline != math.inf:
            self._timer = self._loop.call_at(self._deadline, self._time_check)

    def stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> RequestError:
        return RequestError(
            f"request not finished within {self.server.settings.request_timeout:g} s"
        )

    async def answer(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def handle(
        self,
        argument: str,
        identity: Identity,
        frontend: str,
        *,
        cut_short: bool = False,
    ) -> Outcome:
        """Hand one request to the service (which audits it) and return its Outcome.

        ``cut_short``: the MTA truncated the argument (refused like an over-long one)."""
        request = Request(
            identity=identity,
            argument=argument,
            session_id=self.session_id,
            frontend=frontend,
            too_long=cut_short
            or len(argument.encode("utf-8", "surrogateescape")) > self.server.argument_limit,
        )
        self.busy = True
        try:
            return await self.server.service.handle(request)
        finally:
            self.busy = False


class HookProtocol(abc.ABC):
    """One hook protocol: serves a connection until it ends."""

    # Bytes a single request may take (asyncio's reader limit for this protocol).
    max_request: int

    @abc.abstractmethod
    async def serve(self, connection: HookConnection) -> None:
        """Read requests and answer them; raise RequestError on bytes it cannot use."""


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._id_prefix = ""
        self._counter = itertools.count(1)
        self._unix_inode = _inode(settings.listen.path) if settings.listen.path else None

    @property
    def name(self) -> str:
        return self.settings.frontend

    async def serve(self) -> None:
        self._id_prefix = f"{self.settings.name[0]}{secrets.token_hex(3)}"
        limit = self.protocol.max_request  # the stream reader's buffer bound
        if self.socket.family == socket.AF_UNIX:
            # backlog: asyncio calls listen() again, with its own default of 100.
            self._server = await asyncio.start_unix_server(
                self._connected, sock=self.socket, limit=limit, backlog=DEFAULT_LISTEN_BACKLOG
            )
        else:
            self._server = await asyncio.start_server(
                self._connected, sock=self.socket, limit=limit, backlog=DEFAULT_LISTEN_BACKLOG
            )

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.settings.max_connections:
            log.warning("%s: %d connections open: refusing one", self.name, len(self.connections))
            writer.transport.abort()
            return
        connection = HookConnection(
            self, reader, writer, f"{self._id_prefix}{next(self._counter):x}"
        )
        self.connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.protocol.serve(connection)
        except RequestError as exc:
            log.warning("%s session=%s: %s: closing", self.name, connection.session_id, exc)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # one broken connection must not take the server down
            log.exception("%s session=%s: internal error", self.name, connection.session_id)
        finally:
            connection.stop_watching()
            self.connections.discard(connection)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def stop(self, grace: float) -> None:
        """Stop accepting; let requests with the service answer (at most ``grace`` s)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if not connection.busy:
                connection.writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while any(c.busy for c in self.connections):
                    await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
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
