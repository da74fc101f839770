"""Demonstration selectors for held-out evaluation: `selector(task, instance) -> list[Example]`.

Demonstrations come from the evaluated task's own pool (the same-named task in `pool_tasks`, else
the task itself), never the test instance (excluded by id AND by identical input). The best
candidates are packed while they fit `k` and the token budget, then ordered so the most similar
one comes LAST, next to the test input. `Example.id` is the source instance id.

    selector = make_demo_selector(args.demos, pool_tasks=held_out, k=args.k,
                                  demo_budget_tokens=args.demo_budget, length_fn=length_fn,
                                  retriever_dir=args.retriever, seed=args.seed)
    evaluate_tasks(..., demo_selector=selector)

kind "none" gives zero demonstrations (pass demo_selector=None instead to keep the encoding's
fixed positive examples).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..errors import ConfigError
from ..tasks.schema import Example, Instance, Task
from .bm25 import BM25Index
from .encoder import BiEncoder
from .index import PoolItem, Retriever, task_pool_items

SELECTOR_KINDS = ("udr", "bm25", "random", "dense", "none")


def demo_text(item: PoolItem | Example) -> str:
    """What one demonstration adds to the prompt (close to the Tk-Instruct rendering)."""
    return f" Positive Example -\nInput: {item.input}\n Output: {item.output}\n"


def _is_test_instance(item: PoolItem, inst: Instance) -> bool:
    return item.id == inst.id or item.input.strip() == inst.input.strip()


class DemoSelector:
    """Callable `(task, instance) -> list[Example]`; subclasses rank a task's pool for a query."""

    kind = "base"

    def __init__(self, pool_tasks: Iterable[Task] | Mapping[str, Task] | None = None, *, k: int = 8,
                 demo_budget_tokens: int | None = 1600, length_fn: Callable[[str], int] | None = None,
                 seed: int = 0, include_examples: bool = True):
        if k < 0:
            raise ConfigError(f"--k must be >= 0, got {k}")
        tasks = pool_tasks.values() if isinstance(pool_tasks, Mapping) else (pool_tasks or [])
        self.pool_tasks: dict[str, Task] = {t.name: t for t in tasks}
        self.k = k
        self.budget = demo_budget_tokens
        self.length_fn = length_fn
        self.seed = seed
        self.include_examples = include_examples
        self._items: dict[str, list[PoolItem]] = {}

    def pool_task(self, task: Task) -> Task:
        return self.pool_tasks.get(task.name, task)

    def items(self, task: Task) -> list[PoolItem]:
        if task.name not in self._items:
            self._items[task.name] = task_pool_items(self.pool_task(task), include_examples=self.include_examples)
        return self._items[task.name]

    def rank(self, task: Task, inst: Instance, want: int) -> Iterable[PoolItem]:
        """Candidates best first (may include the test instance; it is filtered out after)."""
        raise NotImplementedError

    def __call__(self, task: Task, inst: Instance) -> list[Example]:
        if self.k == 0:
            return []
        chosen: list[PoolItem] = []
        used = 0
        for item in self.rank(task, inst, self.k):
            if _is_test_instance(item, inst):
                continue
            cost = self.length_fn(demo_text(item)) if (self.length_fn and self.budget is not None) else 0
            if self.budget is not None and self.length_fn and used + cost > self.budget:
                continue  # too long for what is left; a shorter, less similar one may still fit
            chosen.append(item)
            used += cost
            if len(chosen) >= self.k:
                break
        chosen.reverse()  # most similar last, next to the test input
        return [Example(input=it.input, output=it.output, id=it.id) for it in chosen]


class NoDemos(DemoSelector):
    kind = "none"

    def __call__(self, task: Task, inst: Instance) -> list[Example]:
        return []


class RandomDemos(DemoSelector):
    kind = "random"

    def rank(self, task, inst, want):
        items = list(self.items(task))
        # Seeded per (seed, task, instance): the same demos on every run and in every process.
        random.Random(f"{self.seed}:{task.name}:{inst.id}").shuffle(items)
        return items


class BM25Demos(DemoSelector):
    kind = "bm25"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._bm25: dict[str, BM25Index] = {}

    def rank(self, task, inst, want):
        items = self.items(task)
        if task.name not in self._bm25:
            self._bm25[task.name] = BM25Index([it.input for it in items])
        order = self._bm25[task.name].top_k(inst.input, len(items))
        return (items[i] for i in order)


class DenseDemos(DemoSelector):
    """Nearest neighbours by a dense retriever: UDR (trained) or a plain encoder (untrained)."""

    kind = "dense"

    def __init__(self, retriever: Retriever, *a, **kw):
        super().__init__(*a, **kw)
        self.retriever = retriever

    def rank(self, task, inst, want):
        r = self.retriever
        if not r.has_task(task.name):
            r.add_task(self.pool_task(task), include_examples=self.include_examples)
        lo, hi = r.pool.task_range(task.name)
        query = r.pool.items[lo].prefix + inst.input
        # Ask for extra hits so the budget can skip long ones and the test instance can be dropped.
        hits = r.search(task.name, query, min(hi - lo, 4 * want + 8), exclude=lambda it: _is_test_instance(it, inst))
        return (r.pool.items[pos] for pos, _ in hits)


class UDRDemos(DenseDemos):
    kind = "udr"


def make_demo_selector(kind: str, pool_tasks: Iterable[Task] | Mapping[str, Task] | None = None,
                       k: int = 8, demo_budget_tokens: int | None = 1600,
                       length_fn: Callable[[str], int] | None = None, retriever_dir: str | Path | None = None,
                       seed: int = 0, *, encoder: str | None = None, encoder_layers: int | None = None,
                       encoder_max_length: int = 256, include_examples: bool = True) -> DemoSelector:
    """Build a selector. `retriever_dir` (a saved UDR retriever) is required for "udr"; "dense"
    uses `encoder` (default all-MiniLM-L6-v2, cosine) untrained."""
    common = dict(k=k, demo_budget_tokens=demo_budget_tokens, length_fn=length_fn, seed=seed,
                  include_examples=include_examples)
    if kind == "none":
        return NoDemos(pool_tasks, **common)
    if kind == "random":
        return RandomDemos(pool_tasks, **common)
    if kind == "bm25":
        return BM25Demos(pool_tasks, **common)
    if kind == "dense":
        enc = BiEncoder.from_pretrained(encoder, normalize=True, num_layers=encoder_layers,
                                        max_length=encoder_max_length)
        return DenseDemos(Retriever(enc), pool_tasks, **common)
    if kind == "udr":
        if retriever_dir is None:
            raise ConfigError("--demos udr needs --retriever DIR (a retriever saved by `instructmt retrieve train`)")
        return UDRDemos(Retriever.load(retriever_dir), pool_tasks, **common)
    raise ConfigError(f"unknown demonstration selector {kind!r} (choose from {', '.join(SELECTOR_KINDS)})")
