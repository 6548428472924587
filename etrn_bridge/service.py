"""The pipeline: Request -> target -> decision -> backend -> Outcome, audited every time.

Front ends call :meth:`Service.handle` and turn the Outcome into their own
protocol (``replies.reply_for`` for SMTP). They hold no policy and write no
audit: every request that reaches ``handle`` leaves exactly one audit record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from etrn_bridge.audit import AuditLog, timestamp
from etrn_bridge.backends.base import Backend
from etrn_bridge.policy.model import Policy
from etrn_bridge.request import FlushResult, Outcome, Request, Status
from etrn_bridge.target import MissingArgument, Target, TargetError, parse_target

log = logging.getLogger("etrn_bridge")


class Service:
    def __init__(self, policy: Policy, backend: Backend, audit: AuditLog) -> None:
        self.policy = policy
        self.backend = backend
        self.audit = audit
        # Flushes that go on after the reply (Exim), awaited so their end is audited.
        self._completions: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request) -> Outcome:
        started = time.monotonic()
        outcome = await self._decide_and_flush(request)
        outcome = replace(outcome, duration=time.monotonic() - started)
        reply = self.audit.reply_and_record(request, outcome)
        log.info(
            "etrn session=%s client=%s target=%s status=%s rule=%s reply=%s",
            request.session_id,
            request.identity.address,
            outcome.target or "-",
            outcome.status.value,
            outcome.decision.rule if outcome.decision else "-",
            reply[:3],
        )
        if outcome.flush is not None and outcome.flush.completion is not None:
            self._follow_completion(request, outcome, outcome.flush.completion)
        return outcome

    async def _decide_and_flush(self, request: Request) -> Outcome:
        try:
            target = parse_target(request.argument)
        except MissingArgument as exc:
            return Outcome(Status.MISSING_ARGUMENT, reason=exc.reason)
        except TargetError as exc:
            return Outcome(Status.BAD_ARGUMENT, reason=exc.reason)
        decision = self.policy.decide(request.identity, target)
        if not decision.allowed:
            return Outcome(Status.DENIED, target, decision, reason=decision.reason)
        result = await self._flush(target)
        return Outcome(
            _status_of(result), target, decision, backend=self.backend.name, flush=result
        )

    async def _flush(self, target: Target) -> FlushResult:
        try:
            return await self.backend.flush(target)
        except Exception as exc:  # a backend bug must cost one 458, not the server
            log.exception("backend %s failed on %s", self.backend.name, target)
            return FlushResult(started=False, detail=f"internal error: {exc!r}")

    def _follow_completion(
        self, request: Request, outcome: Outcome, completion: asyncio.Future[FlushResult]
    ) -> None:
        async def audit_end() -> None:
            try:
                final = await completion
            except Exception as exc:
                final = FlushResult(started=False, detail=f"internal error: {exc!r}")
            record = {
                "ts": timestamp(),
                "event": "flush_completed",
                "session": request.session_id,
                "target": str(outcome.target),
                "backend": outcome.backend,
                "ok": final.started,
                "exit_status": final.exit_status,
                "detail": final.detail or None,
            }
            self.audit.write(record)

        task = asyncio.get_running_loop().create_task(audit_end())
        self._completions.add(task)
        task.add_done_callback(self._completions.discard)

    async def drain(self) -> None:
        """Wait for flushes still running after their reply (graceful stop)."""
        if self._completions:
            await asyncio.gather(*self._completions, return_exceptions=True)


def _status_of(result: FlushResult) -> Status:
    if result.unsupported:
        return Status.UNSUPPORTED
    if not result.started:
        return Status.FAILED
    if result.pending is None:
        return Status.STARTED
    return Status.NOTHING_WAITING if result.pending == 0 else Status.PENDING_STARTED
