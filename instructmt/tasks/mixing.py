"""The mixing-rate formula (seqio / FLAN examples-proportional): rate_i ∝ min(n_i, cap) ** (1 / T),
computed in log space (n ** (1 / T) overflows a float for small temperatures). One place for both the
mixture YAML's declared rates and the training mixture."""

from __future__ import annotations

import math
from typing import Sequence


def proportional_log_weight(n: int, cap: int | None, temperature: float) -> float:
    """log(min(n, cap)) / temperature; -inf for an empty task (it is never sampled)."""
    m = n if cap is None else min(n, cap)
    return math.log(m) / temperature if m > 0 else -math.inf


def normalise_log_weights(logs: Sequence[float]) -> list[float]:
    """exp(log weights), normalised to sum to 1 (all zeros when every weight is -inf)."""
    top = max(logs, default=-math.inf)
    w = [math.exp(v - top) if v > -math.inf else 0.0 for v in logs]
    total = sum(w)
    return [x / total for x in w] if total > 0 else w
