"""``etrn-bridge doctor -c FILE``: is the configured MTA ready for the bridge?

Runs the MTA's own programs as the bridge would (same prefix, args, paths) and
prints one line per finding: what works, what must change (exit 1), and what
should change. The user checked is the one the flush commands will run as.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sqlite3
from collections.abc import Sequence

from etrn_bridge.backends.base import create_backend
from etrn_bridge.backends.mta import Finding, Level, MtaBackend
from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.config import Config
from etrn_bridge.queueindex.settings import IndexSettings
from etrn_bridge.queueindex.store import QueueIndex

MARKS = {Level.OK: "ok    ", Level.FIX: "FIX   ", Level.ADVICE: "advice"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check that the configured MTA lets the bridge flush, and how to fix it"
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def uses_sudo(command_prefix: Sequence[str]) -> bool:
    return bool(command_prefix) and os.path.basename(command_prefix[0]) == "sudo"


def bridge_user(config_user: str | None) -> str:
    """Who the bridge runs as: ``user:`` (serve drops to it), else whoever runs doctor."""
    return config_user or pwd.getpwuid(os.geteuid()).pw_name


def flushing_user(command_prefix: Sequence[str], config_user: str | None) -> str:
    """Who runs the MTA commands: sudo's target user, else the bridge's own user."""
    if uses_sudo(command_prefix):
        prefix = list(command_prefix)
        return prefix[prefix.index("-u") + 1] if "-u" in prefix[:-1] else "root"
    return bridge_user(config_user)


async def check_sudo(backend: MtaBackend, user: str) -> list[Finding]:
    """May ``user`` run each of the backend's commands through the configured sudo?

    Doctor usually runs as root, for whom sudo always works; ``sudo -l -U USER
    COMMAND`` asks the sudoers policy about the bridge's own user instead.
    """
    sudo, *options = backend.command_prefix
    findings = []
    for sample in backend.command_samples:
        command = [backend.program, *backend.args, *sample]
        # Only root may ask about another user; anyone may ask about themselves.
        about = ["-U", user] if os.geteuid() == 0 else []
        listed = await backend.run_argv([sudo, "-l", *about, *options, *command])
        shown = " ".join(command)
        if listed.ok:
            findings.append(Finding(Level.OK, f"sudo lets {user} run: {shown}"))
        else:
            findings.append(
                Finding(
                    Level.FIX,
                    f"sudo does not let {user} run: {shown} "
                    f"(add the sudoers line of the {backend.name}/README.md kit)",
                )
            )
    return findings


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    backend = create_backend(config.backend)  # the loader has validated its options
    if not isinstance(backend, MtaBackend):
        print(f"ok     backend {backend.name!r} runs no MTA program: nothing to check")
        return 0
    return asyncio.run(diagnose(config, backend))


async def diagnose(config: Config, backend: MtaBackend) -> int:
    user = flushing_user(backend.command_prefix, config.user)
    targets = [target for entry in config.policy.allow for target in entry.targets]
    print(f"backend {backend.name}: {' '.join(backend.command())} (commands run as {user})")
    findings = await backend.diagnose(user, targets)
    runs_as = bridge_user(config.user)
    if uses_sudo(backend.command_prefix) and runs_as != "root":
        findings.extend(await check_sudo(backend, runs_as))
    if config.index is not None:
        findings.append(check_index(config.index, runs_as))
    for finding in findings:
        print(f"{MARKS[finding.level]} {finding.text}")
    ready = all(finding.level is not Level.FIX for finding in findings)
    print("ready" if ready else "NOT ready: change the FIX lines above")
    return 0 if ready else 1


def check_index(settings: IndexSettings, user: str) -> Finding:
    """Can ``user`` write the index (SQLite also creates -wal/-shm beside it), and how
    fresh is it?"""
    directory = settings.file.parent
    try:
        owner = directory.stat().st_uid
    except OSError as exc:
        return Finding(Level.FIX, f"index: {directory}: {exc.strerror} (create it for {user})")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return Finding(Level.FIX, f"index: no such user {user!r}")
    if uid not in (0, owner):  # root writes anywhere
        return Finding(
            Level.FIX,
            f"index: {directory} is not {user}'s: install -d -o {user} {directory}",
        )
    if not settings.file.exists():
        return Finding(Level.OK, f"index: {settings.file} will be created by serve")
    index = QueueIndex(settings.file)
    try:
        rows, age = index.stats()
    except sqlite3.Error as exc:
        return Finding(Level.FIX, f"index: {settings.file} unreadable ({exc}): remove it")
    finally:
        index.close()
    when = "never reconciled" if age is None else f"reconciled {age:.0f} s ago"
    return Finding(Level.OK, f"index: {settings.file}: {rows} messages, {when}")
