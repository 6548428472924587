"""The ETRN listener: a thin SMTP adapter over aiosmtpd.

An ETRN becomes a :class:`~etrn_bridge.request.Request` for the service and the
Outcome becomes ``replies.reply_for(outcome)``. Everything else here is SMTP
session hygiene (RFC 5321, RFC 3207 STARTTLS, RFC 4954 AUTH): which commands
exist, who must say HELO first, and when a session is closed. Decisions and
audit records belong to the service.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import resource
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, syntax

from etrn_bridge import defaults, replies
from etrn_bridge.admission import Admission
from etrn_bridge.config import Config, ListenAddress
from etrn_bridge.frontends.passwords import PasswordFile
from etrn_bridge.frontends.sockets import start_accepting
from etrn_bridge.frontends.tlsinfo import peer_fingerprint, server_context
from etrn_bridge.request import Identity, Request
from etrn_bridge.service import Service

FRONTEND = "listener"
# RFC 5321 §4.5.3.1.4 counts the CRLF in the 512-octet command line; aiosmtpd
# measures the line without it.
CRLF_LENGTH = 2
# File descriptors besides sessions: listening sockets, the audit file, syslog,
# and three pipes per running flush.
FD_RESERVE = 64
# aiosmtpd's own fixed replies, given RFC 3463 enhanced codes like ours.
_AIOSMTPD_REPLIES = {
    "500 Error: bad syntax": replies.UNRECOGNIZED,
}

log = logging.getLogger("etrn_bridge.listener")

Command = Callable[[str | None], Awaitable[None]]


class _CommandTable(dict[str, Command]):
    """aiosmtpd's verb -> method table, with our reply for verbs it does not know
    and for over-long lines.

    aiosmtpd answers unknown verbs itself, echoing them back and closing after
    a fixed five; routing them here keeps one reply text and one bad-command
    limit for every kind of error. An over-long ETRN still reaches smtp_ETRN,
    to be refused and audited by the service.
    """

    def __init__(self, methods: dict[str, Command], session: EtrnSession) -> None:
        super().__init__(methods)
        self._session = session

    def get(self, key: str, default: Command | None = None) -> Command:  # type: ignore[override]
        if self._session.line_too_long and key != "ETRN":
            return self._session.refuse_long_line
        return super().get(key) or self._session.unrecognized


def _defer_verification(
    server: SMTP, session: Session, envelope: Any, mechanism: str, credentials: Any
) -> AuthResult:
    # aiosmtpd's authenticator is synchronous; password hashing must not block
    # the loop, so the credentials are handed back unverified (and refused if
    # anything used them as they are) and EtrnSession._verify checks them.
    return AuthResult(success=False, handled=False, auth_data=credentials)


class EtrnSession(SMTP):
    """One client connection."""

    def __init__(self, listener: Listener) -> None:
        settings = listener.config.session
        # aiosmtpd sizes its line reader from this attribute in __init__.
        self.line_length_limit = max(settings.max_line_length, defaults.AUDITED_LINE_LIMIT)
        super().__init__(
            None,  # no handler: every behaviour lives in this class
            hostname=listener.config.hostname,
            ident=replies.GREETING_IDENT,
            tls_context=listener.tls_context,
            timeout=settings.idle_timeout,
            enable_SMTPUTF8=True,  # so non-UTF-8 bytes arrive surrogate-escaped, not refused
            decode_data=True,
            data_size_limit=None,
            auth_require_tls=True,
            authenticator=_defer_verification,
            auth_exclude_mechanism=() if listener.passwords else ("PLAIN", "LOGIN"),
            loop=asyncio.get_running_loop(),
        )
        # Line length is judged in _read_command_line, the same way in every session
        # state (aiosmtpd's own check applies one limit before EHLO and after HELO
        # and per-verb ones after EHLO): turn aiosmtpd's off.
        self.command_size_limit = self.line_length_limit
        self.command_size_limits = collections.defaultdict(lambda: self.line_length_limit)
        self.command_limit = settings.max_line_length - CRLF_LENGTH
        self.line_too_long = False  # the line being handled is over command_limit
        self._smtp_methods = _CommandTable(self._smtp_methods, self)
        self.listener = listener
        # The policy in force when the client connected serves the whole session.
        self.policy = listener.service.session()
        self.session_id = listener.next_session_id()
        self.started = time.monotonic()
        self.etrn_count = 0
        self.bad_commands = 0
        self.busy = False  # inside an ETRN: a close decided meanwhile waits for its reply
        self.close_after_reply: tuple[str, str] | None = None  # (421 reply, reason)
        self.closed_because = "quit"
        self.tls_fingerprint: str | None = None
        self._peer = ListenAddress("-", 0)  # the client, known in connection_made
        self.admitted = False  # counted by the listener's Admission
        self._time_limit: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0  # loop time: see _reset_timeout

    def __dir__(self) -> Iterable[str]:
        # aiosmtpd's __init__ runs inspect.getmembers(self) and dir(self) on every
        # connection only to collect the auth_* and smtp_* methods, evaluating every
        # attribute on the way (~70 us, a quarter of a short session's CPU). Listing
        # just those names, computed once per class, builds the same tables.
        return _SESSION_METHOD_NAMES

    # Connection life cycle ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # not the STARTTLS re-entry
        if first:
            host, port = transport.get_extra_info("peername")[:2]
            self._peer = ListenAddress(host, port)
            self.listener.sessions.add(self)
            self.closed_because = "client"
        super().connection_made(transport)
        if not first:
            return
        self.admitted = self.listener.admission.admit(self._peer.host)
        if not self.admitted:
            # Before the greeting: the session task is cancelled before it runs.
            self.close_with(replies.TOO_MANY_SESSIONS, "too many sessions")
            return
        self._time_limit = self.loop.call_later(
            self.listener.config.connections.max_session_time,
            self.close_when_idle,
            replies.SESSION_TIME_LIMIT,
            "session time limit",
        )

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._time_limit is not None:
            self._time_limit.cancel()
        if self.admitted:
            self.admitted = False
            self.listener.admission.release(self._peer.host)
        self.listener.session_ended(self)
        self._log_end()
        # aiosmtpd's session objects form reference cycles, left to the cyclic
        # collector, and a reload freezes every live object out of its reach
        # (config.py): dropped here, the policy this session started with is
        # freed once its last session ends (release.py), not kept for good.
        # Nothing runs the handler after this: aiosmtpd has cancelled it.
        del self.policy

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super()._cb_client_connected(reader, writer)
        # aiosmtpd's read loop (_handle_client, aiosmtpd 1.4) takes every command
        # line from reader.readuntil(); this is our one hook into that loop.
        reader.readuntil = functools.partial(  # type: ignore[method-assign]
            self._read_command_line, reader.readuntil
        )

    async def _read_command_line(
        self, read_line: Callable[[bytes], Awaitable[bytes]], separator: bytes = b"\n"
    ) -> bytes:
        """The next command line for aiosmtpd's loop, and whether it is over-long.

        Nothing after a decision to close (QUIT, a 421) is parsed: that decision
        cancels this task, but a line already buffered would be returned without
        a pause to deliver the cancellation, and run. A line longer than the
        reader's buffer is discarded up to its end and handed on cut short (its
        verb is all that matters), marked too long, so an over-long ETRN is
        still refused and audited like any other.
        """
        if self._closing():
            raise asyncio.CancelledError
        try:
            line = await read_line(separator)
            self.line_too_long = len(line.rstrip(b"\r\n")) > self.command_limit
        except asyncio.LimitOverrunError as overrun:
            line = await self._reader.read(overrun.consumed)
            await self._discard_to_end_of_line(read_line, separator)
            self.line_too_long = True
            line = line[: self.command_limit] + b"\r\n"
        if self._closing():
            raise asyncio.CancelledError
        return line

    async def _discard_to_end_of_line(
        self, read_line: Callable[[bytes], Awaitable[bytes]], separator: bytes
    ) -> None:
        while True:
            try:
                await read_line(separator)
                return
            except asyncio.LimitOverrunError as overrun:
                await self._reader.read(overrun.consumed)

    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _log_end(self) -> None:
        log.info(
            "session=%s client=%s helo=%s tls=%s auth=%s etrn=%d bad=%d end=%s seconds=%.3f",
            self.session_id,
            self._peer,
            self.session.host_name if self.session else None,
            "yes" if self._tls_protocol else "no",
            self._auth_user() or "-",
            self.etrn_count,
            self.bad_commands,
            self.closed_because,
            time.monotonic() - self.started,
        )

    def close_with(self, reply: str, reason: str) -> None:
        """Send a final 421 and close (RFC 5321 §3.8); usable outside a command."""
        if self.transport is None or self.transport.is_closing():
            return
        self.closed_because = reason
        self._say(reply)
        self.transport.close()  # sends what is buffered, then closes
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()

    def cut_off(self) -> None:
        """Server stopping now: say so and drop the connection, whatever it was doing
        (its ETRN's flush goes on in the service, or is cut and audited there)."""
        if self.transport is None:
            return
        self.closed_because = "shutdown, cut"
        self._say(replies.SHUTTING_DOWN)  # sent at once unless the client stopped reading
        cast(asyncio.Transport, self.transport).abort()

    def _say(self, reply: str) -> None:
        self._writer.write(reply.format(host=self.hostname).encode("ascii") + b"\r\n")

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd (1.4) cancels its idle timer and schedules a new one for every
        # command; here a command only moves the deadline, and the one timer, when
        # it fires early, waits out the rest (_idle_timer_fired).
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._idle_deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        if self.busy:  # an ETRN in progress: its reply restarts the idle time
            self._idle_deadline = self.loop.time() + self._timeout_duration
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer_fired)
        else:
            self._timeout_cb()

    def _timeout_cb(self) -> None:
        # aiosmtpd just drops the connection; RFC 5321 §4.5.3.2.7 lets us close, and
        # a 421 tells the client why.
        self.close_with(replies.IDLE_TIMEOUT, "idle timeout")

    def close_when_idle(self, reply: str, reason: str) -> None:
        """Close now, or right after the reply of the ETRN in progress."""
        if self.busy:
            self.close_after_reply = self.close_after_reply or (reply, reason)
        else:
            self.close_with(reply, reason)

    def shutdown(self) -> None:
        """Server stopping: close now, or right after the ETRN in progress."""
        self.close_when_idle(replies.SHUTTING_DOWN, "shutdown")

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            status = _AIOSMTPD_REPLIES.get(status, status)
        await super().push(status)
        # Every 5yz reply is a bad command: unknown or refused verbs, syntax
        # errors, failed AUTH (which also bounds password guessing).
        if status[:1] in ("5", b"5"):
            self.bad_commands += 1
            if self.bad_commands >= self.listener.config.session.max_bad_commands:
                self.close_with(replies.TOO_MANY_BAD_COMMANDS, "too many bad commands")

    async def handle_exception(self, error: Exception) -> str:
        log.error("session=%s internal error", self.session_id, exc_info=error)
        return replies.LOCAL_ERROR

    # Commands ----------------------------------------------------------------

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push(replies.EHLO_SYNTAX)
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        session = self._smtp_session()
        session.extended_smtp = True
        session.host_name = hostname
        keywords = ["ETRN"]  # RFC 1985 §2; clients send ETRN only when they see it
        if self.tls_context and not self._tls_protocol:
            keywords.append("STARTTLS")  # RFC 3207
        elif self._tls_protocol and self.listener.passwords:
            keywords.append("AUTH PLAIN LOGIN")  # RFC 4954, only inside TLS
        lines = [f"250-{self.hostname}", *(f"250-{k}" for k in keywords[:-1])]
        lines.append(f"250 {keywords[-1]}")
        await self.push("\r\n".join(lines))

    @syntax("ETRN [@|#]node")
    async def smtp_ETRN(self, argument: str | None) -> None:
        # No "ETRN inside a mail transaction" (503) case: MAIL is never accepted.
        session = self._smtp_session()
        # An over-long line is refused (501, audited) in every state, HELO or not.
        if not session.host_name and not self.line_too_long:
            await self.push(replies.HELO_FIRST)
            return
        self.etrn_count += 1
        if self.etrn_count > self.listener.config.session.max_etrn:
            self.close_with(replies.TOO_MANY_ETRN, "too many ETRN")
            return
        request = Request(
            identity=Identity(
                address=self._peer.host,
                port=self._peer.port,
                helo=session.host_name,
                auth_user=self._auth_user(),
                tls=self._tls_protocol is not None,
                tls_fingerprint=self.tls_fingerprint,
            ),
            argument=argument or "",  # "" reaches the service: 500, audited
            session_id=self.session_id,
            frontend=FRONTEND,
            too_long=self.line_too_long,
        )
        self.busy = True  # the idle timer measures the client, not a slow flush
        try:
            outcome = await self.policy.handle(request)
        finally:
            self.busy = False
        self._reset_timeout()
        await self.push(replies.reply_for(outcome))
        if self.close_after_reply is not None:
            self.close_with(*self.close_after_reply)

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self._tls_protocol is not None:
            await self.push(replies.TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)
        if self._tls_protocol is not None and self.transport is not None:
            self.tls_fingerprint = peer_fingerprint(self.transport.get_extra_info("ssl_object"))

    async def smtp_AUTH(self, arg: str | None) -> None:
        if self.listener.passwords is None:
            await self.push(replies.ONLY_ETRN)
            return
        if self.listener.admission.auth_blocked(self._peer.host):
            self.close_with(replies.AUTH_THROTTLED, "too many AUTH failures")
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(server, args))

    async def _verify(self, parsed: AuthResult) -> AuthResult:
        credentials = parsed.auth_data
        passwords = self.listener.passwords
        if not isinstance(credentials, LoginPassword) or passwords is None:
            return parsed  # malformed exchange: aiosmtpd has replied already
        client = self._peer.host
        if self.listener.admission.auth_blocked(client):  # others failed meanwhile
            self.close_with(replies.AUTH_THROTTLED, "too many AUTH failures")
            return AuthResult(success=False, handled=True)
        user = await self.loop.run_in_executor(
            self.listener.password_checks, passwords.verify, credentials.login, credentials.password
        )
        if user is None:
            self.listener.admission.auth_failed(client)
            return AuthResult(success=False, handled=False)  # 535 5.7.8
        return AuthResult(success=True, auth_data=user)

    async def _refuse(self, arg: str | None) -> None:
        await self.push(replies.ONLY_ETRN)

    async def refuse_long_line(self, arg: str | None) -> None:
        await self.push(replies.LINE_TOO_LONG)

    # Commands of SMTP proper (RFC 5321 §4.1, RFC 3030 BDAT, RFC 2645 ATRN) that this
    # service recognizes and refuses: it flushes queues, it takes no mail.
    smtp_MAIL = smtp_RCPT = smtp_DATA = smtp_BDAT = _refuse
    smtp_VRFY = smtp_EXPN = smtp_TURN = smtp_ATRN = _refuse

    async def unrecognized(self, arg: str | None) -> None:
        await self.push(replies.UNRECOGNIZED)

    def _auth_user(self) -> str | None:
        if self.session is None or not self.session.authenticated:
            return None
        return cast(str, self.session.auth_data)

    def _smtp_session(self) -> Session:
        # aiosmtpd sets it in connection_made, before any command runs. (A method,
        # not a property: aiosmtpd's __init__ evaluates every attribute.)
        assert self.session is not None
        return self.session


