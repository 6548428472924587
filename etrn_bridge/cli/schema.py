"""``etrn-bridge schema``: the JSON Schema of the config file, for editors and docs.

Point yaml-language-server at it (``# yaml-language-server: $schema=...``) to
get completion and checking while editing. ``--markdown`` prints the key
reference tables that docs/configuration.md embeds (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

from etrn_bridge.schema import config_schema

REFERENCE_BEGIN = "<!-- BEGIN GENERATED REFERENCE (etrn-bridge schema --markdown) -->"
REFERENCE_END = "<!-- END GENERATED REFERENCE -->"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON Schema of the config file")
    parser.add_argument(
        "--markdown", action="store_true", help="print the key reference as Markdown tables"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    schema = config_schema()
    print(reference_markdown(schema) if args.markdown else json.dumps(schema, indent=2))
    return 0


def reference_markdown(schema: dict[str, Any]) -> str:
    """One table per top-level section: key path, type, default, meaning."""
    lines = [REFERENCE_BEGIN]
    for section, subschema in schema["properties"].items():
        lines += ["", f"### `{section}`", ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [
            f"| `{path}` | {_type(node)} | {_default(node, required)} | {_describe(node)} |"
            for path, node, required in _walk(section, subschema, required=False)
        ]
    lines += ["", REFERENCE_END]
    return "\n".join(lines)


def _walk(
    path: str, node: dict[str, Any], *, required: bool
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, node, required
    needed = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        yield from _walk(f"{path}.{key}", child, required=key in needed)
    for variant in node.get("allOf", []):  # backend options, by backend type
        name = variant["if"]["properties"]["type"]["const"]
        then = variant["then"]
        for key, child in then["properties"].items():
            if key != "type":
                yield from _walk(
                    f"{path}.{key} ({name})", child, required=key in then.get("required", [])
                )
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield from (
            (f"{path}[]{sub[len(path) :]}", child, req)
            for sub, child, req in _walk(path, items, required=False)
            if sub != path
        )


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if kind == "array":
        items = node.get("items", {})
        return f"list of {items.get('type', 'any')}" if "properties" not in items else "list"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    return str(kind)


def _default(node: dict[str, Any], required: bool) -> str:
    if "default" not in node:
        return "required" if required else "—"
    return f"`{json.dumps(node['default'])}`"


def _describe(node: dict[str, Any]) -> str:
    return str(node.get("description", "")).replace("|", "\\|")
