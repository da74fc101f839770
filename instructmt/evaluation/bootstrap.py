"""Paired bootstrap confidence intervals for "method minus baseline" on the same instances.

Both systems are scored on the same instances, so the instances (not the two score lists
separately) are resampled with replacement, and the statistic is the mean per-instance
difference. The interval is the percentile interval of the resampled means (Efron & Tibshirani
1993, ch. 13; the paired form is Koehn 2004's "paired bootstrap resampling").
`scipy.stats.bootstrap(..., paired=True, method="percentile")` computes the same interval; these
few numpy lines avoid declaring scipy as a dependency for it and keep the resampling seeded here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PairedInterval:
    """Mean of (method − baseline) over instances, and its bootstrap percentile interval."""
    delta: float
    low: float
    high: float
    confidence: float
    n_instances: int
    n_resamples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.delta:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def paired_bootstrap(method: Sequence[float], baseline: Sequence[float], *, n_resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> PairedInterval:
    """Percentile interval of mean(method − baseline), resampling instance indices with replacement.

    `method[i]` and `baseline[i]` must score the same instance i (e.g. per-instance ROUGE-L ×100)."""
    a = np.asarray(method, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length lists, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired bootstrap needs at least one instance")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // diff.size)  # bound memory: resample in blocks of indices
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedInterval(float(diff.mean()), float(low), float(high), confidence, int(diff.size),
                          n_resamples, seed)
