"""The connection caps' bookkeeping and their settings (issue 7.3, 7.7)."""

from __future__ import annotations

from etrn_bridge.admission import CONNECTIONS_SCHEMA, Admission, ConnectionSettings
from etrn_bridge.policy.limits import Rate, parse_rate


def test_defaults_of_the_dataclass_are_the_schema_defaults() -> None:
    defaults = {key: spec["default"] for key, spec in CONNECTIONS_SCHEMA["properties"].items()}
    assert ConnectionSettings.from_section(defaults) == ConnectionSettings()
    assert ConnectionSettings().auth_failures == parse_rate(defaults["auth_failures"])


def test_sessions_are_counted_per_client_and_in_all() -> None:
    admission = Admission(ConnectionSettings(max_sessions=3, max_sessions_per_client=2))
    assert admission.admit("192.0.2.1") and admission.admit("192.0.2.1")
    assert not admission.admit("192.0.2.1")
    assert admission.admit("192.0.2.2")
    assert not admission.admit("192.0.2.3")  # three in all
    admission.release("192.0.2.1")
    assert admission.admit("192.0.2.3")
    assert not admission.admit("192.0.2.1")


def test_auth_failures_block_an_address_for_the_window() -> None:
    now = [0.0]
    settings = ConnectionSettings(auth_failures=Rate(2, 60.0))
    admission = Admission(settings, clock=lambda: now[0])
    admission.auth_failed("192.0.2.1")
    assert not admission.auth_blocked("192.0.2.1")
    admission.auth_failed("192.0.2.1")
    assert admission.auth_blocked("192.0.2.1")
    assert not admission.auth_blocked("192.0.2.2")
    now[0] = 61.0
    assert not admission.auth_blocked("192.0.2.1")


def test_auth_throttling_off() -> None:
    admission = Admission(ConnectionSettings.from_section({"auth_failures": "off"}))
    for _ in range(100):
        admission.auth_failed("192.0.2.1")
    assert not admission.auth_blocked("192.0.2.1")