_SESSION_METHOD_NAMES = tuple(
    name for name in dir(EtrnSession) if name.startswith(("auth_", "smtp_"))
)


class Listener:
    """All listening sockets of one process and the sessions on them."""

    def __init__(
        self,
        config: Config,
        service: Service,
        passwords: PasswordFile | None,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.config = config
        self.service = service
        self.passwords = passwords
        self.tls_context = tls_context
        self.sessions: set[EtrnSession] = set()
        self.admission = Admission(config.connections)
        # Password hashes cost ~32 MiB each while checked: a few at a time.
        self.password_checks = ThreadPoolExecutor(
            config.connections.max_password_checks, thread_name_prefix="password-check"
        )
        self.stopping = False
        self._all_ended = asyncio.Event()
        self._accepting: list[asyncio.Task[None]] = []
        self._sockets: list[socket.socket] = []
        # Short ids, unique per process; the random prefix tells processes and
        # restarts apart in the audit. Drawn in serve(), in the serving process:
        # serve's workers are forked after this object is built.
        self._id_prefix = ""
        self._counter = itertools.count(1)

    @classmethod
    def from_config(cls, config: Config, service: Service) -> Listener:
        """Build from the config; loads the password file and TLS keys (may raise)."""
        passwords = PasswordFile.load(config.auth.passwords_file) if config.auth else None
        tls_context = server_context(config.tls) if config.tls else None
        return cls(config, service, passwords, tls_context)

    def session_ended(self, session: EtrnSession) -> None:
        self.sessions.discard(session)
        if self.stopping and not self.sessions:
            self._all_ended.set()

    def next_session_id(self) -> str:
        return f"{self._id_prefix}{next(self._counter):x}"

    async def serve(self, sockets: Iterable[socket.socket]) -> None:
        self._id_prefix = secrets.token_hex(3)
        self._check_fd_limit()
        backlog = self.config.connections.listen_backlog
        for sock in sockets:
            self._sockets.append(sock)
            self._accepting.append(start_accepting(sock, backlog, lambda: EtrnSession(self)))

    def _check_fd_limit(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.config.connections.max_sessions + FD_RESERVE
        if soft != resource.RLIM_INFINITY and soft < wanted:
            log.warning(
                "open files limit %d is below connections.max_sessions + %d = %d: "
                "raise it (LimitNOFILE=) or lower max_sessions",
                soft,
                FD_RESERVE,
                wanted,
            )

    async def stop(self, grace: float, cut_now: asyncio.Event | None = None) -> None:
        """Stop accepting; let ETRNs in progress answer (at most ``grace`` s, or until
        ``cut_now`` is set); close the rest. Their flushes go on: ``Service.drain``."""
        self.stopping = True
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        self.password_checks.shutdown(wait=False, cancel_futures=True)
        if not self.sessions:
            return
        for session in list(self.sessions):
            session.shutdown()
        waits = {asyncio.ensure_future(self._all_ended.wait())}
        if cut_now is not None:
            waits.add(asyncio.ensure_future(cut_now.wait()))
        await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        for session in list(self.sessions):
            session.cut_off()
