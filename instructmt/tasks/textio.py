"""Reading task data files with errors that name the file (and line): shared by family loaders."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import TaskFormatError
from ..validation import find_lone_surrogate


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(path)) from None
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"not valid UTF-8 (byte {e.start}): convert the file to UTF-8", path=str(path)) from None


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # json.loads would keep the last one silently (a second "Instances" replaces the first). Built
    # with dict() and a length check: this runs once per JSON object (millions in the SNI release).
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """json.loads that refuses what it would otherwise accept quietly or crash on: duplicate keys,
    nesting deep enough to exhaust the stack, and lone surrogate escapes (valid JSON, invalid text
    that fails much later, at tokenization)."""
    try:
        data = json.loads(text, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"malformed JSON: {e.msg}", path=str(path),
                              line=line if line is not None else e.lineno) from None
    except _DuplicateKey as e:
        raise TaskFormatError(f"duplicate key {e.args[0]!r} in one JSON object (the second would silently "
                              "replace the first)", path=str(path), line=line) from None
    except RecursionError:
        raise TaskFormatError("JSON nested too deeply to be a task file", path=str(path), line=line) from None
    if _SURROGATE_ESCAPE.search(text):
        bad = find_lone_surrogate(data)
        if bad:
            raise TaskFormatError(f"lone surrogate escape {bad[1]} is not valid Unicode text", path=str(path),
                                  line=line, field=bad[0] or None)
    return data


def read_json(path: Path) -> Any:
    return parse_json(read_text(path), path)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line; each line must be a JSON object."""
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            rec = parse_json(line, path, line=n)
            if not isinstance(rec, dict):
                raise TaskFormatError(f"record is not an object ({type(rec).__name__})", path=str(path), line=n)
            yield n, rec
