"""YAML with line marks: every mapping remembers the line of each key, so a problem names file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ...errors import TaskFormatError
from ...safe_yaml import BoundedSafeLoader


class Marked(dict):
    """A mapping that remembers the line of each key (1-based) and of itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[str, int] = {}


class MarkedLoader(BoundedSafeLoader):
    pass


def _construct_mapping(loader: MarkedLoader, node: yaml.MappingNode) -> Marked:
    loader.flatten_mapping(node)
    out = Marked()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise TaskFormatError(f"duplicate key {key!r}", path=loader.name, line=key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[str(key)] = key_node.start_mark.line + 1
    return out


MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file into plain data whose mappings are `Marked` (they know their lines)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(p)) from None
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"not valid UTF-8 (byte {e.start})", path=str(p)) from None
    loader = MarkedLoader(text)
    loader.name = str(p)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise TaskFormatError(f"malformed YAML: {e.problem or e.context}", path=str(p),
                              line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()


def line_of(d: Any, key: str | None = None) -> int | None:
    if isinstance(d, Marked):
        return d.key_lines.get(key, d.line) if key else d.line
    return None
