"""The ``etrn-bridge`` command: one module per subcommand, dispatched here.

Each subcommand module exposes ``add_parser(subparsers)`` which registers its
parser and sets ``run`` (``args -> exit status``) as the parser's default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from etrn_bridge import __version__

# Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "serve",
    "milter",
    "check",
    "explain",
    "send",
    "flush",
    "audit",
    "doctor",
    "schema",
    "passwd",
)

# sysexits.h EX_USAGE, for command-line misuse.
EXIT_USAGE = 2


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` that subcommand's part of it."""
    parser = argparse.ArgumentParser(
        prog="etrn-bridge",
        description="A policy-driven RFC 1985 ETRN front end for Postfix, Exim and Sendmail.",
    )
    parser.add_argument("--version", action="version", version=f"etrn-bridge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS if only is None else (only,):
        importlib.import_module(f"etrn_bridge.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # A subcommand named first needs only its own module: all of them import
    # asyncio, jsonschema, the backends (0.3 s before a short command starts).
    named = arguments[0] if arguments and arguments[0] in SUBCOMMANDS else None
    parser = build_parser(named)
    args = parser.parse_args(arguments)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    status: int = args.run(args)
    return status
