"""YAML that cannot hang us: a size cap on the document and a cap on alias expansion.

`yaml.safe_load` refuses tags that run code, but an alias bomb ("billion laughs": anchors that
reference anchors) is a few hundred bytes that expands to billions of nodes once anything walks
it (our config copying, validation, dumping). We count the expanded size of the composed graph
before constructing Python objects and refuse past a bound, in one line."""

from __future__ import annotations

from typing import Any

import yaml

from .validation import find_lone_surrogate

MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_EXPANDED_NODES = 1_000_000


class YAMLLimitError(yaml.MarkedYAMLError):
    """The document is too large, or its aliases expand past MAX_EXPANDED_NODES."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document once every alias is expanded (memoized per node, so linear time)."""
    memo: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in memo:
            continue
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:
            memo[id(node)] = 1
            continue
        if children_done:
            total = 1 + sum(memo.get(id(k), 0) for k in kids)
            memo[id(node)] = total
            if total > limit:
                return total
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in memo)
    return memo.get(id(root), 1)


class BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader with a document-size cap and an alias-expansion cap."""

    max_bytes = MAX_YAML_BYTES
    max_nodes = MAX_EXPANDED_NODES

    def __init__(self, stream):
        size = len(stream) if isinstance(stream, (str, bytes)) else None
        if size is not None and size > self.max_bytes:
            raise YAMLLimitError(problem=f"document is {size} bytes, more than the {self.max_bytes} byte limit")
        self._escapes = isinstance(stream, str) and ("\\u" in stream or "\\U" in stream)
        super().__init__(stream)

    def construct_document(self, node):
        data = super().construct_document(node)
        if self._escapes:  # only a "\uD800"-style escape can put a lone surrogate in decoded text
            bad = find_lone_surrogate(data)
            if bad:
                raise YAMLLimitError(problem=f"surrogate escape {bad[1]} at {bad[0] or 'top level'} is not valid "
                                             "Unicode text (write the character itself, or \\UXXXXXXXX)", problem_mark=node.start_mark)
        return data

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            n = _expanded_size(node, self.max_nodes)
            if n > self.max_nodes:
                raise YAMLLimitError(
                    problem=f"aliases expand to more than {self.max_nodes:,} nodes (an alias bomb?); "
                            "refusing to load", problem_mark=node.start_mark)
        return node


def safe_load(text: str) -> Any:
    """`yaml.safe_load` with the caps above."""
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def error_line(err: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and its line (PyYAML's own text spans several lines)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        what = err.problem or err.context or "malformed YAML"
        return f"{what} (line {mark.line + 1})" if mark else what
    return " ".join(str(err).split())
