"""JSON Schema validation that stays fast over a provider's 10,000 policy entries.

jsonschema walks every keyword of every entry (about 50 us each): half a second
for a 10,000-entry policy. Most entries are plain: string fields and lists of
strings. :func:`quick_check` turns an entry schema made only of such keywords
into a predicate that accepts an entry only when jsonschema would report
nothing for it; every entry it does not accept still goes through jsonschema.
So the errors (validator, message, path) are exactly those of validating the
whole document at once; only their order between entries may differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from etrn_bridge.yamlmarks import KeyPath

# The lists that grow with the number of customers.
BULK_ARRAYS: tuple[KeyPath, ...] = (("policy", "clients"), ("policy", "deny"))

# Keywords that never look at a property's value (only at keys, or not at all):
# a bulk array can be validated apart from the mappings that lead to it.
_KEY_ONLY_KEYWORDS = {"$schema", "$id", "title", "description", "type", "properties"}
_KEY_ONLY_KEYWORDS |= {"additionalProperties", "required", "default"}
# An array schema that checks nothing but its items: [] is valid under it.
_ITEMS_ONLY_KEYWORDS = {"type", "items", "description", "default"}
_ANNOTATIONS = {"title", "description", "default"}

Check = Callable[[Any], bool]


def iter_errors(schema: Mapping[str, Any], instance: Any) -> Iterator[ValidationError]:
    """The errors of ``Draft202012Validator(schema).iter_errors(instance)``, paths included."""
    validator = jsonschema.Draft202012Validator(schema)
    bulk = [found for path in BULK_ARRAYS if (found := _bulk_array(schema, instance, path))]
    if not bulk:
        yield from validator.iter_errors(instance)
        return
    yield from validator.iter_errors(_without(instance, [path for path, _, _ in bulk]))
    for path, item_schema, items in bulk:
        item_validator = validator.evolve(schema=item_schema)
        quick = quick_check(item_schema)
        for index, item in enumerate(items):
            if quick is not None and quick(item):
                continue
            for error in item_validator.iter_errors(item):
                error.path.extendleft(reversed((*path, index)))
                yield error


def _bulk_array(
    schema: Mapping[str, Any], instance: Any, path: KeyPath
) -> tuple[KeyPath, Mapping[str, Any], list[Any]] | None:
    """The item schema and the list at ``path`` when it can be validated on its own."""
    for key in path:
        if not (isinstance(instance, dict) and set(schema) <= _KEY_ONLY_KEYWORDS):
            return None
        schema = schema.get("properties", {}).get(key)
        if not isinstance(schema, Mapping) or key not in instance:
            return None
        instance = instance[key]
    if not isinstance(instance, list) or set(schema) - _ITEMS_ONLY_KEYWORDS:
        return None
    if schema.get("type") != "array" or not isinstance(schema.get("items"), Mapping):
        return None
    return path, schema["items"], instance


def _without(instance: dict[Any, Any], paths: list[KeyPath]) -> dict[Any, Any]:
    """A copy of the mappings along ``paths`` with the lists at their ends emptied."""
    top = dict(instance)
    for path in paths:
        parent = top
        for key in path[:-1]:
            parent[key] = parent = dict(parent[key])
        parent[path[-1]] = []
    return top


def quick_check(schema: Mapping[str, Any]) -> Check | None:
    """A predicate true only for instances valid under ``schema``; None when the
    schema uses keywords it does not know (then validate everything the slow way)."""
    keywords = set(schema) - _ANNOTATIONS
    if keywords <= {"type", "minLength"} and schema.get("type") == "string":
        return _string_check(schema.get("minLength", 0))
    if keywords <= {"type", "items"} and schema.get("type") == "array":
        items = schema.get("items")
        item_check = quick_check(items) if isinstance(items, Mapping) else None
        if item_check is None:
            return None
        return lambda value: type(value) is list and all(map(item_check, value))
    if keywords <= {"type", "additionalProperties", "required", "properties"}:
        return _object_check(schema)
    return None


def _string_check(min_length: Any) -> Check | None:
    if type(min_length) is not int:
        return None
    return lambda value: type(value) is str and len(value) >= min_length


def _object_check(schema: Mapping[str, Any]) -> Check | None:
    if schema.get("type") != "object" or schema.get("additionalProperties", True) is not False:
        return None
    required = schema.get("required", [])
    properties = schema.get("properties", {})
    if not isinstance(required, list) or not isinstance(properties, Mapping):
        return None
    # A property whose schema is beyond quick_check: entries that have it go the slow way.
    checks = {key: quick_check(sub) for key, sub in properties.items() if isinstance(sub, Mapping)}

    def check(value: Any) -> bool:
        if type(value) is not dict or not all(key in value for key in required):
            return False
        for key, item in value.items():
            item_check = checks.get(key)
            if item_check is None or not item_check(item):
                return False
        return True

    return check
