"""Gradual release frees what only it holds and never touches what others still use."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import pytest

from etrn_bridge import release
from etrn_bridge.config import load_config
from etrn_bridge.release import release_gradually
from etrn_bridge.request import Identity
from etrn_bridge.target import parse_target


class Leaf:
    pass


class Slotted:
    __slots__ = ("__weakref__", "value")

    def __init__(self, value: object) -> None:
        self.value = value


def test_everything_held_only_by_the_box_is_freed() -> None:
    leaf, in_slot = Leaf(), Leaf()
    gone = [weakref.ref(leaf), weakref.ref(in_slot)]
    structure = {"a": [(leaf, {1, 2}), {"deep": Slotted(in_slot)}], "b": frozenset({3})}
    box: list[object] = [structure]
    del leaf, in_slot, structure
    release_gradually(box)
    assert box == []
    assert [ref() for ref in gone] == [None, None]


def test_what_someone_else_holds_is_left_intact() -> None:
    shared = {"kept": [1, 2, {"x": "y"}]}
    inner = shared["kept"]
    box: list[object] = [{"owner": [shared, {"own": [1]}]}, inner]
    release_gradually(box)
    assert shared == {"kept": [1, 2, {"x": "y"}]}
    assert inner is shared["kept"]


def test_a_released_config_leaves_the_policy_a_session_holds_working(tmp_path: Path) -> None:
    config_path = tmp_path / "etrn.yaml"
    config_path.write_text(
        "policy:\n  clients:\n"
        + "".join(
            f"    - id: c{i}\n      networks: ['127.0.0.{i}/32']\n      targets: ['d{i}.example']\n"
            for i in range(1, 50)
        )
    )
    leftovers: list[object] = []
    config = load_config(config_path, leftovers)
    policy = config.policy  # what a session holds
    leftovers.append(config)
    del config
    assert leftovers  # the parse tree is there to be freed
    thread = threading.Thread(target=release_gradually, args=(leftovers,))
    thread.start()
    thread.join()
    assert leftovers == []
    assert policy.decide(Identity("127.0.0.7"), parse_target("d7.example")).allowed
    assert not policy.decide(Identity("127.0.0.7"), parse_target("d8.example")).allowed
    assert policy.summary()["clients"] == 49


def test_a_release_in_the_background_waits_for_what_others_still_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replaced policy that sessions still use is freed once they let go of it."""
    monkeypatch.setattr(release, "HELD_ELSEWHERE_POLL", 0.01)
    in_use = {"entries": [Leaf(), Leaf()]}
    gone = weakref.ref(in_use["entries"][0])
    freed = threading.Event()
    release.release_in_background([in_use], freed.set)

    assert not freed.wait(0.2)  # twenty looks, and still in use
    assert len(in_use["entries"]) == 2 and gone() is not None
    del in_use
    assert freed.wait(10)
    assert gone() is None
