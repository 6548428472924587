"""``event_loop: uvloop`` (the optional extra) serves the same sessions as asyncio."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from bridgekit import Bridge


@pytest.mark.parametrize(("name", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_event_loop_serves_etrn(
    start_bridge: Callable[..., Bridge], name: str, module: str
) -> None:
    bridge = start_bridge({"event_loop": name})
    assert any(line.endswith(f"event loop: {module}") for line in bridge.log_lines)
    client = bridge.session()
    assert client.command("ETRN customer.example").code == 250
    assert client.command("ETRN other.example").code == 459
    client.close()
    assert [record["reply"] for record in bridge.etrn_records()] == [250, 459]
