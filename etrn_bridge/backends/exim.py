"""The ``exim`` backend: ``exim -bp`` to list, ``exim -M ids`` to deliver exactly those.

Facts (measured on Exim 4.96, tests/mta/lab/README.md §4-5):

* ``exim -R x`` is a case-insensitive SUBSTRING match on the whole recipient
  (``customer.test`` also flushes ``mycustomer.test``, ``customer.test.evil``
  and the local part ``customer.test@other``). The bridge never uses it.
* ``exim -M id...`` forces delivery of exactly those messages, overriding
  retry times and ``hold_domains``; an id that is gone meanwhile is skipped
  silently (exit 0).
* Both run the deliveries in the foreground, so the command returns only when
  they are done: the reply cannot wait for that. The flush returns once the
  process is started and hands the rest to ``FlushResult.completion``.
* Named queues (``queue =`` ACL modifier, Exim >= 4.88): ``-bp -qG<name>``
  lists one, ``-qfG<name>`` runs it once, forced (overriding ``hold_domains``).
* A frozen message (``exim -Mf``, or frozen by Exim itself) is listed with
  ``*** frozen ***``; ``-M`` thaws and delivers it ("Unfrozen by forced
  delivery"), ``-qfG`` skips it. The bridge leaves frozen messages alone, as
  Postfix's hold queue: a freeze is the operator's, not the customer's, to lift.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from etrn_bridge.backends.mta import (
    Finding,
    Level,
    MtaBackend,
    QueuedMessage,
    chunks,
    failure,
    list_items,
    settings,
)
from etrn_bridge.backends.process import ProgramResult
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target, TargetKind

# An exim failure that shows at once (permission denied, bad config) ends well
# within this; waiting that long lets the reply carry it instead of "started".
EARLY_FAILURE_WINDOW = 0.2
DEFAULT_DELIVERY_TIMEOUT = 600.0

# exim -bp (spec ch. "-bp"): "<age> <size> <id> <sender> [*** frozen ***]", then
# one indented line per recipient; "D" marks a delivered one, "+D" a delivered
# address generated from it. Ids: 16 characters up to 4.96, 23 from 4.97.
_MESSAGE_LINE = re.compile(r"^\s*\d+[smhdwy]\s+\S+\s+(?P<id>[0-9A-Za-z]+(?:-[0-9A-Za-z]+){2})\s")
_MESSAGE_LINE_SIZE = re.compile(r"^\s*\d+[smhdwy]\s+(?P<size>[0-9.]+)(?P<unit>[KMG]?)\s")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_FROZEN = "*** frozen ***"
_DELIVERED = re.compile(r"^\+?D\s")


def _listed_size(header: str) -> int:
    """The size column: bytes, or rounded to K/M/G from 10K on."""
    match = _MESSAGE_LINE_SIZE.match(header)
    return 0 if match is None else int(float(match["size"]) * _SIZE_UNITS[match["unit"]])


def parse_exim_bp(output: bytes, queue: str | None = None) -> list[QueuedMessage]:
    """``exim -bp`` output; delivered recipients and frozen messages are left out."""
    messages: list[QueuedMessage] = []
    queue_id: str | None = None
    recipients: list[str] = []
    frozen = False
    size = 0

    def close() -> None:
        if queue_id is not None and not frozen:
            messages.append(QueuedMessage(queue_id, tuple(recipients), queue, size=size))

    for raw in output.decode("utf-8", "surrogateescape").splitlines():
        header = _MESSAGE_LINE.match(raw)
        if header:
            close()
            queue_id, recipients, size = header["id"], [], _listed_size(raw)
            frozen = raw.rstrip().endswith(_FROZEN)
        elif raw[:1].isspace() and raw.strip() and queue_id is not None:
            text = raw.strip()
            if not _DELIVERED.match(text):
                recipients.append(text)
    close()
    return messages


class EximBackend(MtaBackend):
    """Exact flushes through ``exim -M``."""

    name = "exim"
    program_option = "exim"
    # Debian's exim4-daemon-* packages install the binary as exim4.
    default_program = "/usr/sbin/exim4"
    command_samples = (("-bp",), ("-M", "1xXKGZ-0002OT-0d"))
    extra_options: ClassVar[Mapping[str, Any]] = {
        "delivery_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": DEFAULT_DELIVERY_TIMEOUT,
            "description": "Seconds the foreground delivery (exim -M) may take after the "
            "reply before it is killed; the messages stay queued then.",
        },
    }

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.delivery_timeout = float(options.get("delivery_timeout", DEFAULT_DELIVERY_TIMEOUT))

    def listing_arguments(self, queue: str | None) -> tuple[str, ...]:
        return ("-bp", *(("-qG" + queue,) if queue else ()))

    def parse_listing(self, result: ProgramResult, queue: str | None) -> list[QueuedMessage]:
        return parse_exim_bp(result.stdout, queue)

    async def flush_selected(self, target: Target, queue_ids: tuple[str, ...]) -> FlushResult:
        if target.kind is TargetKind.QUEUE:
            argvs: list[Sequence[str]] = [("-qfG" + target.name,)]
        else:
            argvs = [("-M", *chunk) for chunk in chunks(queue_ids)]
        delivery = asyncio.ensure_future(self._deliver(argvs, queue_ids))
        done, _ = await asyncio.wait({delivery}, timeout=EARLY_FAILURE_WINDOW)
        if done:
            return delivery.result()
        return FlushResult(
            started=True, pending=len(queue_ids), queue_ids=queue_ids, completion=delivery
        )

    async def _deliver(self, argvs: list[Sequence[str]], queue_ids: tuple[str, ...]) -> FlushResult:
        failed = await self.run_each(argvs, timeout=self.delivery_timeout)
        if failed is not None:
            return failure(failed)
        return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)

    async def version(self) -> ProgramResult:
        return await self.run("-bV")

    async def check_setup(self, user: str, targets: list[Target]) -> list[Finding]:
        result = await self.run(
            "-bP", "admin_groups", "prod_requires_admin", "exim_user", "acl_smtp_etrn"
        )
        if not result.ok:
            return [Finding(Level.FIX, f"exim -bP does not run: {result.detail()}")]
        conf = settings(result)
        findings = []
        # Exim spec "-M": admin users are root, the Exim user, and members of
        # admin_groups (or anyone, with prod_requires_admin = false).
        admins = set(list_items(conf.get("admin_groups", "")))
        if user in ("root", conf.get("exim_user")) or conf.get("prod_requires_admin") == "false":
            findings.append(Finding(Level.OK, f"{user} may force deliveries (exim -M)"))
        elif admins & user_groups(user):
            findings.append(Finding(Level.OK, f"{user} is in admin_groups"))
        else:
            findings.append(
                Finding(
                    Level.FIX,
                    f"add a group of {user} to admin_groups in the Exim configuration "
                    "(exim -M and -bp need an admin user), or use command_prefix: [sudo, -n]",
                )
            )
        if conf.get("acl_smtp_etrn"):
            findings.append(
                Finding(
                    Level.ADVICE,
                    "remove acl_smtp_etrn: Exim's own ETRN runs exim -R, a substring match",
                )
            )
        return findings


def user_groups(user: str) -> set[str]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return set()
    return {grp.getgrgid(gid).gr_name for gid in os.getgrouplist(user, entry.pw_gid)}
