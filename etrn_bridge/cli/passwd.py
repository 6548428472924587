"""``etrn-bridge passwd USER``: print a ``user:hash`` line for the AUTH password file."""

from __future__ import annotations

import argparse
import getpass
import sys

from etrn_bridge.frontends.passwords import hash_password

EXIT_OK = 0
EXIT_FAILURE = 1


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "passwd",
        help="hash a password for auth.passwords_file",
        description="Read a password (from the terminal, twice, or one line of stdin) and "
        "print 'USER:HASH' for the password file.",
    )
    parser.add_argument("user", help="the AUTH user name")
    parser.add_argument(
        "--scheme",
        choices=("scrypt", "argon2"),
        default="scrypt",
        help="hash scheme (argon2 needs the argon2 extra)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if ":" in args.user or not args.user.isprintable() or not args.user:
        print("passwd: the user name must be printable and without ':'", file=sys.stderr)
        return EXIT_FAILURE
    password = read_password()
    if not password:
        print("passwd: empty password", file=sys.stderr)
        return EXIT_FAILURE
    try:
        encoded = hash_password(password, args.scheme)
    except ImportError:
        print("passwd: argon2 needs 'pip install etrn-bridge[argon2]'", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.user}:{encoded}")
    return EXIT_OK


def read_password() -> str | None:
    """Twice from a terminal; otherwise the first line of stdin (for scripts)."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("passwd: the passwords differ", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")
