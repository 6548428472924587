"""The milter (pymilter over libmilter) for Postfix and Sendmail: a thin adapter.

At end of message it records the queue id (macro ``i``), the envelope
recipients and the size through the :class:`QueueRecorder`, and quarantines
the message when the recorder says to hold it. At RCPT it answers
``452 4.2.2`` for a held domain over its quota. Nothing else ever changes the
MTA's answer: every callback is guarded, and a fault in it logs and lets the
mail through (CONTINUE) — the MTA must never lose or delay mail because of us.

libmilter runs each MTA connection in its own thread and creates one instance
of :class:`IndexMilter` per connection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import Milter

from etrn_bridge.feeds.recorder import QueueRecorder

log = logging.getLogger("etrn_bridge.milter")

MILTER_NAME = "etrn-bridge"
# The queue id macro. Postfix sends it with MAIL, RCPT, DATA and end of data by
# default (milter_*_macros); Sendmail with MAIL (confMILTER_MACROS_ENVFROM).
QUEUE_ID_MACRO = "i"
# RFC 5321 §4.2.2 452 "insufficient system storage"; RFC 3463 4.2.2 "mailbox full".
QUOTA_REPLY = ("452", "4.2.2")
QUOTA_TEXT = "Too much mail queued for {domain}, try again later"
QUARANTINE_REASON = "etrn-bridge: held until ETRN"
# Header line bytes beyond name and value: ": " and CRLF.
HEADER_OVERHEAD = 4

# libmilter's answers, typed (pymilter ships no type information).
CONTINUE: int = Milter.CONTINUE
TEMPFAIL: int = Milter.TEMPFAIL

_F = TypeVar("_F", bound=Callable[..., Any])


def guarded(callback: _F) -> _F:
    """A callback that cannot fail: any exception is logged and the mail goes on."""

    @functools.wraps(callback)
    def wrapper(self: IndexMilter, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception:
            log.exception("milter %s failed (mail continues unaffected)", callback.__name__)
            return CONTINUE

    return wrapper  # type: ignore[return-value]


class IndexMilter(Milter.Base):  # type: ignore[misc]
    """One MTA connection: collects each transaction's recipients and size."""

    def __init__(self, recorder: QueueRecorder) -> None:
        self.recorder = recorder
        self.client = ""
        self.queue_id = ""
        self.recipients: list[str] = []
        self.size = 0

    def _note_queue_id(self) -> None:
        queue_id = self.getsymval(QUEUE_ID_MACRO)
        if queue_id:
            self.queue_id = str(queue_id)

    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if isinstance(hostaddr, tuple) and hostaddr:
            self.client = str(hostaddr[0])
        return CONTINUE

    @guarded
    def envfrom(self, sender: str, *params: str) -> int:
        # A new transaction on this connection: forget the last one.
        self.queue_id = ""
        self.recipients = []
        self.size = 0
        self._note_queue_id()
        return CONTINUE

    @guarded
    def envrcpt(self, recipient: str, *params: str) -> int:
        self._note_queue_id()
        refusal = self.recorder.quota_refusal(recipient, self.client)
        if refusal is not None:
            self.setreply(*QUOTA_REPLY, QUOTA_TEXT.format(domain=refusal.domain))
            return TEMPFAIL
        self.recipients.append(recipient)
        return CONTINUE

    @guarded
    def header(self, name: str, value: str) -> int:
        self.size += len(name) + len(value) + HEADER_OVERHEAD
        return CONTINUE

    @guarded
    def body(self, chunk: bytes) -> int:
        self.size += len(chunk)
        return CONTINUE

    @guarded
    def eom(self) -> int:
        self._note_queue_id()
        if not self.queue_id:
            log.warning("no queue id macro at end of message: not recorded (MTA macros?)")
            return CONTINUE
        recorded = self.recorder.message_queued(self.queue_id, self.recipients, self.size)
        if recorded.hold:
            self.quarantine(QUARANTINE_REASON)
        if recorded.recorded:
            log.info(
                "queued %s: %d recipients, %d bytes%s",
                self.queue_id,
                len(self.recipients),
                self.size,
                ", held" if recorded.hold else "",
            )
        return CONTINUE

    @guarded
    def abort(self) -> int:
        self.recipients = []
        self.size = 0
        return CONTINUE


def run_milter(recorder: QueueRecorder, socket: str, timeout: int) -> None:
    """Serve the MTA on ``socket`` until libmilter stops (SIGTERM/SIGINT)."""
    Milter.factory = functools.partial(IndexMilter, recorder)
    Milter.set_flags(Milter.QUARANTINE)
    Milter.runmilter(MILTER_NAME, socket, timeout)
