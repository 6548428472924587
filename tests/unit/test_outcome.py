"""Outcome.took and the audit clock: shortcuts on every request's path keep what they replace."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

from etrn_bridge.audit import timestamp
from etrn_bridge.request import Decision, FlushResult, Outcome, Status
from etrn_bridge.target import parse_target


def test_took_is_replace_of_the_duration_with_every_other_field_kept() -> None:
    values = {
        "status": Status.PENDING_STARTED,
        "target": parse_target("@customer.test"),
        "decision": Decision(True, "acme", "allowed"),
        "reason": "why",
        "backend": "postfix",
        "flush": FlushResult(started=True, pending=3, queue_ids=("A1",)),
        "coalesced": True,
        "duration": 0.5,
        "extra": {"rdns": ["host.test"]},
    }
    # Every field is set above: a field added to Outcome and not to took() fails here.
    assert {field.name for field in dataclasses.fields(Outcome)} == set(values)
    outcome = Outcome(**values)  # type: ignore[arg-type]
    assert outcome.took(0.25) == dataclasses.replace(outcome, duration=0.25)


def test_timestamp_now_is_utc_milliseconds_fixed_width() -> None:
    before = datetime.now(UTC)
    written = timestamp()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", written)
    moment = datetime.fromisoformat(written.replace("Z", "+00:00"))
    assert before - timedelta(milliseconds=1) <= moment <= after
    # A given moment is written the same way.
    assert timestamp(moment) == written
