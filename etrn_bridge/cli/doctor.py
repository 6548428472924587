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
from collections.abc import Sequence

from etrn_bridge.backends.base import create_backend
from etrn_bridge.backends.mta import Level, MtaBackend
from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.config import Config

MARKS = {Level.OK: "ok    ", Level.FIX: "FIX   ", Level.ADVICE: "advice"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check that the configured MTA lets the bridge flush, and how to fix it"
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def flushing_user(command_prefix: Sequence[str], config_user: str | None) -> str:
    """Who runs the MTA commands: sudo's target user, else the bridge's own user."""
    if command_prefix and os.path.basename(command_prefix[0]) == "sudo":
        prefix = list(command_prefix)
        return prefix[prefix.index("-u") + 1] if "-u" in prefix[:-1] else "root"
    return config_user or pwd.getpwuid(os.geteuid()).pw_name


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
    for finding in findings:
        print(f"{MARKS[finding.level]} {finding.text}")
    ready = all(finding.level is not Level.FIX for finding in findings)
    print("ready" if ready else "NOT ready: change the FIX lines above")
    return 0 if ready else 1
