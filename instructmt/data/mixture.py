"""Task mixtures (seqio/FLAN style): examples-proportional with a cap and a temperature, resampled
every epoch, seeded; and the seen/held-out split helper that refuses overlap."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import SplitOverlapError
from ..tasks.schema import Instance, Task
from ..tasks.mixing import normalise_log_weights, proportional_log_weight


def check_split(seen: Iterable[str], held_out: Iterable[str]) -> None:
    """Raise if a task is both trained on and held out."""
    overlap = sorted(set(seen) & set(held_out))
    if overlap:
        raise SplitOverlapError(
            f"{len(overlap)} task(s) are both seen and held out: {', '.join(overlap[:5])}"
            + (" ..." if len(overlap) > 5 else ""))


def split_instances(task: Task, max_instances: int | None, holdback: int = 0
                    ) -> tuple[list[Instance], list[Instance]]:
    """(training instances, held-back instances): the held-back ones are the last `holdback` of the
    task, never trained on, so seen-task scores are on unseen instances."""
    insts = list(task.instances)
    held = insts[len(insts) - holdback:] if holdback > 0 else []
    train = insts[: len(insts) - holdback] if holdback > 0 else insts
    if max_instances is not None:
        train = train[:max_instances]
    return train, held


def mixing_rates(sizes: Sequence[int], cap: int | None = None, temperature: float = 1.0) -> list[float]:
    """rate_i ∝ min(n_i, cap) ** (1 / temperature), normalised to sum to 1."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError("temperature must be a finite number > 0")
    return normalise_log_weights([proportional_log_weight(n, cap or None, temperature) for n in sizes])


@dataclass
class Mixture:
    """Per-epoch sample of (task, instance) pairs from the seen tasks."""

    tasks: list[Task]
    instances: dict[str, list[Instance]]
    cap: int | None = None
    temperature: float = 1.0
    seed: int = 42
    # Explicit rates (e.g. from a mixture YAML); they replace the examples-proportional rule.
    rates: dict[str, float] | None = None

    @classmethod
    def from_tasks(cls, tasks: list[Task], *, max_instances: int | None = 100, holdback: int = 0,
                   cap: int | None = None, temperature: float = 1.0, seed: int = 42,
                   rates: dict[str, float] | None = None) -> "Mixture":
        inst = {t.name: split_instances(t, max_instances, holdback)[0] for t in tasks}
        return cls(tasks=tasks, instances=inst, cap=cap, temperature=temperature, seed=seed, rates=rates)

    def epoch_size(self) -> int:
        return sum(min(len(v), self.cap) if self.cap else len(v) for v in self.instances.values())

    def counts(self) -> dict[str, int]:
        """How many examples each task contributes per epoch (largest-remainder rounding)."""
        names = [t.name for t in self.tasks]
        if self.rates is not None:
            total_rate = sum(self.rates.get(n, 0.0) for n in names) or 1.0
            rates = [self.rates.get(n, 0.0) / total_rate for n in names]
        else:
            rates = mixing_rates([len(self.instances[n]) for n in names], self.cap, self.temperature)
        total = self.epoch_size()
        raw = [r * total for r in rates]
        counts = [int(x) for x in raw]
        order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
        for i in order[: total - sum(counts)]:
            counts[i] += 1
        return dict(zip(names, counts))

    def epoch(self, epoch: int) -> list[tuple[str, int]]:
        """(task name, instance index) pairs for one epoch; the same for the same (seed, epoch)."""
        rng = random.Random(f"{self.seed}-mixture-{epoch}")
        out: list[tuple[str, int]] = []
        for name, k in self.counts().items():
            n = len(self.instances[name])
            if n == 0 or k == 0:
                continue
            idx: list[int] = []
            while len(idx) < k:  # without replacement, refilled when a task is up-weighted past its size
                perm = list(range(n))
                rng.shuffle(perm)
                idx.extend(perm[: k - len(idx)])
            out.extend((name, i) for i in idx)
        rng.shuffle(out)
        return out
