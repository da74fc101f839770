"""Resolve a run's tasks: load the task sources, decide seen vs held-out, refuse overlap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import ConfigError
from ..data.mixture import check_split
from ..tasks.natural_instructions import read_split_file
from ..tasks.registry import TaskRegistry, load_path
from ..tasks.schema import Task


@dataclass
class TaskSplit:
    registry: TaskRegistry
    seen: list[Task]
    held_out: list[Task]


def _split_dir(data: DataConfig) -> Path | None:
    if data.split_dir:
        return Path(data.split_dir)
    for src in data.tasks:  # a task directory may carry its own splits/
        cand = Path(src) / "splits"
        if cand.is_dir():
            return cand
    return None


def resolve_tasks(data: DataConfig) -> TaskSplit:
    registry = TaskRegistry()
    for src in data.tasks:
        for t in load_path(src):
            registry.add(t)
    seen_names, held_names = data.seen, data.held_out
    sd = _split_dir(data)
    if seen_names is None and held_names is None and sd is not None:
        train_f, test_f = sd / "train_tasks.txt", sd / "test_tasks.txt"
        seen_names = [n for n in read_split_file(train_f) if n in registry] if train_f.exists() else None
        held_names = [n for n in read_split_file(test_f) if n in registry] if test_f.exists() else []
    if seen_names is None:
        held = set(held_names or [])
        seen_names = [n for n in registry.names() if n not in held]
    held_names = list(held_names or [])
    check_split(seen_names, held_names)
    seen = registry.select(seen_names)
    held_out = registry.select(held_names)
    if not seen:
        raise ConfigError("no seen (training) tasks: check data.tasks / data.seen / the split files")
    return TaskSplit(registry, seen, held_out)


def tokenizer_corpus(split: TaskSplit) -> list[str]:
    """Text a tiny model's tokenizer is trained on: everything of the seen tasks, and of held-out
    tasks only what a prompt shows at test time (definition, examples, inputs) — never their
    reference outputs."""
    texts: list[str] = []
    for t in split.seen:
        texts.append(t.definition)
        texts += [x for e in t.positive_examples + t.negative_examples for x in (e.input, e.output, e.explanation)]
        for i in t.instances:
            texts.append(i.input)
            texts += i.outputs
    for t in split.held_out:
        texts.append(t.definition)
        texts += [x for e in t.positive_examples + t.negative_examples for x in (e.input, e.output, e.explanation)]
        texts += [i.input for i in t.instances]
    texts += ["Definition: Positive Example Negative Example Input: Output: Explanation: "
              "Now complete the following example -"] * 20
    return [x for x in texts if x]
