"""``etrn-bridge serve``: run the ETRN listener until SIGTERM/SIGINT.

Order matters, as in Postfix: read everything that may need root (config,
TLS key, password file, audit file) and bind the ports, then drop to the
configured user, then accept connections.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import pwd
import signal
import sys
from dataclasses import dataclass

from etrn_bridge.audit import AuditLog
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.frontends.listener import Listener
from etrn_bridge.frontends.passwords import PasswordFileError
from etrn_bridge.frontends.sockets import bind_listeners, bound_name
from etrn_bridge.service import Service

# Seconds an ETRN in progress may take to answer after SIGTERM before its session is cut.
SHUTDOWN_GRACE = 10.0
EXIT_OK = 0
EXIT_FAILURE = 1
READY_MESSAGE = "ready, listening on %s"
LOG_FORMAT = "etrn-bridge[%(process)d]: %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("etrn_bridge.serve")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the ETRN listener", description="Run the ETRN listener."
    )
    parser.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every SMTP line")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    setup_logging(args.verbose)
    try:
        return asyncio.run(serve(config))
    except (OSError, PasswordFileError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT, level=logging.INFO)
    # aiosmtpd logs every line at INFO; keep that for -v (it includes client data).
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("etrn_bridge").setLevel(logging.DEBUG)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What signal handlers act on."""

    config: Config
    audit: AuditLog
    service: Service
    listener: Listener


def on_sighup(runtime: Runtime) -> None:
    """SIGHUP: re-open the audit file after rotation, then re-read the config's policy."""
    runtime.audit.reopen()
    log.info("SIGHUP: audit file re-opened")
    runtime.service.reload_from(runtime.config.path)


async def serve(config: Config) -> int:
    audit = AuditLog(config.audit.file, config.audit.syslog, config.audit.syslog_address)
    try:
        service = Service.from_config(config, audit)
        listener = Listener.from_config(config, service)
        sockets = bind_listeners(config.listen)
        if config.user is not None:
            drop_privileges(config.user)
        elif os.geteuid() == 0:
            log.warning("running as root: set 'user:' in the config to drop privileges")
        stop = install_signal_handlers(Runtime(config, audit, service, listener))
        await listener.serve(sockets)
        log.info(READY_MESSAGE, " ".join(bound_name(sock) for sock in sockets))
        await stop.wait()
        log.info("stopping: closing sessions, waiting for flushes still running")
        await listener.stop(SHUTDOWN_GRACE)
        await service.drain()
    finally:
        audit.close()
    log.info("stopped")
    return EXIT_OK


def install_signal_handlers(runtime: Runtime) -> asyncio.Event:
    """SIGTERM/SIGINT set the returned event; SIGHUP calls :func:`on_sighup`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup, runtime)
    return stop


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
