"""TaskRegistry and the format registry that family loaders plug into."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import RegistryError, TaskFormatError
from ..catalog import FORMATS
from ..registry import Registry
from .schema import Task


class TaskRegistry(Registry[Task]):
    """Holds loaded tasks by name; rejects duplicates and suggests near names on a miss."""

    def __init__(self, tasks: Iterable[Task] = ()):
        super().__init__("task")
        for t in tasks:
            self.add(t)

    def add(self, task: Task) -> Task:
        if task.name in self:
            prev = self.get(task.name)
            raise RegistryError(
                f"duplicate task name {task.name!r} (from {task.source or '?'}; "
                f"already loaded from {prev.source or '?'})")
        return self.register(task.name, task)

    def select(self, names: Iterable[str]) -> list[Task]:
        return [self.get(n) for n in names]


@dataclass(frozen=True)
class TaskFormat:
    """A file format a family loader understands.

    `detect(path)` must be cheap (name / first bytes); `load(path)` returns Tasks or raises
    TaskFormatError naming the file and field.
    """

    name: str
    family: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], list[Task]]
    description: str = ""


def register_format(fmt: TaskFormat) -> TaskFormat:
    return FORMATS.register(fmt.name, fmt)


def detect_format(path: Path) -> TaskFormat | None:
    for fmt in FORMATS.values():
        try:
            if fmt.detect(path):
                return fmt
        except (OSError, UnicodeDecodeError):
            continue
    return None


def load_file(fmt: TaskFormat, path: Path) -> list[Task]:
    """`fmt.load(path)`, with text that is not UTF-8 reported as a TaskFormatError naming the file
    (the CSV/TSV readers of the families would otherwise let UnicodeDecodeError escape)."""
    try:
        return fmt.load(path)
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"not valid UTF-8 (byte {e.start})", path=str(path)) from None


def load_path(path: str | Path) -> list[Task]:
    """Load every task from a file (any registered format) or a directory of them."""
    p = Path(path)
    if not p.exists():
        raise TaskFormatError("no such file or directory", path=str(p))
    if p.is_dir():
        tasks: list[Task] = []
        for child in sorted(p.iterdir()):
            if child.is_file() and detect_format(child) is not None:
                tasks.extend(load_path(child))
        if not tasks:
            raise TaskFormatError("directory holds no task file in a known format", path=str(p))
        return tasks
    fmt = detect_format(p)
    if fmt is None:
        raise TaskFormatError(
            "unrecognised task file format (known: " + ", ".join(FORMATS.names()) + ")", path=str(p))
    return load_file(fmt, p)
