"""The ``sendmail`` backend: ``sendmail -bp`` to list, ``sendmail -qI<id>`` to flush.

Facts (measured on Sendmail 8.17, tests/mta/lab/README.md §4-5):

* ``-qR<x>`` is a case-insensitive SUBSTRING match on the recipient; even
  ``-qR@customer.test`` flushes ``customer.test.evil``, and ``-qR`` with an
  empty string runs the whole queue. The bridge never uses ``-qR``.
* ``-qI<id>`` selects by queue id; several ``-qI`` flags in one call are
  ORed. Sendmail forks the queue runner and the command returns at once.
* Queue groups: ``-bp -qG<name>`` lists one (prints "Queue group <name>
  unknown", still exit 0, for a group that does not exist); plain ``-bp``
  lists every group. ``-qG<name>`` alone delivers nothing for the kit's
  ``etrn`` mailer (``F=%``: only ``-qI/-qR/-qS`` runs deliver), so a group is
  flushed as ``-qG<name> -qI<id>...`` with the ids its listing gave.
"""

from __future__ import annotations

import re
from dataclasses import replace

from etrn_bridge.backends.mta import (
    Finding,
    Level,
    ListingError,
    MtaBackend,
    QueuedMessage,
    UnknownQueue,
    chunks,
    failure,
)
from etrn_bridge.backends.process import ProgramResult
from etrn_bridge.request import FlushResult
from etrn_bridge.target import Target, TargetKind

# printqueue() in sendmail/queue.c: the id, one status character ("*" being
# delivered, "X" load too high, "-" too young), size, time, sender. Recipient
# and reason lines are indented; reasons are in parentheses.
_MESSAGE_LINE = re.compile(r"^(?P<id>[0-9A-Za-z]+)[*X-]?\s+(?P<size>\d+)\s")
_RECIPIENT = re.compile(r"^<?(?P<address>[^\s<>()]*@[^\s<>()]+)>?$")
_UNKNOWN_GROUP = re.compile(rb"^Queue group \S+ unknown", re.MULTILINE)
# Debian's sendmail-bin (and Sendmail's compiled-in _PATH_SENDMAILCF).
DEFAULT_CF = "/etc/mail/sendmail.cf"
_PRIVACY_OPTIONS = re.compile(r"^O PrivacyOptions\s*=\s*(.*)$", re.MULTILINE)
CHECK_ETRN_RULESET = re.compile(r"^Scheck_etrn\b", re.MULTILINE)


def parse_sendmail_bp(output: bytes) -> list[QueuedMessage]:
    """``sendmail -bp`` output. Sendmail lists only recipients not yet delivered."""
    messages: list[QueuedMessage] = []
    queue_id: str | None = None
    recipients: list[str] = []
    size = 0

    def close() -> None:
        if queue_id is not None:
            messages.append(QueuedMessage(queue_id, tuple(recipients), size=size))

    for raw in output.decode("utf-8", "surrogateescape").splitlines():
        header = _MESSAGE_LINE.match(raw)
        if header:
            close()
            queue_id, recipients, size = header["id"], [], int(header["size"])
        elif raw[:1].isspace() and queue_id is not None:
            recipient = _RECIPIENT.match(raw.strip())
            if recipient:
                recipients.append(recipient["address"])
    close()
    return messages


class SendmailBackend(MtaBackend):
    """Exact flushes through ``sendmail -qI``."""

    name = "sendmail"
    program_option = "sendmail"
    # Debian's sendmail-bin (a symlink to the MTA's binary, like every other MTA's).
    default_program = "/usr/sbin/sendmail"
    command_samples = (("-bp",), ("-qI6ASFN95v009494",))

    def listing_arguments(self, queue: str | None) -> tuple[str, ...]:
        return ("-bp", *(("-qG" + queue,) if queue else ()))

    def parse_listing(self, result: ProgramResult, queue: str | None) -> list[QueuedMessage]:
        if queue is not None and _UNKNOWN_GROUP.search(result.stdout + result.stderr):
            raise UnknownQueue(result.detail())
        return parse_sendmail_bp(result.stdout)

    async def flush_selected(self, target: Target, queue_ids: tuple[str, ...]) -> FlushResult:
        group = ("-qG" + target.name,) if target.kind is TargetKind.QUEUE else ()
        # -qI is a substring match on the id too; whole ids of one queue
        # are all the same length, so a whole id matches only itself.
        argvs = [(*group, *("-qI" + queue_id for queue_id in chunk)) for chunk in chunks(queue_ids)]
        failed = await self.run_each(argvs)
        if failed is not None:
            return failure(failed)
        return FlushResult(started=True, pending=len(queue_ids), queue_ids=queue_ids)

    async def queued_messages(self) -> list[QueuedMessage]:
        """For reconciliation: plain ``-bp`` leaves quarantined items (hf files) out;
        ``-bp -qQ`` lists them, so mail held until ETRN stays in the index."""
        plain = await super().queued_messages()
        result = await self.run("-bp", "-qQ")
        if not result.ok:
            raise ListingError(result)
        return plain + [replace(m, held=True) for m in parse_sendmail_bp(result.stdout)]

    async def release_held(self, queue_ids: tuple[str, ...]) -> ProgramResult | None:
        """``-qQ -qI<id> -Q``: among quarantined items (hf files), the empty reason
        unquarantines; the flush that follows delivers them with -qI."""
        argvs = [
            ("-qQ", *("-qI" + queue_id for queue_id in chunk), "-Q") for chunk in chunks(queue_ids)
        ]
        return await self.run_each(argvs)

    async def version(self) -> ProgramResult:
        # -d0.1 prints "Version 8.x" first; -bt reads no rules from /dev/null.
        return await self.run("-d0.1", "-bt")

    def config_file(self) -> str:
        args = list(self.args)
        return args[args.index("-C") + 1] if "-C" in args[:-1] else DEFAULT_CF

    async def check_setup(self, user: str, targets: list[Target]) -> list[Finding]:
        path = self.config_file()
        try:
            with open(path, encoding="utf-8", errors="replace") as cf:
                text = cf.read()
            match = _PRIVACY_OPTIONS.search(text)
        except OSError as exc:
            return [Finding(Level.ADVICE, f"cannot read {path} ({exc.strerror}): not checked")]
        privacy = {o.strip() for o in (match.group(1) if match else "").split(",")}
        findings = []
        if user == "root":
            findings.append(Finding(Level.OK, "root may run queue runs (sendmail -qI)"))
        else:
            findings.append(
                Finding(
                    Level.FIX,
                    f"Sendmail runs queues only for root (queue directory 0700"
                    f"{', restrictqrun' if 'restrictqrun' in privacy else ''}): "
                    "use command_prefix: [sudo, -n] and a sudoers line (sendmail/README.md)",
                )
            )
        # Plugin mode (sendmail/README.md): check_etrn answers every ETRN itself.
        if "noetrn" not in privacy and not CHECK_ETRN_RULESET.search(text):
            findings.append(
                Finding(
                    Level.ADVICE,
                    f"add noetrn to PrivacyOptions in {path}: Sendmail's own ETRN "
                    "flushes by substring (-qR@domain)",
                )
            )
        return findings
