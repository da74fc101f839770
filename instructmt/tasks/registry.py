"""TaskRegistry and the format registry that family loaders plug into."""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import RegistryError, TaskFormatError
from ..catalog import FORMATS
from ..registry import Registry
from .parsed_cache import load_through_cache
from .schema import Task
from .scope import EVERYTHING, LoadScope

log = logging.getLogger(__name__)


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
    # `companion(path)`: why a data file belongs to another file's task of this format (or None)
    companion: Callable[[Path], str | None] | None = None
    # `load(path, window)` builds only the instances the window keeps (faster and smaller for huge
    # files); for other formats the window is applied after `load(path)`
    accepts_window: bool = False
    # one task per file, named by the file's stem: a file whose task a run does not want is not read
    task_named_by_stem: bool = False


def register_format(fmt: TaskFormat) -> TaskFormat:
    return FORMATS.register(fmt.name, fmt)


def detect_format(path: Path) -> TaskFormat | None:
    for fmt in FORMATS.values():
        try:
            if fmt.detect(path):
                return fmt
        except (OSError, UnicodeDecodeError):
            continue
        except RecursionError:  # a detector peeked at JSON nested deeper than the stack
            raise TaskFormatError("nested too deeply to be a task file", path=str(path)) from None
    return None


def load_file(fmt: TaskFormat, path: Path, scope: LoadScope = EVERYTHING) -> list[Task]:
    """`fmt.load(path)` narrowed to the scope (window, names), through the parsed-task cache for
    large files; text that is not UTF-8 is reported as a TaskFormatError naming the file (the
    CSV/TSV readers of the families would otherwise let UnicodeDecodeError escape)."""
    def parse() -> list[Task]:
        try:
            if scope.window is not None and fmt.accepts_window:
                tasks = fmt.load(path, scope.window)
            else:
                tasks = fmt.load(path)
                if scope.window is not None:
                    for task in tasks:
                        task.instances = scope.window.apply(task.instances)
        except UnicodeDecodeError as e:
            raise TaskFormatError(f"not valid UTF-8 (byte {e.start}): convert the file to UTF-8",
                                  path=str(path)) from None
        except RecursionError:
            raise TaskFormatError("nested too deeply to be a task file", path=str(path)) from None
        for task in tasks:
            _check_references(task, path)
        return tasks

    if scope.cache_dir is not None and _size(path) >= scope.cache_min_bytes:
        tasks = load_through_cache(path, fmt.name, scope.window, scope.cache_dir, parse)
    else:
        tasks = parse()
    return [t for t in tasks if scope.wants(t.name)]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_references(task: Task, path: Path) -> None:
    """Every family: an instance whose every reference is empty cannot be learned or scored (an
    empty prediction would get exact match 100 and ROUGE-L 0), so it is an error, not a 0 or 100."""
    for k, inst in enumerate(task.instances):
        if inst.outputs and not any(o.strip() for o in inst.outputs):
            raise TaskFormatError(f"every reference output of instance {inst.id!r} is empty", path=str(path),
                                  task=task.name, field=f"Instances[{k}].output")


# file suffixes that hold task data; such a file in a task directory is never skipped silently
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".txt", ".yaml", ".yml"}


def unreadable_reason(path: Path) -> str | None:
    """Why a data file cannot be read as UTF-8 text (None when it can): a task file in another
    encoding would otherwise fail every format's detection and be skipped without a word."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(0)
            decoder = codecs.getincrementaldecoder("utf-8")()
            offset = 0
            while chunk := fh.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    bom = " (a UTF-16 byte-order mark)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
                    return f"not valid UTF-8 (byte {offset + e.start}){bom}"
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (truncated character at byte {e.start})"
    except OSError as e:
        return f"cannot read: {e.strerror}"
    return None


def _refuse_unreadable(path: Path) -> None:
    reason = unreadable_reason(path)
    if reason:
        raise TaskFormatError(f"{reason}: convert it to UTF-8 (or fix its permissions), or move it out of the "
                              "task directory", path=str(path))


def _is_companion(path: Path) -> bool:
    """A data file another task file reads (a BoX instance CSV, a decaNLP split file)."""
    for fmt in FORMATS.values():
        try:
            if fmt.companion is not None and fmt.companion(path):
                return True
        except (OSError, UnicodeDecodeError, TaskFormatError):
            continue
    return False


def load_path(path: str | Path, scope: LoadScope = EVERYTHING) -> list[Task]:
    """Load every task from a file (any registered format) or a directory of them; `scope` narrows
    which tasks and instances are kept (default: all)."""
    p = Path(path)
    if not p.exists():
        raise TaskFormatError("no such file or directory", path=str(p))
    if p.is_dir():
        tasks: list[Task] = []
        found = False
        for child in sorted(p.iterdir()):
            if not child.is_file():
                continue
            fmt = detect_format(child)
            if fmt is not None:
                found = True
                if fmt.task_named_by_stem and not scope.wants(child.stem):
                    continue  # a task the run does not use: its file is never parsed
                tasks.extend(load_file(fmt, child, scope))
            elif child.suffix.lower() in DATA_SUFFIXES and not child.name.startswith("."):
                _refuse_unreadable(child)
                if not _is_companion(child):  # loud: the run would silently have fewer tasks
                    log.warning("instructmt: skipped %s: no known task format (no task loaded from it)", child)
        if not found:
            raise TaskFormatError("directory holds no task file in a known format", path=str(p))
        return tasks
    fmt = detect_format(p)
    if fmt is None:
        raise TaskFormatError(
            "unrecognised task file format (known: " + ", ".join(FORMATS.names()) + ")", path=str(p))
    return load_file(fmt, p, scope)
