"""The Prometheus observer: the only module that imports prometheus_client.

It counts what the service reports (:mod:`etrn_bridge.observer`) in a registry
of its own (so each process, and each test, has its own counts) and serves it
over HTTP with prometheus_client's own server thread. Names follow Prometheus
conventions: ``_total`` for counters, base units (``_seconds``) for histograms.
With ``workers: N`` each worker has its own registry and endpoint (port +
worker index); a scraper sums them. Multiprocess mode would need a shared
directory set before the library is imported and loses callback gauges, for no
gain a ``sum()`` in PromQL does not give.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from etrn_bridge.metrics.settings import MetricsSettings
from etrn_bridge.request import FlushResult, Outcome, Request, Status

PREFIX = "etrn_bridge"
# From a coalesced reply (~1 ms) to a flush that lists a big queue or hits its timeout.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
NO_RULE = "-"  # decisions no policy entry made (the default refusal)

log = logging.getLogger("etrn_bridge.metrics")


class PrometheusObserver:
    """Counts requests, decisions, backend runs and reloads for one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open fds of this process
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "ETRN requests answered, by front end, outcome status and reply code.",
            ["frontend", "status", "code"],
            registry=registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions",
            "Policy decisions, by verdict and the id of the entry that made it ('-': none).",
            ["decision", "rule"],
            registry=registry,
        )
        self.reply_seconds = Histogram(
            f"{PREFIX}_reply_seconds",
            "Time from a request reaching the service to its reply, by front end.",
            ["frontend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.coalesced = Counter(
            f"{PREFIX}_coalesced",
            "Requests answered with the result of another request's backend run.",
            registry=registry,
        )
        self.rate_limited = Counter(
            f"{PREFIX}_rate_limited",
            "Requests refused because the client exceeded limits.per_client.",
            registry=registry,
        )
        self.backend_runs = Counter(
            f"{PREFIX}_backend_runs",
            "Backend flush runs, by backend and result (started, failed, unsupported).",
            ["backend", "result"],
            registry=registry,
        )
        self.backend_seconds = Histogram(
            f"{PREFIX}_backend_run_seconds",
            "Time a backend took to answer a flush (Exim deliveries may go on after it).",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.flushed_messages = Counter(
            f"{PREFIX}_flushed_messages",
            "Queued messages selected by backend runs that started (when the backend counts).",
            ["backend"],
            registry=registry,
        )
        self.reloads = Counter(
            f"{PREFIX}_reloads",
            "Config reloads, by result (success, failure: the previous policy stayed).",
            ["result"],
            registry=registry,
        )
        self._index: tuple[int, float | None] | None = None  # as last reported

    # Observer ------------------------------------------------------------------

    def request_handled(self, request: Request, outcome: Outcome, reply_code: str) -> None:
        frontend = request.frontend
        self.requests.labels(frontend, outcome.status.value, reply_code).inc()
        self.reply_seconds.labels(frontend).observe(outcome.duration)
        decision = outcome.decision
        if decision is not None:
            verdict = "allow" if decision.allowed else "deny"
            self.decisions.labels(verdict, decision.rule or NO_RULE).inc()
        if outcome.coalesced:
            self.coalesced.inc()
        if outcome.status is Status.RATE_LIMITED:
            self.rate_limited.inc()

    def backend_ran(self, backend: str, result: FlushResult, seconds: float) -> None:
        self.backend_runs.labels(backend, _run_result(result)).inc()
        self.backend_seconds.labels(backend).observe(seconds)
        if result.started and result.pending:
            self.flushed_messages.labels(backend).inc(result.pending)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()

    def index_reported(self, messages: int, reconciled_at: float | None) -> None:
        if self._index is None:  # exported once an index exists, not before
            Gauge(
                f"{PREFIX}_index_messages",
                "Queued messages the queue index knows of.",
                registry=self.registry,
            ).set_function(self._index_messages)
            Gauge(
                f"{PREFIX}_index_age_seconds",
                "Seconds since the queue index was last reconciled with the MTA's queue.",
                registry=self.registry,
            ).set_function(self._index_age)
        self._index = (messages, reconciled_at)

    # Front end facts and the endpoint --------------------------------------------

    def count_sessions(self, open_sessions: Callable[[], int]) -> None:
        """Export the number of SMTP sessions open, read at each scrape."""
        Gauge(
            f"{PREFIX}_sessions_open",
            "SMTP sessions open on the ETRN listener.",
            registry=self.registry,
        ).set_function(open_sessions)

    def serve(self, settings: MetricsSettings, worker: int = 0) -> WSGIServer:
        """Start the HTTP endpoint (a daemon thread); worker i serves on port + i."""
        port = settings.port + worker if settings.port else 0
        server, _thread = start_http_server(port, settings.host, registry=self.registry)
        host, bound_port = str(server.server_address[0]), server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics on http://%s:%d/metrics", shown, bound_port)
        return server

    def _index_messages(self) -> float:
        return math.nan if self._index is None else self._index[0]

    def _index_age(self) -> float:
        reconciled_at = None if self._index is None else self._index[1]
        return math.nan if reconciled_at is None else max(0.0, time.time() - reconciled_at)


def _run_result(result: FlushResult) -> str:
    if result.unsupported:
        return "unsupported"
    return "started" if result.started else "failed"
