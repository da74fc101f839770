"""Resolve a run's tasks: load the task sources, decide seen vs held-out, refuse overlap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..cache_paths import cache_root
from ..config import DataConfig
from ..errors import ConfigError
from ..safe_yaml import safe_load
from ..data.mixture import check_split
from ..tasks.natural_instructions import read_split_file
from ..tasks.registry import TaskRegistry, load_path
from ..tasks.schema import Task
from ..tasks.scope import EVERYTHING, InstanceWindow, LoadScope
from ..tasks.yaml_spec import load_mixture_yaml


@dataclass
class TaskSplit:
    registry: TaskRegistry
    seen: list[Task]
    held_out: list[Task]
    # Declared mixing rates (task -> normalised rate) from a mixture YAML; None: use the config's rule.
    rates: dict[str, float] | None = None


def _mixture_spec(src: str):
    p = Path(src)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        import yaml
        try:
            head = safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            return None  # the loader reports it with file and line
        if isinstance(head, dict) and "mixture" in head:
            return load_mixture_yaml(p)
    return None


def _split_dir(data: DataConfig) -> Path | None:
    if data.split_dir:
        return Path(data.split_dir)
    for src in data.tasks:  # a task directory may carry its own splits/
        cand = Path(src) / "splits"
        if cand.is_dir():
            return cand
    return None


def _mixture_held_out(mixture, registry: TaskRegistry) -> list[str]:
    """Held-out tasks of a mixture: the test split of each source directory (splits/test_tasks.txt),
    loaded here since the mixture itself only loads the tasks it trains on."""
    names: list[str] = []
    for src in mixture.sources:
        test_file = Path(src) / "splits" / "test_tasks.txt"
        if Path(src).is_dir() and test_file.exists():
            wanted = set(read_split_file(test_file))
            for t in load_path(src):
                if t.name in wanted:
                    if t.name not in registry:
                        registry.add(t)
                    # a test-split task the mixture's entries also match stays held out, so
                    # check_split refuses the run instead of silently training on it
                    names.append(t.name)
    return names


def training_scope(data: DataConfig, *, heldout_eval_instances: int = 0, cache_dir: Path | None = None) -> LoadScope:
    """What a training run reads of each task: the first max(max_instances_per_task,
    eval_instances_per_task, held-out curve instances) instances plus the held-back tail, through
    the parsed-task cache (default $INSTRUCTMT_CACHE/parsed_tasks)."""
    head = max(data.max_instances_per_task, data.eval_instances_per_task, heldout_eval_instances)
    return LoadScope(window=InstanceWindow(head, data.holdback_per_seen_task),
                     cache_dir=cache_dir if cache_dir is not None else cache_root(), only_split_tasks=True)


def _split_names(data: DataConfig) -> frozenset[str] | None:
    """Every task the run will use, when the config or split files name them all up front."""
    if any(_mixture_spec(src) is not None for src in data.tasks):
        return None
    seen, held = data.seen, data.held_out
    sd = _split_dir(data)
    if seen is None and held is None and sd is not None and (sd / "train_tasks.txt").exists():
        seen = read_split_file(sd / "train_tasks.txt")
        test_f = sd / "test_tasks.txt"
        held = read_split_file(test_f) if test_f.exists() else []
    if seen is None:  # seen = everything not held out: every file is needed
        return None
    return frozenset(seen) | frozenset(held or [])


def resolve_tasks(data: DataConfig, scope: LoadScope = EVERYTHING) -> TaskSplit:
    """Load the task sources and split them into seen and held-out tasks. With a narrowing `scope`
    (see `training_scope`) the files of tasks the split does not name are not read."""
    if scope.only_split_tasks and scope.names is None:
        names = _split_names(data)
        if names is not None:
            scope = dataclasses.replace(scope, names=names)
    registry = TaskRegistry()
    mixture = None
    for src in data.tasks:
        spec = _mixture_spec(src)
        if spec is not None:
            if mixture is not None:
                raise ConfigError("only one mixture YAML per run")
            mixture = spec
        for t in load_path(src, scope):
            registry.add(t)
    seen_names, held_names = data.seen, data.held_out
    if mixture is not None and seen_names is None:
        # the mixture's entries are the seen tasks; everything else it loads is held out
        matched = mixture.match(registry.names())
        seen_names = [n for n in registry.names() if n in matched]
        if held_names is None:
            held_names = _mixture_held_out(mixture, registry)
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
    rates = mixture.rates(seen) if mixture is not None else None
    return TaskSplit(registry, seen, held_out, rates)


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
