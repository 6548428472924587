"""A bug below the service costs one request a 458, never its audit record."""

from __future__ import annotations

import json
from pathlib import Path

from etrn_bridge.audit import AuditLog
from etrn_bridge.backends.log import LogBackend
from etrn_bridge.config import parse_config
from etrn_bridge.policy.model import Policy
from etrn_bridge.replies import reply_for
from etrn_bridge.request import Decision, Identity, Request, Status
from etrn_bridge.service import Service
from etrn_bridge.target import Target

CONFIG = "policy: {clients: [{id: lo, networks: [127.0.0.0/8], targets: [a.example]}]}"


class BrokenPolicy(Policy):
    """Fault injection: a policy whose decision raises, as a bug in it would."""

    def decide(self, identity: Identity, target: Target, verified_names: object = ()) -> Decision:
        raise RuntimeError("bug in decide")


async def test_a_fault_in_the_decision_is_a_458_and_is_audited(tmp_path: Path) -> None:
    policy = parse_config(CONFIG, tmp_path / "etrn.yaml").policy
    broken = BrokenPolicy(policy.allow, policy.deny, policy.allow_index, policy.deny_index)
    audit_file = tmp_path / "audit.jsonl"
    service = Service(broken, LogBackend(), AuditLog(audit_file))

    outcome = await service.handle(Request(Identity("127.0.0.1"), "a.example"))

    assert outcome.status is Status.FAILED
    assert reply_for(outcome) == "458 4.3.0 Unable to queue messages for node a.example"
    (record,) = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert (record["reply"], record["target"]) == (458, "a.example")
    assert record["reason"] == "internal error: RuntimeError('bug in decide')"
    # Syntax is still checked first: a bad argument never reaches the broken step.
    bad = await service.handle(Request(Identity("127.0.0.1"), "a;b"))
    assert bad.status is Status.BAD_ARGUMENT
