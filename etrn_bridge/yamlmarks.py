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
from typing import Any

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


@dataclass
class MarkedDocument:
    data: Any
    marks: dict[KeyPath, Mark] = field(default_factory=dict)
    # Where each mapping key itself is written: "unknown key" errors point here.
    key_marks: dict[KeyPath, Mark] = field(default_factory=dict)
    duplicate_keys: list[tuple[KeyPath, Mark]] = field(default_factory=list)
    file: str = "<config>"

    def mark(self, path: KeyPath) -> Mark:
        """The mark of ``path``, or of its nearest ancestor that has one."""
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, Mark(self.file, 1, 1))

    def key_mark(self, path: KeyPath) -> Mark:
        """Where the key that ends ``path`` is written (falls back to :meth:`mark`)."""
        return self.key_marks.get(path) or self.mark(path)


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
            document.data = loader.construct_document(node)
            _record_marks(node, (), document)
    finally:
        loader.dispose()
    return document


def _mark_of(node: yaml.Node, file: str) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _record_marks(node: yaml.Node, path: KeyPath, document: MarkedDocument) -> None:
    document.marks[path] = _mark_of(node, document.file)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            child: KeyPath = (*path, str(key_node.value))
            document.key_marks.setdefault(child, _mark_of(key_node, document.file))
            if child[-1] in seen:
                document.duplicate_keys.append((child, _mark_of(key_node, document.file)))
            seen.add(str(child[-1]))
            _record_marks(value_node, child, document)
            # Point errors about a mapping or list at its key, where the admin reads it.
            if not isinstance(value_node, yaml.ScalarNode):
                document.marks[child] = _mark_of(key_node, document.file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_marks(item, (*path, index), document)
