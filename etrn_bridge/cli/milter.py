"""``etrn-bridge milter``: the process that feeds the queue index as mail is queued.

It runs the milter for Postfix and Sendmail (``milter.socket``) and, when
``milter.exim_feed`` is set, the Exim feed. A process of its own because
libmilter owns its threads and its signals (SIGTERM/SIGINT stop it). The
policy's domains are re-read when the config file changes (checked every few
seconds in a thread; libmilter keeps SIGHUP for itself).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from etrn_bridge.audit import AuditLog
from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.cli.serve import EXIT_FAILURE, EXIT_OK, drop_privileges, setup_logging
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.feeds.exim import start_exim_feed
from etrn_bridge.feeds.recorder import QueueRecorder
from etrn_bridge.feeds.settings import MilterSettings
from etrn_bridge.queueindex.store import QueueIndex

log = logging.getLogger("etrn_bridge.milter")

# Seconds between checks of the config file for a new policy.
CONFIG_POLL = 5.0
READY_MESSAGE = "ready: milter %s, exim feed %s"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "milter",
        help="feed the queue index from the MTA (milter for Postfix/Sendmail, Exim feed)",
        description="Record queued mail for the policy's domains in the queue index: a "
        "milter for Postfix and Sendmail, and a line protocol for Exim's data ACL.",
    )
    add_config_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return EXIT_FAILURE
    setup_logging(args.verbose)
    if config.index is None:
        log.error("cannot start: the milter writes the queue index; configure index:")
        return EXIT_FAILURE
    settings = config.milter or MilterSettings()
    audit = AuditLog(config.audit.file, config.audit.syslog, config.audit.syslog_address)
    index = QueueIndex(config.index.file)
    try:
        if config.user is not None:
            drop_privileges(config.user)
        os.umask(settings.umask)
        recorder = QueueRecorder(index, config.policy, audit)
        threading.Thread(
            target=follow_config, args=(config, recorder), name="config", daemon=True
        ).start()
        return serve(settings, recorder)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    finally:
        index.close()
        audit.close()


def serve(settings: MilterSettings, recorder: QueueRecorder) -> int:
    exim = None
    if settings.exim_feed is not None:
        exim = start_exim_feed(settings.exim_feed, recorder)
    try:
        log.info(
            READY_MESSAGE,
            settings.socket if settings.enabled else "off",
            "{}:{}".format(*settings.exim_feed) if settings.exim_feed else "off",
        )
        if settings.enabled:
            # Imported here: pymilter (the [milter] extra) is needed only to run the milter.
            from etrn_bridge.feeds.milter import run_milter  # noqa: PLC0415

            run_milter(recorder, settings.socket, settings.timeout)
        else:
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        if exim is not None:
            exim.shutdown()
            exim.server_close()
    log.info("stopped")
    return EXIT_OK


def follow_config(config: Config, recorder: QueueRecorder) -> None:
    """Put a changed config file's policy in force (a bad file keeps the old one)."""
    path = Path(config.path)
    seen = _mtime(path)
    while True:
        threading.Event().wait(CONFIG_POLL)
        current = _mtime(path)
        if current == seen:
            continue
        seen = current
        try:
            recorder.policy = load_config(path).policy
            log.info("reload: %s is in force", path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload: %s is invalid; the previous policy stays in force", path)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
