"""The one-walk build gives the safe loader's data and the same marks as a separate walk."""

from __future__ import annotations

import pytest
import yaml

from etrn_bridge.yamlmarks import MarkedDocument, SafeLoader, _record_marks, load_marked

DOCUMENTS = [
    "policy:\n  clients:\n    - id: a\n      networks: ['192.0.2.0/24']\n      targets: [x]\n",
    "a: 1\nb: yes\nc: ~\nd: 1.5\ne: 2001-01-01\nf: !!binary aGk=\ng: '1'\n",
    "base: &b {x: 1, y: [a, b]}\nuse:\n  <<: *b\n  y: [c]\nalias: *b\n",
    "dup: 1\ndup: 2\nnested: {k: a, k: b}\n",
    "1: int key\ntrue: bool key\n~: null key\nplain: v\n",
    "set: !!set {a, b}\nomap: !!omap [{a: 1}, {b: 2}]\n",
    "list:\n  - - deep\n    - [1, 2, {k: v}]\n  - {}\n  - []\n",
    "tagged: !!str 12\nseq: !!seq [a]\nmap: !!map {a: b}\n",
    "just a string\n",
    "- 1\n- two\n",
    "",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_data_and_marks_match_the_constructor_and_a_separate_walk(text: str) -> None:
    document = load_marked(text, "f.yaml")

    expected = MarkedDocument(data={}, file="f.yaml")
    loader = SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            expected.data = loader.construct_document(node)
            _record_marks(node, (), expected)
    finally:
        loader.dispose()
    assert document.data == expected.data
    assert document.data == (yaml.load(text, SafeLoader) if text else {})
    for path in (*expected.marks, *document.marks):
        assert document.mark(path) == expected.mark(path)
    for path in (*expected.key_marks, *document.key_marks):
        assert document.key_mark(path) == expected.key_mark(path)
    assert document.marks.keys() == expected.marks.keys()
    assert document.key_marks.keys() == expected.key_marks.keys()
    assert document.duplicate_keys == expected.duplicate_keys
