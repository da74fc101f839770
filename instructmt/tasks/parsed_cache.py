"""Parsed-task cache: a large task file is parsed once per (file, size, mtime, window).

Parsing a 100 MB Super-NaturalInstructions JSON takes seconds of CPU; the windowed tasks a run keeps
from it are a few kB. They are stored as JSON (not pickle: a cache file is data, never code) under
`$INSTRUCTMT_CACHE/parsed_tasks/` and written atomically. A damaged or stale entry is ignored and
parsed again; a file that fails to load is never cached, so its error repeats on every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

from ..io_safety import atomic_write_text
from .schema import Example, Instance, Task
from .scope import InstanceWindow

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when a loader's output for the same file changes


def cache_key(path: Path, format_name: str, window: InstanceWindow | None) -> str | None:
    """Key of a file's parsed tasks, or None when the file cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    ident = [CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, format_name,
             None if window is None else [window.head, window.tail]]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def _task_from_dict(d: dict) -> Task:
    d = dict(d)
    d["instances"] = [Instance(**i) for i in d["instances"]]
    d["positive_examples"] = [Example(**e) for e in d["positive_examples"]]
    d["negative_examples"] = [Example(**e) for e in d["negative_examples"]]
    return Task(**d)


def read_cached(entry: Path) -> list[Task] | None:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION:
            return None
        return [_task_from_dict(t) for t in data["tasks"]]
    except (OSError, ValueError, KeyError, TypeError) as e:  # damaged entry: parse the file again
        if entry.exists():
            log.info("ignoring unreadable parsed-task cache entry %s (%s)", entry, e)
        return None


def write_cached(entry: Path, tasks: list[Task]) -> None:
    try:
        text = json.dumps({"version": CACHE_VERSION, "tasks": [dataclasses.asdict(t) for t in tasks]},
                          ensure_ascii=False)
    except (TypeError, ValueError):  # a loader put something that is not JSON in Task.extra: skip caching
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, text)
    except OSError as e:  # a cache that cannot be written only costs time
        log.info("parsed-task cache not written (%s): %s", entry, e)


def load_through_cache(path: Path, format_name: str, window: InstanceWindow | None, cache_dir: Path,
                       load: Callable[[], list[Task]]) -> list[Task]:
    """`load()`, or the tasks it returned last time for the same file state and window."""
    key = cache_key(path, format_name, window)
    if key is None:
        return load()
    entry = Path(cache_dir) / "parsed_tasks" / f"{key}.json"
    cached = read_cached(entry)
    if cached is not None:
        return cached
    tasks = load()
    write_cached(entry, tasks)
    return tasks
