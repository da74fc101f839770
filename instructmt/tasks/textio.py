"""Reading task data files with errors that name the file (and line): shared by family loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import TaskFormatError


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(path)) from None
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"not valid UTF-8 (byte {e.start})", path=str(path)) from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"malformed JSON: {e.msg}", path=str(path), line=e.lineno) from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line; each line must be a JSON object."""
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"malformed JSON: {e.msg}", path=str(path), line=n) from None
            if not isinstance(rec, dict):
                raise TaskFormatError(f"record is not an object ({type(rec).__name__})", path=str(path), line=n)
            yield n, rec
