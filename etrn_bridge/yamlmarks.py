"""YAML loading that remembers where every value came from (file:line:column).

PyYAML's safe loader forgets positions once it builds Python objects, and a
mail admin needs "policy.yaml:14:9: policy.clients[2].networks[0]: ..." to fix
a file. So we compose the node graph (which has marks) and build plain data
from it ourselves, recording each key path's mark on the way. Duplicate keys,
which PyYAML silently lets the last one win, are reported here.

Composition runs in libyaml (``CSafeLoader``) when PyYAML was built with it:
its nodes carry the same marks and a 10,000-entry policy composes about ten
times faster than with the pure-Python parser, which stays as the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

KeyPath = tuple[str | int, ...]

# libyaml's loader when PyYAML was built with it; the pure-Python one otherwise.
SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class YamlMark(Protocol):
    """A node's start mark, from libyaml or the pure-Python parser (0-based)."""

    line: int
    column: int


@dataclass
class MarkedDocument:
    data: Any
    # PyYAML's own marks (0-based), turned into a :class:`Mark` only when asked
    # for: a 10,000-entry policy has 160,000 of them and uses none when valid.
    marks: dict[KeyPath, YamlMark] = field(default_factory=dict)
    # Where each mapping key itself is written: "unknown key" errors point here.
    key_marks: dict[KeyPath, YamlMark] = field(default_factory=dict)
    duplicate_keys: list[tuple[KeyPath, Mark]] = field(default_factory=list)
    file: str = "<config>"
    # The node graph, freed with the document rather than on return from
    # load_marked: a reload frees both piece by piece, off the event loop.
    nodes: yaml.Node | None = None

    def mark(self, path: KeyPath) -> Mark:
        """The mark of ``path``, or of its nearest ancestor that has one."""
        while path not in self.marks and path:
            path = path[:-1]
        found = self.marks.get(path)
        return Mark(self.file, 1, 1) if found is None else self._mark(found)

    def key_mark(self, path: KeyPath) -> Mark:
        """Where the key that ends ``path`` is written (falls back to :meth:`mark`)."""
        found = self.key_marks.get(path)
        return self.mark(path) if found is None else self._mark(found)

    def _mark(self, mark: YamlMark) -> Mark:
        return Mark(self.file, mark.line + 1, mark.column + 1)


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def load_marked(text: str, file: str) -> MarkedDocument:
    """Parse YAML text; raises ``yaml.YAMLError`` (which carries its own mark) on bad syntax."""
    document = MarkedDocument(data={}, file=file)
    loader = SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            document.data = _build(loader, node, (), document)
            document.nodes = node
    finally:
        loader.dispose()
    return document


def _mark_of(node: yaml.Node, file: str) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


def _build(loader: Any, node: yaml.Node, path: KeyPath, document: MarkedDocument) -> Any:
    """The value of ``node`` as the safe constructor builds it, its marks recorded on
    the way: one walk instead of two over a 10,000-entry policy. Plain strings, lists
    and mappings with string keys are built here; anything else (numbers, booleans,
    merge keys, sets, other key types...) by the loader's own constructor."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        document.marks[path] = node.start_mark
        return node.value
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        document.marks[path] = node.start_mark
        return [
            _build(loader, item, (*path, index), document) for index, item in enumerate(node.value)
        ]
    if (
        isinstance(node, yaml.MappingNode)
        and node.tag == _MAP
        and all(isinstance(k, yaml.ScalarNode) and k.tag == _STR for k, _ in node.value)
    ):
        document.marks[path] = node.start_mark
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            child: KeyPath = (*path, key)
            key_mark = key_node.start_mark
            document.key_marks.setdefault(child, key_mark)
            if key in mapping:
                document.duplicate_keys.append((child, _mark_of(key_node, document.file)))
            mapping[key] = _build(loader, value_node, child, document)
            # Point errors about a mapping or list at its key, where the admin reads it.
            if not isinstance(value_node, yaml.ScalarNode):
                document.marks[child] = key_mark
        return mapping
    value = loader.construct_object(node, deep=True)
    _record_marks(node, path, document)
    return value


def _record_marks(node: yaml.Node, path: KeyPath, document: MarkedDocument) -> None:
    document.marks[path] = node.start_mark
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            child: KeyPath = (*path, str(key_node.value))
            document.key_marks.setdefault(child, key_node.start_mark)
            if child[-1] in seen:
                document.duplicate_keys.append((child, _mark_of(key_node, document.file)))
            seen.add(str(child[-1]))
            _record_marks(value_node, child, document)
            # Point errors about a mapping or list at its key, where the admin reads it.
            if not isinstance(value_node, yaml.ScalarNode):
                document.marks[child] = key_node.start_mark
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_marks(item, (*path, index), document)
