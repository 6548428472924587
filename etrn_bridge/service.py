"""The pipeline: Request -> target -> decision -> limits -> backend -> Outcome, audited every time.

Front ends call :meth:`Service.handle` (or the ``handle`` of a
:meth:`Service.session` snapshot) and turn the Outcome into their own protocol
(``replies.reply_for`` for SMTP). They hold no policy and write no audit:
every request that reaches ``handle`` leaves exactly one audit record.

The policy, limits and backend in force form one immutable :class:`PolicyState`;
a reload swaps it in one assignment, so a request (or a session that took a
snapshot) sees either the old state or the new one, never a mix. A reload
builds the new state in a worker thread (:meth:`Service.reload_in_background`):
a 10,000-entry policy takes about a second to build, and sessions must keep
being answered meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from etrn_bridge.audit import AuditLog, flush_record, timestamp
from etrn_bridge.backends.base import Backend, create_backend
from etrn_bridge.backends.reconcile import with_index
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.policy.coalesce import FlushCoalescer
from etrn_bridge.policy.index import client_address
from etrn_bridge.policy.limits import LimitSettings, SlidingWindow
from etrn_bridge.policy.model import Policy
from etrn_bridge.policy.rdns import ForwardConfirmedRdns, Resolver
from etrn_bridge.request import (
    REQUEST_ARRIVED,
    Decision,
    FlushResult,
    Outcome,
    Request,
    Status,
)
from etrn_bridge.target import MissingArgument, Target, TargetError, parse_target

log = logging.getLogger("etrn_bridge")


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything a decision and its flush depend on, swapped as one on reload."""

    policy: Policy
    limits: LimitSettings
    backend: Backend


class PolicySession:
    """Handles requests with the policy in force when it was made (one per connection)."""

    __slots__ = ("_service", "state")

    def __init__(self, service: Service, state: PolicyState) -> None:
        self._service = service
        self.state = state

    async def handle(self, request: Request) -> Outcome:
        return await self._service.handle_with(self.state, request)


