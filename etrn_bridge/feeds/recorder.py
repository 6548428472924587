"""What the index feeds do with a queued message, whatever MTA told them about it.

A message is recorded (all its recipients, its size) when at least one
recipient's domain is one the policy serves (an allow entry covers it). It is
held when EVERY recipient's domain is covered by an entry with ``hold: true``:
a message with any other recipient is never held, so nobody else's mail waits
for a customer's ETRN. Quotas are checked at RCPT, from what the index holds.

Thread-safe: libmilter calls from one thread per MTA connection; the index
serialises its own writes and the policy is swapped in one assignment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from etrn_bridge.audit import AuditLog, timestamp
from etrn_bridge.policy.model import Entry, Policy
from etrn_bridge.queueindex.store import QueueIndex
from etrn_bridge.target import Target, TargetKind, recipient_domain

log = logging.getLogger("etrn_bridge.feeds")

AUDIT_QUOTA_EVENT = "quota"


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of one message: recorded in the index, and whether to hold it."""

    recorded: bool
    hold: bool


NOT_RECORDED = Recorded(recorded=False, hold=False)


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    domain: str
    entry: str
    messages: int
    bytes: int


class QueueRecorder:
    def __init__(self, index: QueueIndex, policy: Policy, audit: AuditLog | None = None) -> None:
        self.index = index
        self.policy = policy  # replaced whole on reload
        self.audit = audit

    def entries_for(self, domain: str | None) -> list[Entry]:
        """The allow entries that serve a recipient domain (none for a bad address)."""
        if not domain:
            return []
        policy = self.policy
        return [entry for _, entry in policy.allow_index.covering(Target(TargetKind.NODE, domain))]

    def message_queued(
        self, queue_id: str, recipients: Sequence[str], size: int, *, can_hold: bool = True
    ) -> Recorded:
        """Record a message the MTA has queued; says whether it should be held.

        ``can_hold`` is False for an MTA that holds by itself (Exim's hold_domains,
        which its flush overrides): the index then has nothing to release.
        """
        served = [self.entries_for(recipient_domain(address)) for address in recipients]
        if not any(served):
            return NOT_RECORDED
        hold = can_hold and all(any(entry.hold for entry in entries) for entries in served)
        self.index.record(queue_id, recipients, size, held=hold)
        return Recorded(recorded=True, hold=hold)

    def quota_refusal(self, recipient: str, client: str = "") -> QuotaRefusal | None:
        """Whether a held domain is over its quota for one more message (audited when so)."""
        domain = recipient_domain(recipient)
        for entry in self.entries_for(domain):
            if not entry.hold or entry.quota is None or domain is None:
                continue
            messages, size = self.index.domain_usage(domain)
            if entry.quota.exceeded(messages, size):
                refusal = QuotaRefusal(domain, entry.id, messages, size)
                self._audit_quota(refusal, recipient, client)
                return refusal
        return None

    def _audit_quota(self, refusal: QuotaRefusal, recipient: str, client: str) -> None:
        log.info(
            "quota: %s (%s) has %d messages, %d bytes queued: RCPT %s refused for now",
            refusal.domain,
            refusal.entry,
            refusal.messages,
            refusal.bytes,
            recipient,
        )
        if self.audit is not None:
            self.audit.write(
                {
                    "ts": timestamp(),
                    "event": AUDIT_QUOTA_EVENT,
                    "domain": refusal.domain,
                    "rule": refusal.entry,
                    "queued_messages": refusal.messages,
                    "queued_bytes": refusal.bytes,
                    "recipient": recipient,
                    "client_ip": client,
                    "reply": 452,
                }
            )
