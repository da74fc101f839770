"""The spec dataclasses a task or mixture YAML is validated into, and the keys each file may hold."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from ..mixing import normalise_log_weights, proportional_log_weight
from ..schema import Task


@dataclass
class DatasetSource:
    """A `datasets` source: load_dataset(path, name, split=split, revision=revision)."""

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None


def _key(yaml_type: Any, **kw: Any) -> Any:
    """A TaskSpec field a task YAML may set, with the type its YAML value must have."""
    return field(metadata={"yaml": yaml_type}, **kw)


@dataclass
class TaskSpec:
    """One declared task (or one glob of files) after validation. Its fields with a `yaml` type are
    the only keys a task entry may hold (TASK_KEYS is read from here)."""

    file: Path
    line: int
    family: str = _key(str)
    name: str | None = _key(str, default=None)
    source: str | None = _key(str, default=None)
    datasets: DatasetSource | None = _key(dict, default=None)
    format: str | None = _key(str, default=None)
    fields: dict[str, str] = _key(dict, default_factory=dict)
    output_separator: str | None = _key(str, default=None)
    definition: str | None = _key(str, default=None)
    categories: list[str] = _key(list, default_factory=list)
    encoding: str | None = _key(str, default=None)
    metrics: list[str] = _key(list, default_factory=list)
    max_instances: int | None = _key(int, default=None)
    allow_absolute: bool = _key(bool, default=False)
    data_root: Path | None = _key(str, default=None)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class MixtureSpec:
    """Mixing rates for a run: `entries` are (task-name glob, rate or None for proportional)."""

    name: str
    file: Path
    entries: list[tuple[str, float | None]]
    cap: int | None = None
    temperature: float = 1.0
    sources: list[Path] = field(default_factory=list)
    rate: str = "examples_proportional"

    def match(self, task_names: Iterable[str]) -> dict[str, float | None]:
        """Task name -> declared rate (None: examples-proportional); first matching entry wins."""
        out: dict[str, float | None] = {}
        for name in task_names:
            for pattern, rate in self.entries:
                if fnmatch.fnmatchcase(name, pattern):
                    out[name] = rate
                    break
        return out

    def rates(self, tasks: Iterable[Task]) -> dict[str, float]:
        """Normalised sampling rates: explicit numbers, else min(n, cap) ** (1 / temperature)."""
        tasks = list(tasks)
        matched = self.match(t.name for t in tasks)
        # in log space: min(n, cap) ** (1 / temperature) overflows a float for small temperatures
        logs: dict[str, float] = {}
        for t in tasks:
            if t.name not in matched:
                continue
            r = matched[t.name]
            if r is None:
                logs[t.name] = proportional_log_weight(len(t.instances), self.cap, self.temperature)
            else:
                logs[t.name] = math.log(r) if r > 0 else -math.inf
        return dict(zip(logs, normalise_log_weights(list(logs.values()))))


TASK_KEYS = {f.name: f.metadata["yaml"] for f in fields(TaskSpec) if "yaml" in f.metadata}
FILE_KEYS = {"include": str, "tasks": list, "description": str}
DATASETS_KEYS = {**{f.name: str for f in fields(DatasetSource)}, "config": str}  # config: alias of name
FIELD_TARGETS = {"input", "output", "outputs", "id", "context", "question"}
MIXTURE_KEYS = {"mixture": str, "sources": list, "entries": list, "rate": (str, int, float),
                 "cap": int, "temperature": (int, float), "include": str, "description": str,
                 "allow_absolute": bool, "data_root": str}
