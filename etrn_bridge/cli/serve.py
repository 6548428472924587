"""``etrn-bridge serve``: run the ETRN listener and the MTA hooks until SIGTERM/SIGINT.

Order matters, as in Postfix: read everything that may need root (config,
TLS key, password file, audit file) and bind the ports, then drop to the
configured user, then accept connections. With ``workers: N`` the process
that did all that forks N workers which inherit it, and supervises them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import grp
import logging
import os
import pwd
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from etrn_bridge.audit import AuditLog
from etrn_bridge.backends.reconcile import start_reconciler
from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.config import Config, ListenAddress
from etrn_bridge.frontends.hooks import Hooks
from etrn_bridge.frontends.listener import Listener
from etrn_bridge.frontends.passwords import PasswordFileError
from etrn_bridge.frontends.sockets import bind_listeners, bound_name
from etrn_bridge.policy.model import Policy
from etrn_bridge.service import Service
from etrn_bridge.systemd import Notifier, listen_fds, status_line

if TYPE_CHECKING:
    from etrn_bridge.metrics.prometheus import PrometheusObserver

# Seconds an ETRN in progress may take to answer after SIGTERM before its session is
# cut. Its flush goes on after that, up to the backend's timeout, and is audited; a
# second SIGTERM/SIGINT cuts everything at once (audited as cut).
SHUTDOWN_GRACE = 10.0
EXIT_OK = 0
EXIT_FAILURE = 1
READY_MESSAGE = "ready, listening on %s"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SUPERVISED_SIGNALS = {*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD}
LOG_FORMAT = "etrn-bridge[%(process)d]: %(levelname)s %(name)s: %(message)s"
# Seconds between STATUS= updates (request counts) to the service manager.
STATUS_INTERVAL = 5.0

log = logging.getLogger("etrn_bridge.serve")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the ETRN listener and the MTA hooks",
        description="Run the ETRN listener and the MTA hooks the config names.",
    )
    add_config_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every SMTP line")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return EXIT_FAILURE
    setup_logging(args.verbose)
    try:
        runtime = prepare(config)
    except (OSError, PasswordFileError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    del config  # its policy is the service's alone now (see prepare)
    # The policy lives as long as the process: out of the collector's full scans,
    # which over a big policy's objects stop sessions for 0.1 s and more.
    gc.freeze()
    if runtime.config.workers == 1:
        return run_worker(runtime, runtime.socket_sets[0])
    return supervise(runtime)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT, level=logging.INFO)
    # LOG_FORMAT names no source line, thread or multiprocessing name: skip finding
    # them for every record (logging HOWTO, "Optimization"), a line per request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # aiosmtpd logs every line at INFO; keep that for -v (it includes client data).
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("etrn_bridge").setLevel(logging.DEBUG)


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything prepared before privileges are dropped; what signal handlers act on."""

    config: Config
    audit: AuditLog
    service: Service
    listener: Listener
    socket_sets: list[list[socket.socket]]  # the listening sockets of each worker
    loop_factory: LoopFactory | None  # None: asyncio's own loop
    notifier: Notifier  # systemd's notify socket (does nothing outside systemd)
    metrics: PrometheusObserver | None = None  # its endpoint starts in each worker
    hooks: Hooks = field(default_factory=lambda: Hooks([]))  # plugin mode, shared by workers


def prepare(config: Config) -> Runtime:
    """Open, load and bind everything that may need root, then drop to ``user``."""
    loop_factory = event_loop_factory(config.event_loop)
    notifier = Notifier.from_environment()
    audit = AuditLog(config.audit.file, config.audit.syslog, config.audit.syslog_address)
    metrics = metrics_observer(config)
    try:
        service = Service.from_config(config, audit, observer=metrics)
        # The rest keep the settings only: were the startup policy held here too,
        # the first reload could never free it (release.py waits for its users).
        config = replace(config, policy=Policy())
        listener = Listener.from_config(config, service)
        if metrics is not None:
            metrics.count_sessions(lambda: len(listener.sessions))
        socket_sets = bind_worker_sockets(config)
    except BaseException:
        audit.close()
        raise
    try:
        hooks = Hooks.bind(config, service)
    except BaseException:
        close_sockets(socket_sets)
        audit.close()
        raise
    if config.user is not None:
        drop_privileges(config.user)
    elif os.geteuid() == 0:
        log.warning("running as root: set 'user:' in the config to drop privileges")
    return Runtime(
        config, audit, service, listener, socket_sets, loop_factory, notifier, metrics, hooks
    )


