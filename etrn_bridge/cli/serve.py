"""``etrn-bridge serve``: run the ETRN listener until SIGTERM/SIGINT.

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
from dataclasses import dataclass

from etrn_bridge.audit import AuditLog
from etrn_bridge.backends.reconcile import start_reconciler
from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.config import Config, ListenAddress
from etrn_bridge.frontends.listener import Listener
from etrn_bridge.frontends.passwords import PasswordFileError
from etrn_bridge.frontends.sockets import bind_listeners, bound_name
from etrn_bridge.service import Service

# Seconds an ETRN in progress may take to answer after SIGTERM before its session is cut.
SHUTDOWN_GRACE = 10.0
EXIT_OK = 0
EXIT_FAILURE = 1
READY_MESSAGE = "ready, listening on %s"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SUPERVISED_SIGNALS = {*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD}
LOG_FORMAT = "etrn-bridge[%(process)d]: %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("etrn_bridge.serve")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the ETRN listener", description="Run the ETRN listener."
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
    # The policy lives as long as the process: out of the collector's full scans,
    # which over a big policy's objects stop sessions for 0.1 s and more.
    gc.freeze()
    if config.workers == 1:
        return run_worker(runtime, runtime.socket_sets[0])
    return supervise(runtime)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT, level=logging.INFO)
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


def prepare(config: Config) -> Runtime:
    """Open, load and bind everything that may need root, then drop to ``user``."""
    loop_factory = event_loop_factory(config.event_loop)
    audit = AuditLog(config.audit.file, config.audit.syslog, config.audit.syslog_address)
    try:
        service = Service.from_config(config, audit)
        listener = Listener.from_config(config, service)
        socket_sets = bind_worker_sockets(config)
    except BaseException:
        audit.close()
        raise
    if config.user is not None:
        drop_privileges(config.user)
    elif os.geteuid() == 0:
        log.warning("running as root: set 'user:' in the config to drop privileges")
    return Runtime(config, audit, service, listener, socket_sets, loop_factory)


def bind_worker_sockets(config: Config) -> list[list[socket.socket]]:
    """One set of listening sockets per worker, all bound here while still root.

    Several workers get SO_REUSEPORT sockets of their own so the kernel spreads
    connections across them: on one shared socket the worker that happens to be
    awake takes nearly all of them.
    """
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
    runtime.audit.reopen()
    log.info("SIGHUP: audit file re-opened")
    runtime.service.reload_in_background(runtime.config.path)


async def serve(runtime: Runtime, sockets: list[socket.socket]) -> int:
    try:
        stop = install_signal_handlers(runtime)
        # A supervising parent forks with these blocked, so none is lost (or kills
        # the worker by default action) before the handlers above exist.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISED_SIGNALS)
        await runtime.listener.serve(sockets)
        reconciling = start_reconciler(runtime.config.index, lambda: runtime.service.backend)
        log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
        log.info(READY_MESSAGE, " ".join(bound_name(sock) for sock in sockets))
        await stop.wait()
        if reconciling is not None:
            reconciling.cancel()
        log.info("stopping: closing sessions, waiting for flushes still running")
        await runtime.listener.stop(SHUTDOWN_GRACE)
        await runtime.service.drain()
    finally:
        runtime.audit.close()
    log.info("stopped")
    return EXIT_OK


def install_signal_handlers(runtime: Runtime) -> asyncio.Event:
    """SIGTERM/SIGINT set the returned event; SIGHUP calls :func:`on_sighup`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup, runtime)
    return stop


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
    runtime.audit.close()
    log.info("started %d workers: %s", len(workers), " ".join(map(str, sorted(workers))))
    status = EXIT_OK
    stopping = False
    while workers:
        signum = signal.sigwait(SUPERVISED_SIGNALS)
        if signum != signal.SIGCHLD:
            stopping = stopping or signum in STOP_SIGNALS
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
