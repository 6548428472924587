"""``etrn-bridge flush -c FILE TARGET [--dry-run]``: one flush, as an admin would run it.

The same backend and exact selection as the listener, without the policy: the
caller is the administrator. ``--dry-run`` lists the queue ids it would flush.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd

from etrn_bridge.audit import AuditLog, flush_record
from etrn_bridge.backends.base import Backend, create_backend
from etrn_bridge.backends.mta import ListingError, MtaBackend, UnknownQueue
from etrn_bridge.backends.reconcile import with_index
from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target, TargetError, parse_target


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "flush", help="flush exactly one target with the configured backend (no policy)"
    )
    add_config_argument(parser)
    parser.add_argument("target", help="node, @node (with subdomains) or #queue")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the queue ids that would be flushed"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        target = parse_target(args.target)
    except TargetError as exc:
        print(f"{args.target!r}: {exc.reason}")
        return 2
    config = load_or_report(args.config)
    if config is None:
        return 1
    # The loader has validated its options.
    backend = with_index(create_backend(config.backend), config.index)
    if args.dry_run:
        return asyncio.run(dry_run(backend, target))
    audit = AuditLog(config.audit.file, config.audit.syslog, config.audit.syslog_address)
    try:
        return asyncio.run(flush(backend, target, audit))
    finally:
        audit.close()


async def dry_run(backend: Backend, target: Target) -> int:
    if not isinstance(backend, MtaBackend):
        print(f"{target}: the {backend.name} backend cannot list a queue")
        return 1
    try:
        selected = await backend.selected(target)
    except (ListingError, UnknownQueue) as exc:
        print(f"{target}: cannot list the queue: {exc}")
        return 1
    if selected is None:
        print(f"{target}: not supported by the {backend.name} backend")
        return 1
    selection, source = selected
    for queue_id in selection.queue_ids:
        print(queue_id)
    print(f"{target}: {len(selection.queue_ids)} message(s) would be flushed (from the {source})")
    if selection.shared:
        print(
            f"{target}: {selection.shared} of them also have recipients elsewhere; "
            "the MTA delivers whole messages, so those are attempted too"
        )
    return 0


async def flush(backend: Backend, target: Target, audit: AuditLog) -> int:
    result = await backend.flush(target)
    print(describe(target, result))
    if result.completion is not None:
        result = await result.completion  # an admin waits for Exim's foreground delivery
        print(f"{target}: delivery run ended: {describe(target, result)}")
    # Every flush the tool starts is audited, the administrator's too.
    audit.write(flush_record("admin_flush", target, backend.name, result, user=invoking_user()))
    return 0 if result.started else 1


def invoking_user() -> str:
    """The administrator: sudo's caller when run through sudo, else the real user."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def describe(target: Target, result: FlushResult) -> str:
    if result.unsupported:
        return f"{target}: not supported ({result.detail})"
    if not result.started:
        return f"{target}: FAILED (exit {result.exit_status}): {result.detail}"
    if result.pending == 0:
        return f"{target}: no messages waiting"
    ids = " ".join(result.queue_ids)
    count = "unknown number of" if result.pending is None else str(result.pending)
    shared = f" ({result.shared} also addressed elsewhere)" if result.shared else ""
    return f"{target}: flush started for {count} message(s){shared} {ids}".rstrip()