def metrics_observer(config: Config) -> PrometheusObserver | None:
    if config.metrics is None:
        return None
    # Imported only when configured: nothing else loads the metrics library.
    from etrn_bridge.metrics.prometheus import PrometheusObserver  # noqa: PLC0415

    return PrometheusObserver()


def bind_worker_sockets(config: Config) -> list[list[socket.socket]]:
    """One set of listening sockets per worker, all bound here while still root.

    Several workers get SO_REUSEPORT sockets of their own so the kernel spreads
    connections across them: on one shared socket the worker that happens to be
    awake takes nearly all of them. Sockets passed by systemd (socket activation)
    replace ``listen:``; workers then share them, as the unit bound them once.
    """
    activated = listen_fds()
    if activated:
        log.info("socket activation: %d sockets from the service manager", len(activated))
        return [activated] + [[s.dup() for s in activated] for _ in range(config.workers - 1)]
    first = bind_listeners(config.listen, reuse_port=config.workers > 1)
    socket_sets = [first]
    try:
        # The addresses actually bound, so that port 0 means the same port for all.
        bound = [ListenAddress(*sock.getsockname()[:2]) for sock in first]
        socket_sets += [bind_listeners(bound, reuse_port=True) for _ in range(config.workers - 1)]
    except BaseException:
        close_sockets(socket_sets)
        raise
    return socket_sets


def close_sockets(socket_sets: Iterable[Iterable[socket.socket]]) -> None:
    for sockets in socket_sets:
        for sock in sockets:
            sock.close()


def event_loop_factory(name: str) -> LoopFactory | None:
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 (an optional extra, imported only when asked for)
    except ImportError:
        raise OSError(
            "event_loop: uvloop is not installed (pip install 'etrn-bridge[uvloop]')"
        ) from None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run_worker(runtime: Runtime, sockets: list[socket.socket]) -> int:
    with asyncio.Runner(loop_factory=runtime.loop_factory) as runner:
        return runner.run(serve(runtime, sockets))


def on_sighup(runtime: Runtime) -> None:
    """SIGHUP: re-open the audit file after rotation, then re-read the config's policy
    (built off the event loop, so sessions are answered while it loads)."""
    runtime.notifier.reloading()
    runtime.audit.reopen()
    log.info("SIGHUP: audit file re-opened")
    reload = runtime.service.reload_in_background(runtime.config.path)
    reload.add_done_callback(lambda done: reload_finished(runtime, done))


def reload_finished(runtime: Runtime, done: asyncio.Task[bool]) -> None:
    """Tell the service manager the reload is over, and how it went."""
    reloaded = not done.cancelled() and done.exception() is None and done.result()
    verdict = "reloaded" if reloaded else "reload FAILED, previous policy in force"
    runtime.notifier.ready(f"{verdict}; {status_line(runtime.service.counts)}")


async def report_status(runtime: Runtime) -> None:
    """Keep ``systemctl status`` showing the request counts."""
    reported = ""
    while True:
        await asyncio.sleep(STATUS_INTERVAL)
        line = status_line(runtime.service.counts)
        if line != reported:
            runtime.notifier.status(line)
            reported = line


async def serve(runtime: Runtime, sockets: list[socket.socket]) -> int:
    try:
        stop, cut_now = install_signal_handlers(runtime)
        # A supervising parent forks with these blocked, so none is lost (or kills
        # the worker by default action) before the handlers above exist.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISED_SIGNALS)
        await runtime.service.start()
        await runtime.listener.serve(sockets)
        await runtime.hooks.serve()
        if not start_metrics(runtime, sockets):
            return EXIT_FAILURE
        reconciling = start_reconciler(
            runtime.config.index,
            lambda: runtime.service.backend,
            runtime.service.observer.index_reported,
        )
        log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
        hook_names = [f"{s.name}@{s.settings.listen}" for s in runtime.hooks.servers]
        addresses = " ".join([*(bound_name(sock) for sock in sockets), *hook_names])
        log.info(READY_MESSAGE, addresses)
        runtime.notifier.ready(f"listening on {addresses}")
        reporter = asyncio.create_task(report_status(runtime)) if runtime.notifier.enabled else None
        await stop.wait()
        runtime.notifier.stopping()
        if reporter:
            reporter.cancel()
        if reconciling is not None:
            reconciling.cancel()
        log.info("stopping: closing sessions, waiting for flushes still running")
        await asyncio.gather(
            runtime.listener.stop(SHUTDOWN_GRACE, cut_now),
            runtime.hooks.stop(SHUTDOWN_GRACE),
        )
        await runtime.service.drain(cut_now=cut_now)
    finally:
        runtime.audit.close()
    log.info("stopped")
    return EXIT_OK


