"""The audit trail: one JSON object per line for every request, to a file and/or syslog.

Every byte a client sent is escaped before it is written: JSON escapes control
characters, ``ensure_ascii`` escapes everything else outside ASCII (so no
Unicode line separator can split a record either), and bytes that were not
UTF-8 appear as ``\\xNN``. One record can therefore never become two lines.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import syslog
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etrn_bridge.replies import reply_code, reply_for
from etrn_bridge.request import FlushResult, Outcome, Request
from etrn_bridge.target import Target

# The raw argument is kept in full up to this many characters (the line limit is lower).
MAX_ARGUMENT_CHARS = 1024
SYSLOG_IDENT = "etrn-bridge"
# One encoder for every record: json.dumps with non-default arguments builds a
# new one per call, a cost paid on every request.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))

log = logging.getLogger("etrn_bridge")


def escape_client_text(text: str | None) -> str | None:
    """Client text as printable, line-safe text; non-UTF-8 bytes become \\xNN."""
    if text is None:
        return None
    if text.isascii():  # no byte that was not UTF-8 (those are surrogates): as it is
        return text[:MAX_ARGUMENT_CHARS]
    raw = text[:MAX_ARGUMENT_CHARS].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def timestamp(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as records carry it: UTC, milliseconds, fixed width."""
    if moment is None:
        return _now()
    utc = moment.astimezone(UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Clock:
    """Now as :func:`timestamp` writes it, the date and time of day made once a second
    (a datetime and its isoformat were 2 µs of every record)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


_now = _Clock()


def request_record(
    request: Request, outcome: Outcome, reply: str, *, client_gone: bool = False, cut: bool = False
) -> dict[str, Any]:
    """The audit record of one request and its outcome.

    ``client_gone``: the client left before the answer (``reply`` was never sent);
    ``cut``: the server stopped and cut the request before it ended.
    """
    identity = request.identity
    target = outcome.target
    decision = outcome.decision
    flush = outcome.flush
    return {
        "ts": timestamp(),
        "event": "etrn",
        "session": request.session_id,
        "frontend": request.frontend,
        "client_ip": identity.address,
        "client_port": identity.port,
        "helo": escape_client_text(identity.helo),
        "auth_user": escape_client_text(identity.auth_user),
        "tls": identity.tls,
        "tls_fingerprint": identity.tls_fingerprint,
        "argument": escape_client_text(request.argument),
        "target": str(target) if target else None,
        "kind": target.kind.value if target else None,
        "decision": None if decision is None else ("allow" if decision.allowed else "deny"),
        "rule": decision.rule if decision else None,
        "status": outcome.status.value,
        "coalesced": outcome.coalesced,
        "reply": reply_code(reply),
        "reason": outcome.reason or None,
        "backend": outcome.backend,
        "exit_status": flush.exit_status if flush else None,
        "pending": flush.pending if flush else None,
        "shared_messages": flush.shared if flush and flush.shared else None,
        "queue_ids": list(flush.queue_ids) if flush and flush.queue_ids else None,
        "selected_from": flush.selected_from if flush else None,
        "detail": flush.detail if flush and flush.detail else None,
        "duration_ms": round(outcome.duration * 1000, 3),
        "client_gone": client_gone,
        "cut": cut,
        **outcome.extra,
    }


def flush_record(
    event: str, target: Target, backend: str, result: FlushResult, **context: object
) -> dict[str, Any]:
    """A flush not tied to one ETRN reply: an Exim delivery run ending after its
    reply (``flush_completed``), or an administrator's ``etrn-bridge flush``."""
    return {
        "ts": timestamp(),
        "event": event,
        **context,
        "target": str(target),
        "kind": target.kind.value,
        "backend": backend,
        "ok": result.started,
        "exit_status": result.exit_status,
        "pending": result.pending,
        "queue_ids": list(result.queue_ids) or None,
        "shared_messages": result.shared or None,
        "detail": result.detail or None,
    }


class AuditLog:
    """Writes audit records; thread-safe so CLI tools and the server can share it."""

    def __init__(
        self,
        file: Path | None = None,
        use_syslog: bool = False,
        syslog_address: str | None = None,
    ) -> None:
        self.path = file
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._syslog: socket.socket | None = None
        if file is not None:
            self._fd = self._open(file)
        if use_syslog:
            self._syslog = self._connect_syslog(syslog_address)

    @staticmethod
    def _open(path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0640: audit lines name customers and their addresses.
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    @staticmethod
    def _connect_syslog(address: str | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(address or "/dev/log")
        return sock

    def reply_and_record(
        self, request: Request, outcome: Outcome, *, client_gone: bool = False, cut: bool = False
    ) -> str:
        """Write the record of a finished request and return its reply line."""
        reply = reply_for(outcome)
        self.write(request_record(request, outcome, reply, client_gone=client_gone, cut=cut))
        return reply

    def write(self, record: Mapping[str, Any]) -> None:
        line = _ENCODER.encode(record)
        with self._lock:
            if self._fd is not None:
                try:
                    append_whole_line(self._fd, f"{line}\n".encode("ascii"))
                except OSError as exc:
                    # A full disk must not cost the client its reply; the record
                    # goes to the log instead, so it is not lost.
                    log.error("audit: cannot write to %s (%s): %s", self.path, exc, line)
            if self._syslog is not None:
                _send_syslog(self._syslog, line)

    def reopen(self) -> None:
        """Re-open the file after log rotation (SIGHUP)."""
        if self.path is None:
            return
        try:
            fd = self._open(self.path)
        except OSError as exc:
            log.error("audit: cannot re-open %s (%s): still writing the old file", self.path, exc)
            return
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._syslog is not None:
                self._syslog.close()
                self._syslog = None


def append_whole_line(fd: int, data: bytes) -> None:
    """Append ``data`` (one line) whole, or leave the file as it was and raise OSError.

    write(2) may write only part of a record when the disk fills up; the rest is
    retried, and when that fails the part already written is cut off again, so
    the file only ever holds whole lines. The exclusive lock keeps the other
    processes appending to the file (serve's workers, the CLI) out of the way
    between the write and that cut.
    """
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        written = 0
        try:
            while written < len(data):
                count = os.write(fd, data[written:])
                if count == 0:  # no progress: treat like a full disk
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += count
        except OSError:
            if written:  # with the lock held, the file ends with our part
                os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _send_syslog(sock: socket.socket, line: str) -> None:
    # RFC 3164 framing, as glibc's syslog(3) writes it to /dev/log; facility mail.
    priority = syslog.LOG_MAIL | syslog.LOG_INFO
    message = f"<{priority}>{SYSLOG_IDENT}[{os.getpid()}]: {line}".encode("ascii")
    try:
        sock.send(message)
    except OSError as exc:
        log.warning("audit: cannot write to syslog: %s", exc)
