"""What a run needs from its task files, so loading can skip the rest.

A run that trains on <= 100 instances per task does not need the other millions of instances of
the full Super-NaturalInstructions release in memory, nor the files of tasks its split lists do
not name. `LoadScope()` (the default) keeps everything, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class InstanceWindow:
    """Keep the first `head` instances of each task and its last `tail` ones.

    The training mixture takes the first `max_instances_per_task` instances and holds back the
    last `holdback_per_seen_task` (`data.mixture.split_instances`), so head = the most a run reads
    from the front and tail = its holdback give exactly the instances it would pick from the whole
    task."""

    head: int
    tail: int = 0

    def __post_init__(self):
        if self.head < 0 or self.tail < 0:
            raise ValueError(f"InstanceWindow needs head >= 0 and tail >= 0, got {self.head}, {self.tail}")

    def indices(self, n: int) -> range | list[int]:
        """Positions kept out of n, in order."""
        if n <= self.head + self.tail:
            return range(n)
        return list(range(self.head)) + list(range(n - self.tail, n))

    def apply(self, items: Sequence[T]) -> list[T]:
        return [items[i] for i in self.indices(len(items))]


@dataclass(frozen=True)
class LoadScope:
    """Which tasks and instances to load, and whether to reuse parsed files.

    names:   only these tasks; a file of a one-task-per-file format (SNI, NI v1) whose name is
             not among them is not read at all
    window:  instances kept per task (None: all)
    cache_dir: parsed-task cache (`tasks/parsed_cache.py`) for files of at least `cache_min_bytes`
    only_split_tasks: let `resolve_tasks` set `names` to the tasks the run's split names
    """

    names: frozenset[str] | None = None
    window: InstanceWindow | None = None
    cache_dir: Path | None = None
    cache_min_bytes: int = 1 << 20
    # resolve_tasks fills `names` from the run's split (files of other tasks are not read)
    only_split_tasks: bool = False

    def wants(self, name: str) -> bool:
        return self.names is None or name in self.names


EVERYTHING = LoadScope()