def start_metrics(runtime: Runtime, sockets: list[socket.socket]) -> bool:
    """Serve the metrics endpoint of this worker (if configured) until the process ends."""
    if runtime.metrics is None or runtime.config.metrics is None:
        return True
    try:
        runtime.metrics.serve(runtime.config.metrics, runtime.socket_sets.index(sockets))
    except OSError as exc:
        log.error("cannot start: metrics endpoint: %s", exc)
        return False
    return True


def install_signal_handlers(runtime: Runtime) -> tuple[asyncio.Event, asyncio.Event]:
    """SIGTERM/SIGINT set the first event (stop), a second one the second (cut
    what still runs); SIGHUP calls :func:`on_sighup`."""
    loop = asyncio.get_running_loop()
    stop, cut_now = asyncio.Event(), asyncio.Event()

    def on_stop_signal() -> None:
        (cut_now if stop.is_set() else stop).set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, on_sighup, runtime)
    return stop, cut_now


# Worker processes ----------------------------------------------------------------


def supervise(runtime: Runtime) -> int:
    """Fork one worker per socket set; forward signals; wait for them all.

    The workers inherit their sockets, already bound, and the privileges already
    dropped. No worker is restarted: one that dies stops the others and the exit
    status is 1, for the service manager to act on.
    """
    # Blocked here and in the workers until they install handlers; the parent
    # takes them synchronously with sigwait, so it needs no handler at all.
    signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED_SIGNALS)
    workers = {fork_worker(runtime, index) for index in range(len(runtime.socket_sets))}
    # The workers own these now: the port closes when the last worker stops listening.
    close_sockets(runtime.socket_sets)
    runtime.hooks.close()
    runtime.audit.close()
    log.info("started %d workers: %s", len(workers), " ".join(map(str, sorted(workers))))
    # The workers' sockets were listening before the fork: connections queue until they accept.
    worker_status = f"{len(workers)} workers"
    runtime.notifier.ready(worker_status)
    status = EXIT_OK
    stopping = False
    while workers:
        signum = signal.sigwait(SUPERVISED_SIGNALS)
        if signum == signal.SIGHUP:
            # Each worker reloads on its own; the parent cannot wait for them.
            runtime.notifier.reloading()
            signal_workers(workers, signum)
            runtime.notifier.ready(worker_status)
            continue
        if signum != signal.SIGCHLD:
            if not stopping:
                runtime.notifier.stopping()
            stopping = True
            signal_workers(workers, signum)
            continue
        for pid, code in reap(workers):
            workers.discard(pid)
            if not stopping:
                log.error("worker %d ended (status %d): stopping the others", pid, code)
                status = EXIT_FAILURE
                stopping = True
                signal_workers(workers, signal.SIGTERM)
    log.info("all workers stopped")
    return status


def fork_worker(runtime: Runtime, index: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # Only the supervising parent (systemd's main process) speaks to systemd.
    runtime.notifier.silence()
    mine = runtime.socket_sets[index]
    # Another worker's socket left open here would keep its share of connections
    # queued, unanswered, after that worker ended.
    close_sockets(other for other in runtime.socket_sets if other is not mine)
    try:
        code = run_worker(runtime, mine)
    except BaseException:
        log.exception("worker failed")
        code = EXIT_FAILURE
    os._exit(code)  # never return into the parent's loop


def signal_workers(workers: Iterable[int], signum: int) -> None:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):  # ended, not yet reaped
            os.kill(pid, signum)


def reap(workers: Iterable[int]) -> list[tuple[int, int]]:
    """(pid, exit code) of every worker that has ended; -N for death by signal N."""
    ended = []
    for pid in list(workers):
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.append((pid, os.waitstatus_to_exitcode(wait_status)))
    return ended


def drop_privileges(user: str) -> None:
    """Become ``user`` for good: supplementary groups, then group, then user (Postfix order)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise OSError(f"no such user {user!r}") from None
    if os.geteuid() != 0:
        if os.geteuid() != entry.pw_uid:
            raise OSError(f"cannot switch to user {user!r} without root")
        return
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as %s:%s", user, grp.getgrgid(entry.pw_gid).gr_name)
