"""What flows through the pipeline: who asks (Identity), what (Request), and the result (Outcome).

Front ends build a :class:`Request`; the service returns an :class:`Outcome`.
Neither type knows anything about SMTP sessions or the policy's internals.
"""

from __future__ import annotations

import asyncio
import enum
from contextvars import ContextVar
from dataclasses import dataclass, field

from etrn_bridge.target import Target

# When the request being handled arrived (time.monotonic()), set by the service: a
# backend judges how fresh its data must be from this, not from when a flush slot
# became free (a queue listing that began after the request arrived is fresh enough).
REQUEST_ARRIVED: ContextVar[float | None] = ContextVar("request_arrived", default=None)


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything known about the client that asked. Only verified facts decide;
    ``helo`` is for the audit and is never trusted by the policy."""

    address: str  # client IP as text ("192.0.2.1", "2001:db8::1")
    port: int | None = None
    helo: str | None = None
    auth_user: str | None = None  # SMTP AUTH identity, set only after success
    tls: bool = False
    tls_fingerprint: str | None = None  # "sha256:AB:CD:..." of a verified client cert


@dataclass(frozen=True, slots=True)
class Request:
    """One ETRN command (or its equivalent from an MTA hook)."""

    identity: Identity
    argument: str  # raw argument as received (decoded with surrogateescape)
    session_id: str = "-"
    frontend: str = "listener"
    # The front end's protocol limit was exceeded (an over-long command line): the
    # argument is refused whatever it holds, so nothing cut short can ever parse.
    too_long: bool = False


class Status(enum.Enum):
    """How a request ended; each maps to exactly one RFC 1985 reply (replies.py)."""

    STARTED = "started"  # flush started, count unknown (250)
    NOTHING_WAITING = "nothing_waiting"  # 251
    PENDING_STARTED = "pending_started"  # 253 (252 when the count is not exact)
    FAILED = "failed"  # backend failure / timeout (458)
    DENIED = "denied"  # policy refusal (459)
    RATE_LIMITED = "rate_limited"  # 459
    UNSUPPORTED = "unsupported"  # target kind the backend cannot serve (459)
    MISSING_ARGUMENT = "missing_argument"  # 500
    BAD_ARGUMENT = "bad_argument"  # 501


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict; ``rule`` is the id of the entry that decided (None: no entry)."""

    allowed: bool
    rule: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What a backend reports back. ``detail`` is the program's own words, for the audit only."""

    started: bool
    pending: int | None = None  # messages selected, when the backend could list them
    pending_exact: bool = True
    exit_status: int | None = None
    detail: str = ""
    queue_ids: tuple[str, ...] = ()
    unsupported: bool = False  # e.g. "#queue" on Postfix without a mapping
    # Selected messages that also have recipients outside the target: the MTA
    # flushes whole messages, so those recipients are attempted too (audited).
    shared: int = 0
    # Set when the flush goes on after the reply (Exim's -R runs deliveries in the
    # foreground): the service awaits it in the background and audits its end.
    completion: asyncio.Future[FlushResult] | None = field(default=None, compare=False)
    # Where the selection came from: "index", "listing" or "shared_listing" (audited).
    selected_from: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of handling one Request: enough for the reply and the audit record."""

    status: Status
    target: Target | None = None
    decision: Decision | None = None
    reason: str = ""  # short, client-safe reason for 459; audit detail otherwise
    backend: str | None = None
    flush: FlushResult | None = None
    coalesced: bool = False
    duration: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def took(self, seconds: float) -> Outcome:
        """This outcome, answered after ``seconds`` (dataclasses.replace, at a fifth
        of its cost on every request)."""
        return Outcome(
            self.status,
            self.target,
            self.decision,
            self.reason,
            self.backend,
            self.flush,
            self.coalesced,
            seconds,
            self.extra,
        )
