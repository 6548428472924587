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
from collections import Counter
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etrn_bridge.audit import AuditLog, flush_record, timestamp
from etrn_bridge.backends.base import Backend, create_backend, flush_timeout
from etrn_bridge.backends.reconcile import with_index
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.handoff import start_detached
from etrn_bridge.observer import NullObserver, Observer
from etrn_bridge.policy.index import client_address
from etrn_bridge.policy.limits import LimitSettings
from etrn_bridge.policy.model import Policy
from etrn_bridge.policy.rdns import ForwardConfirmedRdns, Resolver
from etrn_bridge.release import release_in_background
from etrn_bridge.request import (
    REQUEST_ARRIVED,
    Decision,
    FlushResult,
    Outcome,
    Request,
    Status,
)
from etrn_bridge.sharedstate import create_shared_state
from etrn_bridge.sharedstate.base import SharedState, SharedStateUnavailable
from etrn_bridge.sharedstate.local import LocalState
from etrn_bridge.switching import short_switch_interval
from etrn_bridge.target import MissingArgument, Target, TargetError, parse_target

log = logging.getLogger("etrn_bridge")


def _load_and_summarize(path: str | Path, leftovers: list[Any]) -> tuple[Config, dict[str, int]]:
    """Run in a worker thread, with a short switch interval meanwhile: otherwise the
    event loop would wait up to 5 ms for the GIL at every socket call (switching.py)."""
    with short_switch_interval():
        config = load_config(path, leftovers)
        return config, config.policy.summary()


