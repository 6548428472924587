"""What the service reports as it works, for whoever watches it (metrics).

The service calls an :class:`Observer` at its boundary: once per handled
request with its Outcome, once per backend run, once per reload; a queue
index reports its size through the service's observer too. The default
observes nothing. Observers run on the request path: they must be cheap and
must not raise.
"""

from __future__ import annotations

from typing import Protocol

from etrn_bridge.request import FlushResult, Outcome, Request


class Observer(Protocol):
    def request_handled(self, request: Request, outcome: Outcome, reply_code: str) -> None:
        """A request was answered (``outcome.duration`` is its reply latency)."""

    def backend_ran(self, backend: str, result: FlushResult, seconds: float) -> None:
        """A backend run ended (coalesced requests share one run)."""

    def reloaded(self, ok: bool) -> None:
        """A reload put a new config in force (ok) or left the old one (not ok)."""

    def index_reported(self, messages: int, reconciled_at: float | None) -> None:
        """The queue index holds ``messages``; its last reconciliation with the MTA's
        queue began at ``reconciled_at`` (``time.time()``; None: never)."""


class NullObserver:
    """Observes nothing: the default when no metrics are configured."""

    def request_handled(self, request: Request, outcome: Outcome, reply_code: str) -> None:
        pass

    def backend_ran(self, backend: str, result: FlushResult, seconds: float) -> None:
        pass

    def reloaded(self, ok: bool) -> None:
        pass

    def index_reported(self, messages: int, reconciled_at: float | None) -> None:
        pass
