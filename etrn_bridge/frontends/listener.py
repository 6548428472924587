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
import contextlib
import itertools
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, syntax

from etrn_bridge import defaults, replies
from etrn_bridge.config import Config, ListenAddress
from etrn_bridge.frontends.passwords import PasswordFile
from etrn_bridge.frontends.tlsinfo import peer_fingerprint, server_context
from etrn_bridge.request import Identity, Request
from etrn_bridge.service import Service

FRONTEND = "listener"
# RFC 5321 §4.5.3.1.4 counts the CRLF in the 512-octet command line; aiosmtpd
# measures the line without it.
CRLF_LENGTH = 2
ETRN_VERB = "ETRN "
# aiosmtpd's own fixed replies, given RFC 3463 enhanced codes like ours.
_AIOSMTPD_REPLIES = {
    "500 Command line too long": replies.LINE_TOO_LONG,
    "500 Error: bad syntax": replies.UNRECOGNIZED,
}

log = logging.getLogger("etrn_bridge.listener")

Command = Callable[[str | None], Awaitable[None]]


class _CommandTable(dict[str, Command]):
    """aiosmtpd's verb -> method table, with our reply for verbs it does not know.

    aiosmtpd answers unknown verbs itself, echoing them back and closing after
    a fixed five; routing them here keeps one reply text and one bad-command
    limit for every kind of error.
    """

    def __init__(self, methods: dict[str, Command], unrecognized: Command) -> None:
        super().__init__(methods)
        self._unrecognized = unrecognized

    def get(self, key: str, default: Command | None = None) -> Command:  # type: ignore[override]
        return super().get(key) or self._unrecognized


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
        command_limit = settings.max_line_length - CRLF_LENGTH
        self.command_size_limit = command_limit
        self.command_size_limits = collections.defaultdict(lambda: command_limit)
        # An over-long ETRN still reaches smtp_ETRN, to be refused and audited there
        # (after EHLO: aiosmtpd applies one limit to every command of a HELO session).
        self.command_size_limits["ETRN"] = self.line_length_limit
        self.etrn_argument_limit = command_limit - len(ETRN_VERB)
        self._smtp_methods = _CommandTable(self._smtp_methods, self._unrecognized)
        self.listener = listener
        # The policy in force when the client connected serves the whole session.
        self.policy = listener.service.session()
        self.session_id = listener.next_session_id()
        self.started = time.monotonic()
        self.etrn_count = 0
        self.bad_commands = 0
        self.busy = False  # inside an ETRN: shutdown waits for its reply
        self.closed_because = "quit"
        self.tls_fingerprint: str | None = None
        self._peer = ListenAddress("-", 0)  # the client, known in connection_made

    def __dir__(self) -> Iterable[str]:
        # aiosmtpd's __init__ runs inspect.getmembers(self) and dir(self) on every
        # connection only to collect the auth_* and smtp_* methods, evaluating every
        # attribute on the way (~70 us, a quarter of a short session's CPU). Listing
        # just those names, computed once per class, builds the same tables.
        return _SESSION_METHOD_NAMES

    # Connection life cycle ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS re-entry
            host, port = transport.get_extra_info("peername")[:2]
            self._peer = ListenAddress(host, port)
            self.listener.sessions.add(self)
            self.closed_because = "client"
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.listener.session_ended(self)
        self._log_end()

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
        self._writer.write(reply.format(host=self.hostname).encode("ascii") + b"\r\n")
        self.transport.close()  # sends what is buffered, then closes
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()

    def _timeout_cb(self) -> None:
        # aiosmtpd just drops the connection; RFC 5321 §4.5.3.2.7 lets us close, and
        # a 421 tells the client why.
        self.close_with(replies.IDLE_TIMEOUT, "idle timeout")

    def shutdown(self) -> None:
        """Server stopping: close now, or right after the ETRN in progress."""
        if not self.busy:
            self.close_with(replies.SHUTTING_DOWN, "shutdown")

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
        if not session.host_name:
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
            too_long=len((argument or "").encode("utf-8", "surrogateescape"))
            > self.etrn_argument_limit,
        )
        # The idle timer measures the client, not a slow flush.
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self.busy = True
        try:
            outcome = await self.policy.handle(request)
        finally:
            self.busy = False
        self._reset_timeout()
        await self.push(replies.reply_for(outcome))
        if self.listener.stopping:
            self.close_with(replies.SHUTTING_DOWN, "shutdown")

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
        user = await self.loop.run_in_executor(
            None, passwords.verify, credentials.login, credentials.password
        )
        if user is None:
            return AuthResult(success=False, handled=False)  # 535 5.7.8
        return AuthResult(success=True, auth_data=user)

    async def _refuse(self, arg: str | None) -> None:
        await self.push(replies.ONLY_ETRN)

    # Commands of SMTP proper (RFC 5321 §4.1, RFC 3030 BDAT, RFC 2645 ATRN) that this
    # service recognizes and refuses: it flushes queues, it takes no mail.
    smtp_MAIL = smtp_RCPT = smtp_DATA = smtp_BDAT = _refuse
    smtp_VRFY = smtp_EXPN = smtp_TURN = smtp_ATRN = _refuse

    async def _unrecognized(self, arg: str | None) -> None:
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
        self.stopping = False
        self._all_ended = asyncio.Event()
        self._servers: list[asyncio.Server] = []
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
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(lambda: EtrnSession(self), sock=sock)
            self._servers.append(server)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let ETRNs in progress answer (at most ``grace`` s); close the rest."""
        self.stopping = True
        for server in self._servers:
            server.close()
        if not self.sessions:
            return
        for session in list(self.sessions):
            session.shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_ended.wait(), grace)
        for session in list(self.sessions):
            if session.transport is not None:
                cast(asyncio.Transport, session.transport).abort()
