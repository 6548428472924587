"""``etrn-bridge explain``: what the policy decides for a client and target, and why.

Three forms: one query (exit 0 allow, 1 deny, 2 usage or config error);
``--batch FILE`` with one query a line (``IP TARGET [user=U] [fp=F] [rdns=NAME]``);
``--replay AUDIT.jsonl`` re-decides every past ETRN of an audit file under
this config and prints those whose decision would change.

No DNS is done here: ``--rdns NAME`` / ``rdns=NAME`` is taken as the client's
forward-confirmed host name (the server verifies it before deciding).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from etrn_bridge.cli.configfile import add_config_argument, load_or_report
from etrn_bridge.policy.index import client_address
from etrn_bridge.policy.model import Policy
from etrn_bridge.request import Decision, Identity
from etrn_bridge.target import Target, TargetError, parse_target

EXIT_ALLOW = 0
EXIT_DENY = 1
EXIT_USAGE = 2
BATCH_KEYS = {"user": "auth_user", "fp": "tls_fingerprint", "rdns": "rdns"}


@dataclass(frozen=True, slots=True)
class Query:
    identity: Identity
    target: Target
    rdns: tuple[str, ...] = ()

    def decide(self, policy: Policy) -> Decision:
        return policy.decide(self.identity, self.target, self.rdns)


class QueryError(ValueError):
    pass


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "explain", help="show the policy's decision for a client and target, and why"
    )
    add_config_argument(parser)
    parser.add_argument("--client", metavar="IP", help="client address")
    parser.add_argument("--user", help="SMTP AUTH identity")
    parser.add_argument("--tls-fingerprint", metavar="F", help="sha256:AB:CD:... of the cert")
    parser.add_argument("--rdns", metavar="NAME", help="forward-confirmed host name")
    parser.add_argument("target", nargs="?", help="ETRN argument: node, @node or #queue")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--batch", metavar="FILE", help="one query a line; '-' reads stdin")
    mode.add_argument("--replay", metavar="AUDIT", help="audit JSON lines to re-decide")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    policy = config.policy
    try:
        if args.batch:
            return _batch(policy, _read_lines(args.batch))
        if args.replay:
            return _replay(policy, _read_lines(args.replay))
        if not (args.client and args.target):
            raise QueryError("give --client IP and TARGET (or --batch / --replay)")
        query = make_query(
            args.client,
            args.target,
            user=args.user,
            fingerprint=args.tls_fingerprint,
            rdns=args.rdns,
        )
    except (QueryError, OSError) as exc:
        print(f"etrn-bridge explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    decision = query.decide(policy)
    print(f"{_verdict(decision)} {query.target} for {query.identity.address}")
    print(f"  rule:   {decision.rule or '(none)'}")
    print(f"  why:    {decision.reason}")
    return EXIT_ALLOW if decision.allowed else EXIT_DENY


def make_query(
    client: str,
    target: str,
    *,
    user: str | None = None,
    fingerprint: str | None = None,
    rdns: str | None = None,
) -> Query:
    try:
        client_address(client)
    except ValueError:
        raise QueryError(f"{client!r} is not an IP address") from None
    identity = Identity(client, auth_user=user, tls_fingerprint=fingerprint)
    try:
        parsed = parse_target(target)
    except TargetError as exc:
        raise QueryError(f"{target!r} is not a valid ETRN argument: {exc.reason}") from None
    return Query(identity, parsed, (rdns,) if rdns else ())


def parse_batch_line(line: str) -> Query:
    words = line.split()
    if len(words) < 2:
        raise QueryError("expected 'IP TARGET [user=U] [fp=F] [rdns=NAME]'")
    options: dict[str, str] = {}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or key not in BATCH_KEYS:
            raise QueryError(f"{word!r}: expected one of {', '.join(k + '=' for k in BATCH_KEYS)}")
        options[BATCH_KEYS[key]] = value
    return make_query(
        words[0],
        words[1],
        user=options.get("auth_user"),
        fingerprint=options.get("tls_fingerprint"),
        rdns=options.get("rdns"),
    )


def _batch(policy: Policy, lines: Iterable[str]) -> int:
    status = EXIT_ALLOW
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            query = parse_batch_line(line)
        except QueryError as exc:
            print(f"error line {number}: {exc}")
            status = EXIT_USAGE
            continue
        decision = query.decide(policy)
        print(
            f"{_verdict(decision)} {query.identity.address} {query.target} "
            f"rule={decision.rule or '-'} ({decision.reason})"
        )
    return status


def _replay(policy: Policy, lines: Iterable[str]) -> int:
    checked = changed = 0
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"line {number}: not JSON, skipped", file=sys.stderr)
            continue
        if not isinstance(record, dict) or record.get("event") != "etrn":
            continue
        if record.get("decision") not in ("allow", "deny"):
            continue  # refused before any decision (syntax)
        try:
            query = make_query(
                str(record.get("client_ip")),
                str(record.get("target") or record.get("argument")),
                user=record.get("auth_user"),
                fingerprint=record.get("tls_fingerprint"),
            )
        except QueryError as exc:
            print(f"line {number}: {exc}, skipped", file=sys.stderr)
            continue
        rdns = tuple(record.get("rdns") or ())
        decision = policy.decide(query.identity, query.target, rdns)
        checked += 1
        was_allowed = record["decision"] == "allow"
        if decision.allowed != was_allowed:
            changed += 1
            print(
                f"line {number}: {record.get('ts', '-')} {query.identity.address} "
                f"{query.target}: {record['decision']} (rule {record.get('rule') or '-'}) -> "
                f"{_verdict(decision)} (rule {decision.rule or '-'}): {decision.reason}"
            )
    print(f"{checked} requests re-decided, {changed} would change")
    return EXIT_ALLOW


def _verdict(decision: Decision) -> str:
    return "allow" if decision.allowed else "deny"


def _read_lines(name: str) -> list[str]:
    if name == "-":
        return sys.stdin.read().splitlines()
    with open(name, encoding="utf-8", errors="surrogateescape") as file:
        return file.read().splitlines()
