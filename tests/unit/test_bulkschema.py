"""The quick path over the policy lists reports exactly what jsonschema reports."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from etrn_bridge import bulkschema
from etrn_bridge.schema import config_schema

VALID_ENTRY = {
    "id": "c1",
    "networks": ["192.0.2.0/24"],
    "users": ["u"],
    "tls_fingerprints": ["sha256:AB"],
    "rdns": ["*.dyn.example"],
    "targets": ["d.example", "@e.example"],
    "targets_file": "t.domains",
}
HOSTILE_ENTRIES: list[Any] = [
    {"id": "ok", "targets": ["x.example"]},
    {"targets": ["x.example"]},  # no id
    {"id": ""},
    {"id": 7},
    {"id": None},
    {"id": True},
    {"id": "x", "networks": "192.0.2.0/24"},
    {"id": "x", "networks": [""]},
    {"id": "x", "networks": [1, None, ["a"], {"a": 1}, True]},
    {"id": "x", "targets": [], "targets_file": ""},
    {"id": "x", "targets_file": ["a"]},
    {"id": "x", "unknown": 1, "other": [2]},
    {"id": "x", "limits": {"per_target": "fast"}},
    {"id": "x", "limits": {"per_client": "10/60s", "nope": 1}},
    {"id": "x", "limits": {"per_target": "1/60s"}},
    {"id": "x", "hold": "yes"},
    {"id": "x", "hold": True, "quota": {}},
    {"id": "x", "hold": True, "quota": {"messages": -1}},
    {"id": "x", "users": ("tuple",)},
    {"id": "\x00\udcff", "rdns": ["\ud800"]},
    {1: "integer key", "id": "x"},
    "a string",
    17,
    None,
    [VALID_ENTRY],
    {},
]


def canonical(errors: Any) -> list[tuple[tuple[Any, ...], str, str]]:
    return sorted(((tuple(e.path), e.validator, e.message) for e in errors), key=repr)


def slow(document: Any) -> list[tuple[tuple[Any, ...], str, str]]:
    return canonical(jsonschema.Draft202012Validator(config_schema()).iter_errors(document))


def fast(document: Any) -> list[tuple[tuple[Any, ...], str, str]]:
    return canonical(bulkschema.iter_errors(config_schema(), document))


def test_hostile_entries_get_the_same_errors_as_with_jsonschema_alone() -> None:
    document = {
        "listen": ["nonsense"],
        "policy": {
            "clients": [VALID_ENTRY, *HOSTILE_ENTRIES, VALID_ENTRY],
            "deny": [*HOSTILE_ENTRIES, {"id": "d", "limits": {}}],
            "extra": 1,
        },
        "limits": {"per_target": 5},
    }
    expected = slow(document)
    assert len(expected) > len(HOSTILE_ENTRIES)  # the hostile entries do break the schema
    assert fast(document) == expected


@pytest.mark.parametrize(
    "document",
    [
        {"policy": {"clients": "not a list", "deny": None}},
        {"policy": ["not", "a", "mapping"]},
        {"policy": {"clients": [{"id": "x", "targets": [1]}]}},
        {"policy": {"deny": [{"id": 1}]}},
        {"policy": {}},
        {},
    ],
)
def test_odd_shapes_around_the_lists_get_the_same_errors(document: Any) -> None:
    assert fast(document) == slow(document)


def test_the_quick_check_accepts_only_what_jsonschema_finds_valid() -> None:
    policy = config_schema()["properties"]["policy"]["properties"]
    for section in ("clients", "deny"):
        item_schema = policy[section]["items"]
        quick = bulkschema.quick_check(item_schema)
        assert quick is not None and quick(VALID_ENTRY)
        validator = jsonschema.Draft202012Validator(item_schema)
        for entry in HOSTILE_ENTRIES:
            if quick(entry):
                assert not list(validator.iter_errors(entry)), entry


def test_a_schema_with_unknown_keywords_has_no_quick_check() -> None:
    assert bulkschema.quick_check({"type": "string", "pattern": "^a"}) is None
    assert bulkschema.quick_check({"type": "object", "properties": {}}) is None
    assert bulkschema.quick_check({"anyOf": [{"type": "string"}]}) is None
