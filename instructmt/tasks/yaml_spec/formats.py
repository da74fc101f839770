"""The two YAML task formats (task file, mixture file), told apart by their top-level keys."""

from __future__ import annotations

from pathlib import Path

from ..registry import TaskFormat
from ..schema import Task
from .load import load_task_yaml
from .mixture import load_mixture_tasks


def yaml_top_keys(path: Path) -> set[str]:
    keys = set()
    with path.open("rb") as fh:
        head = fh.read(16384).decode("utf-8", errors="replace")
    for line in head.splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")) and ":" in line:
            keys.add(line.split(":", 1)[0].strip())
    return keys


def is_task_yaml(path: Path) -> bool:
    if path.suffix.lower() not in (".yaml", ".yml"):
        return False
    keys = yaml_top_keys(path)
    return "mixture" not in keys and bool(keys & {"family", "tasks", "include"})


def is_mixture_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml") and "mixture" in yaml_top_keys(path)


def _load_mixture_as_tasks(path: Path) -> list[Task]:
    return load_mixture_tasks(path)[1]


TASK_YAML_FORMAT = TaskFormat("task_yaml", "declared", is_task_yaml, lambda p: load_task_yaml(p),
                              "declarative task YAML (family/source/fields/metrics; include:)")
MIXTURE_YAML_FORMAT = TaskFormat("mixture_yaml", "declared", is_mixture_yaml, _load_mixture_as_tasks,
                                 "mixture YAML: sources + task globs with rates")