class Service:
    def __init__(
        self,
        policy: Policy,
        backend: Backend,
        audit: AuditLog,
        limits: LimitSettings | None = None,
        rdns: ForwardConfirmedRdns | None = None,
    ) -> None:
        settings = limits or LimitSettings()
        self._state = PolicyState(policy, settings, backend)
        self.audit = audit
        self.rdns = rdns or ForwardConfirmedRdns()
        self._client_rates = SlidingWindow()
        self._coalescer = FlushCoalescer(settings.max_concurrent_flushes)
        # Flushes that go on after the reply (Exim), awaited so their end is audited.
        self._completions: set[asyncio.Task[None]] = set()
        # Reloads run one after another, so the last one started is the one in force.
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()

    @classmethod
    def from_config(
        cls, config: Config, audit: AuditLog, *, resolver: Resolver | None = None
    ) -> Service:
        return cls(
            config.policy,
            with_index(create_backend(config.backend), config.index),
            audit,
            config.limits,
            ForwardConfirmedRdns(resolver),
        )

    @property
    def state(self) -> PolicyState:
        return self._state

    @property
    def policy(self) -> Policy:
        return self._state.policy

    @property
    def backend(self) -> Backend:
        return self._state.backend

    def session(self) -> PolicySession:
        """A handle bound to the current policy: a reload does not change it."""
        return PolicySession(self, self._state)

    async def handle(self, request: Request) -> Outcome:
        return await self.handle_with(self._state, request)

    async def handle_with(self, state: PolicyState, request: Request) -> Outcome:
        started = time.monotonic()
        REQUEST_ARRIVED.set(started)
        parsed = _parse(request)
        if isinstance(parsed, Outcome):
            outcome = parsed
        else:
            try:
                outcome = await self._decide_and_flush(state, request, parsed)
            except Exception as exc:  # a bug costs this request a 458, and is audited
                log.exception("session=%s: internal error", request.session_id)
                outcome = Outcome(Status.FAILED, parsed, reason=f"internal error: {exc!r}")
        outcome = replace(outcome, duration=time.monotonic() - started)
        reply = self.audit.reply_and_record(request, outcome)
        log.info(
            "etrn session=%s client=%s target=%s status=%s rule=%s coalesced=%s reply=%s",
            request.session_id,
            request.identity.address,
            outcome.target or "-",
            outcome.status.value,
            outcome.decision.rule if outcome.decision else "-",
            outcome.coalesced,
            reply[:3],
        )
        flush, target, backend = outcome.flush, outcome.target, outcome.backend
        if flush is not None and flush.completion is not None and target and backend:
            self._follow_completion(request.session_id, target, backend, flush.completion)
        return outcome

    async def _decide_and_flush(
        self, state: PolicyState, request: Request, target: Target
    ) -> Outcome:
        try:
            client = str(client_address(request.identity.address))
        except ValueError:
            decision = Decision(False, None, "client address is not an IP address")
            return Outcome(Status.DENIED, target, decision, reason=decision.reason)
        extra: dict[str, object] = {}
        names: tuple[str, ...] = ()
        if state.policy.uses_rdns and state.policy.needs_rdns(target):
            names = await self.rdns.verified_names(client)
            extra["rdns"] = list(names)
        decision = state.policy.decide(request.identity, target, names)
        if not decision.allowed:
            return Outcome(Status.DENIED, target, decision, reason=decision.reason, extra=extra)
        entry = state.policy.by_id.get(decision.rule or "")
        per_target, per_client = (
            entry.limits.apply(state.limits)
            if entry
            else (state.limits.per_target, state.limits.per_client)
        )
        if per_client is not None and not self._client_rates.admit(client, per_client):
            reason = f"more than {per_client} per client"
            return Outcome(Status.RATE_LIMITED, target, decision, reason=reason, extra=extra)
        backend = state.backend
        self._coalescer.resize(state.limits.max_concurrent_flushes)
        ran = await self._coalescer.run(target, per_target, lambda: _flush(backend, target))
        return Outcome(
            _status_of(ran.result),
            target,
            decision,
            backend=backend.name,
            flush=ran.result,
            coalesced=ran.coalesced,
            extra=extra,
        )

    def reload(self, config: Config) -> None:
        """Put a validated config's policy, limits and backend in force."""
        backend = with_index(create_backend(config.backend), config.index)
        self._state = PolicyState(config.policy, config.limits, backend)
        self.audit.write(
            {
                "ts": timestamp(),
                "event": "reload",
                "ok": True,
                "file": str(config.path),
                **config.policy.summary(),
            }
        )
        log.info("reload: %s is in force", config.path)

    def reload_from(self, path: str | Path) -> bool:
        """Re-read the config file; when it is invalid, the policy in force stays."""
        try:
            config = load_config(path)
        except ConfigError as exc:
            self.reload_failed(path, (str(problem) for problem in exc.problems))
            return False
        self.reload(config)
        return True

    def reload_in_background(self, path: str | Path) -> asyncio.Task[bool]:
        """Like :meth:`reload_from`, but the file is read and the policy built in a
        worker thread; only the swap runs on the event loop."""
        task = asyncio.get_running_loop().create_task(self._reload_off_loop(path))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return task

    async def _reload_off_loop(self, path: str | Path) -> bool:
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                self.reload_failed(path, (str(problem) for problem in exc.problems))
                return False
            self.reload(config)
            return True

    def reload_failed(self, path: str | Path, errors: Iterable[str]) -> None:
        messages = list(errors)
        for message in messages:
            log.error("reload: %s", message)
        log.error("reload: %s is invalid; the previous policy stays in force", path)
        self.audit.write(
            {
                "ts": timestamp(),
                "event": "reload",
                "ok": False,
                "file": str(path),
                "errors": messages,
            }
        )

    def _follow_completion(
        self,
        session_id: str,
        target: Target,
        backend: str,
        completion: asyncio.Future[FlushResult],
    ) -> None:
        async def audit_end() -> None:
            try:
                final = await completion
            except Exception as exc:
                final = FlushResult(started=False, detail=f"internal error: {exc!r}")
            self.audit.write(
                flush_record("flush_completed", target, backend, final, session=session_id)
            )

        task = asyncio.get_running_loop().create_task(audit_end())
        self._completions.add(task)
        task.add_done_callback(self._completions.discard)

    async def drain(self) -> None:
        """Wait for flushes still running after their reply (graceful stop)."""
        if self._completions:
            await asyncio.gather(*self._completions, return_exceptions=True)


async def _flush(backend: Backend, target: Target) -> FlushResult:
    try:
        return await backend.flush(target)
    except Exception as exc:  # a backend bug must cost one 458, not the server
        log.exception("backend %s failed on %s", backend.name, target)
        return FlushResult(started=False, detail=f"internal error: {exc!r}")


def _parse(request: Request) -> Target | Outcome:
    """The syntax step: the target, or the 500/501 outcome."""
    if request.too_long:
        return Outcome(Status.BAD_ARGUMENT, reason="command line too long")
    try:
        return parse_target(request.argument)
    except MissingArgument as exc:
        return Outcome(Status.MISSING_ARGUMENT, reason=exc.reason)
    except TargetError as exc:
        return Outcome(Status.BAD_ARGUMENT, reason=exc.reason)


def _status_of(result: FlushResult) -> Status:
    if result.unsupported:
        return Status.UNSUPPORTED
    if not result.started:
        return Status.FAILED
    if result.pending is None:
        return Status.STARTED
    return Status.NOTHING_WAITING if result.pending == 0 else Status.PENDING_STARTED
