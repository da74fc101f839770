"""Per-layer bit-width sampling for supernet training.

Uniform per-layer sampling concentrates the mean bit-width of a subnet near the middle (3 bits)
and under-trains the extreme subnets. The resource-balanced scheduler instead moves a target mean
bit-width along a triangular wave between b_min and b_max; per-layer probabilities are the
maximum-entropy distribution over the bit choices with that mean (p_b ∝ exp(λ·b), λ found by
bisection), so every layer is still free to take any bit-width while the subnet's mean follows
the wave.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence


def max_entropy_probs(target_mean: float, choices: Sequence[int]) -> list[float]:
    """The max-entropy distribution over `choices` whose mean is `target_mean` (clipped to range)."""
    choices = list(choices)
    lo, hi = min(choices), max(choices)
    if len(choices) == 1:
        return [1.0]
    if target_mean <= lo:
        return [1.0 if c == lo else 0.0 for c in choices]
    if target_mean >= hi:
        return [1.0 if c == hi else 0.0 for c in choices]

    def dist(lam: float) -> list[float]:
        m = max(lam * c for c in choices)
        w = [math.exp(lam * c - m) for c in choices]
        s = sum(w)
        return [x / s for x in w]

    def mean(lam: float) -> float:
        return sum(p * c for p, c in zip(dist(lam), choices))

    a, b = -60.0, 60.0  # mean(λ) is increasing in λ
    for _ in range(100):
        mid = (a + b) / 2
        if mean(mid) < target_mean:
            a = mid
        else:
            b = mid
    return dist((a + b) / 2)


@dataclass
class TriangularSchedule:
    """Target mean bit-width: starts at b_max, falls to b_min at period/2, back to b_max at period."""
    b_min: float
    b_max: float
    period: int = 8000

    def target(self, step: int) -> float:
        phase = (step % self.period) / self.period
        tri = 1.0 - abs(2.0 * phase - 1.0)  # 0 → 1 → 0 over one period
        return self.b_max - (self.b_max - self.b_min) * tri


class BitSampler:
    """Samples one bit-width per unit (layer) per step.

    mode: "balanced" (triangular-wave target + max-entropy probabilities), "uniform" (ablation),
    or "fixed" (always `fixed_bits`, e.g. for a single-bit-width QLoRA-style run).
    """

    def __init__(self, units: Sequence[str], choices: Sequence[int], mode: str = "balanced",
                 period: int = 8000, seed: int = 0, fixed_bits: int | None = None):
        if mode not in ("balanced", "uniform", "fixed"):
            raise ValueError(f"unknown QFA sampling mode {mode!r} (balanced | uniform | fixed)")
        self.units = list(units)
        self.choices = sorted(choices)
        self.mode = mode
        self.schedule = TriangularSchedule(min(self.choices), max(self.choices), max(1, period))
        self.fixed_bits = fixed_bits if fixed_bits is not None else max(self.choices)
        self.seed = seed

    def probabilities(self, step: int) -> list[float]:
        if self.mode == "uniform":
            return [1.0 / len(self.choices)] * len(self.choices)
        if self.mode == "fixed":
            return [1.0 if c == self.fixed_bits else 0.0 for c in self.choices]
        return max_entropy_probs(self.schedule.target(step), self.choices)

    def target(self, step: int) -> float:
        return sum(p * c for p, c in zip(self.probabilities(step), self.choices))

    def sample(self, step: int) -> dict[str, int]:
        """A pure function of (seed, step), so a resumed run samples exactly what it would have."""
        probs = self.probabilities(step)
        rng = random.Random(f"{self.seed}-{step}")
        return {u: rng.choices(self.choices, weights=probs)[0] for u in self.units}
