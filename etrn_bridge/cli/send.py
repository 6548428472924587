"""``etrn-bridge send``: ask a server to flush (a client, like fetchmail's ETRN mode or etrn.pl).

Exit status: 0 when every ETRN got a 25x reply, 1 when one did not, 2 when the
session itself failed (connection, TLS, AUTH, or ETRN not advertised).
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import ssl
import sys
from pathlib import Path

EXIT_ALL_STARTED = 0
EXIT_SOME_REFUSED = 1
EXIT_SESSION_FAILED = 2
SMTP_PORT = 25  # RFC 5321 §4.5.4.2: the SMTP port, where MTAs answer ETRN
DEFAULT_TIMEOUT = 30.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send ETRN to a server",
        description="Connect, EHLO, optionally STARTTLS and AUTH, then one ETRN per target.",
    )
    parser.add_argument("host", help="server name or address")
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="node, @node or #queue")
    parser.add_argument("--port", type=int, default=SMTP_PORT)
    parser.add_argument("--helo", default=socket.getfqdn(), help="name to send in EHLO")
    parser.add_argument("--starttls", action="store_true", help="require STARTTLS")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--cafile", type=Path, help="CA bundle to verify the server with")
    verify.add_argument(
        "--insecure", action="store_true", help="do not verify the server certificate"
    )
    parser.add_argument("--user", help="AUTH user (needs --starttls and --password-file)")
    parser.add_argument("--password-file", type=Path, help="file whose first line is the password")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    parser.set_defaults(run=run)


class SessionError(Exception):
    """The session cannot go on; the message says why."""


def run(args: argparse.Namespace) -> int:
    if args.user and not (args.password_file and args.starttls):
        print("send: --user needs --password-file and --starttls", file=sys.stderr)
        return EXIT_SESSION_FAILED
    try:
        with smtplib.SMTP(
            args.host, args.port, local_hostname=args.helo, timeout=args.timeout
        ) as smtp:
            open_session(smtp, args)
            codes = [send_etrn(smtp, target) for target in args.targets]
            smtp.quit()
    except (SessionError, smtplib.SMTPException, OSError) as exc:
        print(f"send: {exc}", file=sys.stderr)
        return EXIT_SESSION_FAILED
    return EXIT_ALL_STARTED if all(200 <= code < 260 for code in codes) else EXIT_SOME_REFUSED


def open_session(smtp: smtplib.SMTP, args: argparse.Namespace) -> None:
    """EHLO, then STARTTLS and AUTH when asked; ETRN must be advertised (RFC 1985 §2)."""
    smtp.ehlo()
    if args.starttls:
        if not smtp.has_extn("starttls"):
            raise SessionError("the server does not offer STARTTLS")
        smtp.starttls(context=client_context(args.cafile, args.insecure))
        smtp.ehlo()
    if args.user:
        password = args.password_file.read_text(encoding="utf-8").splitlines()[0]
        smtp.login(args.user, password)
    if not smtp.has_extn("etrn"):
        raise SessionError("the server does not advertise ETRN")


def client_context(cafile: Path | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


def send_etrn(smtp: smtplib.SMTP, target: str) -> int:
    """Send ``ETRN target`` verbatim and print the reply line; returns its code."""
    code, text = smtp.docmd("ETRN", target)
    print(f"{target}: {code} {text.decode('utf-8', 'backslashreplace')}")
    return code