def _replaced_policy_freed() -> None:
    # In the release thread, once the last session using the old policy has ended.
    log.info("reload: the replaced policy is freed")


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
        *,
        observer: Observer | None = None,
        shared: SharedState | None = None,
    ) -> None:
        settings = limits or LimitSettings()
        self._state = PolicyState(policy, settings, backend)
        self.audit = audit
        self.rdns = rdns or ForwardConfirmedRdns()
        self.observer: Observer = observer or NullObserver()
        # Per-client limits, coalescing and flush slots: this process's, or a cluster's.
        self.shared = shared or LocalState(settings.max_concurrent_flushes)
        # Requests being worked on; records of those whose caller left; flushes
        # that go on after the reply (Exim). drain() awaits them all.
        self._requests: set[asyncio.Future[Outcome]] = set()
        self._followers: set[asyncio.Future[None]] = set()
        self._completions: set[asyncio.Future[None]] = set()
        # Requests by how they ended (Status value), for the service manager's STATUS=.
        self.counts: Counter[str] = Counter()
        # Reloads run one after another, so the last one started is the one in force.
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()

    @classmethod
    def from_config(
        cls,
        config: Config,
        audit: AuditLog,
        *,
        resolver: Resolver | None = None,
        observer: Observer | None = None,
    ) -> Service:
        return cls(
            config.policy,
            with_index(create_backend(config.backend), config.index),
            audit,
            config.limits,
            ForwardConfirmedRdns(resolver),
            observer=observer,
            shared=create_shared_state(config.cluster, config.limits.max_concurrent_flushes),
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
        """Handle one request; its audit record is written exactly once, whatever
        happens to the caller.

        The work starts at once and, when it must wait, goes on in a task of its
        own, shielded from the caller (handoff.py): when the caller is cancelled
        (the client closed its connection, the session was cut) a flush that
        started goes on, and its record is written when it ends, marked
        ``client_gone``. Only the caller's return means the front end got the
        outcome to answer with.
        """
        work, handed = start_detached(self._outcome(state, request))
        if not work.done():
            self._track(work, self._requests)
        try:
            outcome = await handed
        except asyncio.CancelledError:
            self._track(self._audit_when_done(work, request), self._followers)
            raise
        self._record(request, outcome)
        return outcome

    async def _outcome(self, state: PolicyState, request: Request) -> Outcome:
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
        return outcome.took(time.monotonic() - started)

    async def _audit_when_done(self, work: asyncio.Future[Outcome], request: Request) -> None:
        """The record of a request whose caller left: written when its work ends."""
        try:
            outcome = await work
        except asyncio.CancelledError:  # cut by drain(): the server is stopping
            parsed = _parse(request)
            target = parsed if isinstance(parsed, Target) else None
            outcome = Outcome(Status.FAILED, target, reason="cut: the server stopped")
            self._record(request, outcome, client_gone=True, cut=True)
            return
        self._record(request, outcome, client_gone=True)

    def _record(
        self, request: Request, outcome: Outcome, *, client_gone: bool = False, cut: bool = False
    ) -> None:
        reply = self.audit.reply_and_record(request, outcome, client_gone=client_gone, cut=cut)
        self.counts[outcome.status.value] += 1
        # The audit record is the request's record; the log repeats it only with
        # serve -v (at thousands of ETRN a second it would double the log's volume).
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "etrn session=%s client=%s target=%s status=%s rule=%s coalesced=%s reply=%s%s",
                request.session_id,
                request.identity.address,
                outcome.target or "-",
                outcome.status.value,
                outcome.decision.rule if outcome.decision else "-",
                outcome.coalesced,
                reply[:3],
                " cut" if cut else " client_gone" if client_gone else "",
            )
        self.observer.request_handled(request, outcome, reply[:3])
        flush, target, backend = outcome.flush, outcome.target, outcome.backend
        if flush is not None and flush.completion is not None and target and backend:
            self._follow_completion(request.session_id, target, backend, flush.completion)

    def _track(self, task: Awaitable[None] | asyncio.Future[Outcome], into: set[Any]) -> None:
        future = asyncio.ensure_future(task)
        into.add(future)
        future.add_done_callback(into.discard)

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
        backend = state.backend
        try:
            if per_client is not None and not await self.shared.admit(client, per_client):
                reason = f"more than {per_client} per client"
                return Outcome(Status.RATE_LIMITED, target, decision, reason=reason, extra=extra)
            ran = await self.shared.run(
                target,
                per_target,
                state.limits.max_concurrent_flushes,
                lambda: _flush(backend, target, self.observer),
                request.session_id,
            )
        except SharedStateUnavailable as exc:
            extra.update(exc.audit)
            return Outcome(Status.FAILED, target, decision, reason=str(exc), extra=extra)
        extra.update(ran.audit)
        return Outcome(
            _status_of(ran.result),
            target,
            decision,
            backend=backend.name,
            flush=ran.result,
            coalesced=ran.coalesced,
            extra=extra,
        )

    async def start(self) -> None:
        """Begin answering other nodes' flush requests (a cluster); in the serving loop."""
        await self.shared.start(self.flush_for_peer)

    async def flush_for_peer(self, target: Target, context: Mapping[str, object]) -> FlushResult:
        """Flush ``target`` here because another node (or this one) fanned out an
        ETRN it allowed; audited as ``cluster_flush`` with ``context`` (origin)."""
        backend = self._state.backend
        result = await _flush(backend, target, self.observer)
        self.audit.write(flush_record("cluster_flush", target, backend.name, result, **context))
        session = str(context.get("origin_session", "-"))
        if result.completion is not None:
            self._follow_completion(session, target, backend.name, result.completion)
        return result

    def reload(self, config: Config, summary: Mapping[str, int] | None = None) -> None:
        """Put a validated config's policy, limits and backend in force."""
        backend = with_index(create_backend(config.backend), config.index)
        self._state = PolicyState(config.policy, config.limits, backend)
        self.audit.write(
            {
                "ts": timestamp(),
                "event": "reload",
                "ok": True,
                "file": str(config.path),
                **(config.policy.summary() if summary is None else summary),
            }
        )
        self.observer.reloaded(ok=True)
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
        # The parse tree and the policy replaced are freed in a thread too: freed
        # on the loop, a 10,000-entry policy would stop every session for 50 ms.
        # (The old backend is let go of on the loop, as before: it may hold
        # connections made there.)
        leftovers: list[Any] = []
        async with self._reload_lock:
            try:
                config, summary = await asyncio.to_thread(_load_and_summarize, path, leftovers)
            except ConfigError as exc:
                self.reload_failed(path, (str(problem) for problem in exc.problems))
                reloaded = False
            else:
                leftovers.append(self._state.policy)
                self.reload(config, summary)
                reloaded = True
        release_in_background(leftovers, _replaced_policy_freed if reloaded else None)
        return reloaded

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
        self.observer.reloaded(ok=False)

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

        self._track(audit_end(), self._completions)

    async def drain(
        self, timeout: float | None = None, cut_now: asyncio.Event | None = None
    ) -> None:
        """Graceful stop: wait for the requests still being worked on, at most
        ``timeout`` seconds (default: the backend's own timeout, after which it
        kills its program anyway) or until ``cut_now`` is set; cut what is left
        (audited as cut); then wait for every record and for flushes still
        running after their reply (Exim)."""
        if self._requests:
            waits: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(asyncio.wait(set(self._requests)))
            }
            if cut_now is not None:
                waits.add(asyncio.ensure_future(cut_now.wait()))
            limit = flush_timeout(self.backend) if timeout is None else timeout
            await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            for work in self._requests:
                work.cancel()
        await self.shared.close()  # stops taking other nodes' requests, ends those taken
        # A cut request's caller reacts a loop turn later (and adds its record's task).
        while self._requests or self._followers or self._completions:
            await asyncio.gather(
                *self._requests, *self._followers, *self._completions, return_exceptions=True
            )
            await asyncio.sleep(0)


async def _flush(backend: Backend, target: Target, observer: Observer) -> FlushResult:
    started = time.monotonic()
    try:
        result = await backend.flush(target)
    except Exception as exc:  # a backend bug must cost one 458, not the server
        log.exception("backend %s failed on %s", backend.name, target)
        result = FlushResult(started=False, detail=f"internal error: {exc!r}")
    observer.backend_ran(backend.name, result, time.monotonic() - started)
    return result


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
