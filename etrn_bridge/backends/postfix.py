"""The ``postfix`` backend: ``postqueue -j`` to list, ``postqueue -s`` / ``-i`` to flush.

Facts (measured on Postfix 3.7, tests/mta/lab/README.md §4-5):

* ``postqueue -s D`` is exact per recipient domain (case-insensitive) but only
  for destinations in ``fast_flush_domains``; others exit 69 "Flush service is
  not configured for destination". It never covers subdomains.
* ``postqueue -i ID`` takes one id per call and works for any message.
* ``postqueue`` returns at once: the queue manager delivers in the background.

So a plain node is one ``postqueue -s``, falling back to one ``postqueue -i``
per selected id when the domain is not fast-flush eligible; ``@node`` and a
mapped ``#queue`` are always the ids. With ``flush_socket`` the node's
``send_site`` goes straight to flush(8), as smtpd's own ETRN does: no process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from etrn_bridge.backends.base import BackendOptionError
from etrn_bridge.backends.mta import (
    DomainPredicate,
    Finding,
    Level,
    ListingError,
    MtaBackend,
    QueuedMessage,
    chunks,
    failure,
    list_items,
    settings,
)
from etrn_bridge.backends.postfix_flush import STATUS_DENY, STATUS_OK, send_site
from etrn_bridge.backends.process import ProgramResult
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target, TargetError, TargetKind, parse_domain

# postqueue(1): messages in the hold queue stay there on any flush.
HELD_QUEUE = "hold"
# postqueue.c flush_site(): the domain is not in fast_flush_domains.
NOT_ELIGIBLE_MARKER = "Flush service is not configured"
# postsuper(1) refuses anyone but root: the kit's sudoers line allows only -H <id>.
DEFAULT_POSTSUPER = ("sudo", "-n", "/usr/sbin/postsuper")
# postconf(5) authorized_flush_users: "always granted" to these, whatever the list says.
ALWAYS_MAY_FLUSH = "root"


def parse_postqueue_json(output: bytes) -> list[QueuedMessage]:
    """``postqueue -j`` (Postfix >= 3.1): one JSON object per line, per queue file.

    Only still undelivered recipients are listed by Postfix; held messages are
    marked, because no flush releases them.
    """
    messages: list[QueuedMessage] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        recipients = tuple(str(r["address"]) for r in record.get("recipients", ()))
        queue = record.get("queue_name")
        messages.append(
            QueuedMessage(
                str(record["queue_id"]),
                recipients,
                queue,
                size=int(record.get("message_size", 0)),
                held=queue == HELD_QUEUE,
            )
        )
    return messages


class PostfixBackend(MtaBackend):
    """Exact flushes through ``postqueue``."""

    name = "postfix"
    program_option = "postqueue"
    # Debian's postfix package (and upstream's default command_directory).
    default_program = "/usr/sbin/postqueue"
    command_samples = (("-j",), ("-s", "customer.example"), ("-i", "4B3C2D1E0F"))
    extra_options: ClassVar[Mapping[str, Any]] = {
        "postsuper": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "default": list(DEFAULT_POSTSUPER),
            "description": "argv that runs postsuper, which releases mail the milter held "
            "(hold: true) before the flush: postsuper needs root, so the kit goes through "
            "sudo with a line allowing only 'postsuper -H <id>...'.",
        },
        "queues": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
            },
            "default": {},
            "description": "'#name' targets: Postfix has no named queues, so map each "
            "name to the domains it flushes.",
        },
        "flush_socket": {
            "type": "string",
            "pattern": "^/",
            "description": "flush(8)'s socket, e.g. /var/spool/postfix/public/flush: a node "
            "is flushed by asking it directly, as Postfix's own ETRN does, instead of running "
            "postqueue -s (no process per request). The bridge's user must be in the "
            "postdrop group (public/ is mode 0710 postfix:postdrop). Default: postqueue -s.",
        },
        "flush_by_id": {
            "type": "boolean",
            "default": False,
            "description": "Always one 'postqueue -i' per selected message, never "
            "'postqueue -s' nor flush_socket. Set it in plugin mode (hooks.postfix_policy): "
            "Postfix flushes the site itself after the bridge's OK, and two site flushes in a "
            "row let the next message to arrive, for any domain, skip defer_transports "
            "(measured).",
        },
    }

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.postsuper: list[str] = list(options.get("postsuper", DEFAULT_POSTSUPER))
        self.flush_socket: str | None = options.get("flush_socket")
        self.queues: dict[str, frozenset[str]] = {}
        for queue, domains in options.get("queues", {}).items():
            try:
                self.queues[queue] = frozenset(parse_domain(d) for d in domains)
            except TargetError as exc:
                raise BackendOptionError("queues", f"queue {queue!r}: {exc.reason}") from None
        self.flush_by_id: bool = options.get("flush_by_id", False)

    def covers(self, target: Target) -> DomainPredicate | None:
        if target.kind is TargetKind.QUEUE:
            domains = self.queues.get(target.name)
            return None if domains is None else domains.__contains__
        return target.covers_domain

    def listing_arguments(self, queue: str | None) -> tuple[str, ...]:
        return ("-j",)  # Postfix has no named queues: "#name" is a mapping of domains

    def parse_listing(self, result: ProgramResult, queue: str | None) -> list[QueuedMessage]:
        try:
            return parse_postqueue_json(result.stdout)
        except (ValueError, KeyError, TypeError) as exc:
            raise ListingError(result, f"unreadable postqueue -j output: {exc}") from None

    async def flush_selected(self, target: Target, queue_ids: tuple[str, ...]) -> FlushResult:
        by_site = target.kind is TargetKind.NODE and not self.flush_by_id
        if by_site and self.flush_socket is not None:
            reply = await send_site(self.flush_socket, target.name, self.timeout)
            if reply.status == STATUS_OK:
                return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)
            if reply.status != STATUS_DENY:
                detail = reply.error or f"flush service status {reply.status}"
                return FlushResult(started=False, detail=detail)
        elif by_site:
            result = await self.run("-s", target.name)
            if result.ok:
                return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)
            if NOT_ELIGIBLE_MARKER not in result.detail():
                return failure(result)
        failed = await self.run_each(("-i", queue_id) for queue_id in queue_ids)
        if failed is not None:
            return failure(failed)
        return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)

    async def release_held(self, queue_ids: tuple[str, ...]) -> ProgramResult | None:
        """``postsuper -H`` moves held mail back to the deferred queue; then
        ``postqueue -i`` each, as held mail never entered flush(8)'s per-destination
        log that ``postqueue -s`` reads."""
        for chunk in chunks(queue_ids):
            argv = [*self.postsuper, *(x for queue_id in chunk for x in ("-H", queue_id))]
            released = await self.run_argv(argv)
            if not released.ok:
                return released
        return await self.run_each(("-i", queue_id) for queue_id in queue_ids)

    async def version(self) -> ProgramResult:
        return await self.run_sibling("postconf", "-h", "mail_version")

    async def check_setup(self, user: str, targets: list[Target]) -> list[Finding]:
        result = await self.run_sibling(
            "postconf",
            "-x",
            "authorized_flush_users",
            "smtpd_etrn_restrictions",
            "fast_flush_domains",
            "parent_domain_matches_subdomains",
            "mail_owner",
        )
        if not result.ok:
            return [Finding(Level.FIX, f"postconf does not run: {result.detail()}")]
        conf = settings(result)
        findings = [self._flush_permission(user, conf)]
        if "reject" not in list_items(conf.get("smtpd_etrn_restrictions", "")):
            findings.append(
                Finding(
                    Level.ADVICE,
                    "set 'smtpd_etrn_restrictions = reject' in main.cf: Postfix's own ETRN "
                    "flushes without the bridge's policy and audit",
                )
            )
        findings.extend(self._fast_flush_coverage(targets, conf))
        return findings

    def _flush_permission(self, user: str, conf: dict[str, str]) -> Finding:
        value = conf.get("authorized_flush_users", "")
        allowed = [item for item in re.split(r"[\s,]+", value) if item]  # Postfix list syntax
        if user in (ALWAYS_MAY_FLUSH, conf.get("mail_owner")):
            return Finding(Level.OK, f"{user} may always flush (postconf authorized_flush_users)")
        if user in allowed:
            return Finding(Level.OK, f"{user} may flush: authorized_flush_users = {value}")
        if any(item.startswith("static:") for item in allowed):
            # A static: table answers every lookup: static:anyone (the default),
            # and static:NAME too, lets every local user flush (measured).
            return Finding(
                Level.ADVICE,
                f"every local user may flush (authorized_flush_users = {value}): "
                f"set it to '{user}' alone",
            )
        return Finding(
            Level.FIX,
            f"add '{user}' to authorized_flush_users in main.cf (now: {value!r})",
        )

    def _fast_flush_coverage(self, targets: list[Target], conf: dict[str, str]) -> list[Finding]:
        listed = [item.lower() for item in list_items(conf.get("fast_flush_domains", ""))]
        if any("/" in item for item in listed):
            return [Finding(Level.ADVICE, "fast_flush_domains uses a table: coverage not checked")]
        parents = "fast_flush_domains" in conf.get("parent_domain_matches_subdomains", "")
        missing = [
            target.name
            for target in targets
            if target.kind is TargetKind.NODE
            and not fast_flush_eligible(target.name, listed, parents)
        ]
        if not missing:
            return [Finding(Level.OK, "every policy domain is in fast_flush_domains")]
        return [
            Finding(
                Level.ADVICE,
                f"add {name} to fast_flush_domains: without it each ETRN runs "
                "postqueue -i once per message instead of one postqueue -s",
            )
            for name in missing
        ]


def fast_flush_eligible(domain: str, listed: list[str], parents: bool) -> bool:
    """Postfix's domain-list match: ".d" means subdomains of d; "d" also
    matches them when parent_domain_matches_subdomains lists fast_flush_domains."""
    for item in listed:
        if item.startswith("."):
            if domain.endswith(item):
                return True
        elif domain == item or (parents and domain.endswith("." + item)):
            return True
    return False
