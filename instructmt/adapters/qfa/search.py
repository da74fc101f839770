"""Deployment search over a trained QFA supernet, without retraining.

1. score the uniform subnets (all-2, all-3, all-4) and `n_initial` random subnets whose mean
   bit-widths spread over [b_min, b_max] (a target mean drawn uniformly, then max-entropy per-layer
   probabilities — plain uniform per-layer sampling would cluster near 3 bits);
2. rank layer sensitivity: a ridge regression score ≈ c + Σ_u β_u · bits_u over the scored
   subnets; β_u is the score gained per extra bit in layer u;
3. narrow the space: the most sensitive third of layers may only take the upper bit-widths,
   the least sensitive third only the lower ones;
4. sample `n_refine` subnets from the narrowed space under the budget and score them;
5. report the Pareto front (cost vs score) and the best subnet within the budget.
When the whole space is no larger than the sampling budget it is enumerated instead.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ...io_safety import atomic_write_text
from ...errors import ConfigError
from .model import avg_bits, state_of, weight_bytes
from .sampler import max_entropy_probs

MB = 1_000_000


@dataclass
class Budget:
    kind: str    # "bits" (parameter-weighted mean bit-width) | "mb" (quantized weight memory, 10^6 bytes)
    value: float

    @classmethod
    def parse(cls, text: str | float) -> "Budget":
        s = str(text).strip().lower().replace(" ", "")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)(mb|bits?|b)?", s)
        if not m:
            raise ConfigError(f"--budget {text!r}: expected bits (e.g. 3, 2.5bits) or memory (e.g. 0.05MB)")
        value, unit = float(m.group(1)), m.group(2)
        if unit == "mb" or (unit is None and value > 8):
            return cls("mb", value)
        return cls("bits", value)

    def label(self) -> str:
        return f"{self.value:g} bits" if self.kind == "bits" else f"{self.value:g} MB"


@dataclass
class Candidate:
    config: dict[str, int]
    avg_bits: float
    weight_mb: float
    metric: float
    score: float       # metric oriented so that higher is better
    phase: str
    pareto: bool = False
    within_budget: bool = False


@dataclass
class SearchResult:
    metric_name: str
    higher_is_better: bool
    budget: Budget
    units: list[str]
    candidates: list[Candidate]
    sensitivity: dict[str, float]
    narrowed: dict[str, list[int]]
    best: Candidate | None
    exhaustive: bool
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"metric": self.metric_name, "higher_is_better": self.higher_is_better,
                "budget": asdict(self.budget), "units": self.units, "exhaustive": self.exhaustive,
                "sensitivity": self.sensitivity, "narrowed_space": self.narrowed,
                "best": asdict(self.best) if self.best else None,
                "pareto": [asdict(c) for c in self.pareto()],
                "candidates": [asdict(c) for c in self.candidates], **self.extra}

    def pareto(self) -> list[Candidate]:
        return sorted((c for c in self.candidates if c.pareto), key=lambda c: c.avg_bits)


def _cost(c: Candidate, budget: Budget) -> float:
    return c.avg_bits if budget.kind == "bits" else c.weight_mb


def mark_pareto(candidates: list[Candidate], key: Callable[[Candidate], float]) -> None:
    """A candidate is on the front if no other is at most as costly and strictly better."""
    for c in candidates:
        c.pareto = not any(key(o) <= key(c) and o.score > c.score or key(o) < key(c) and o.score >= c.score
                           for o in candidates if o is not c)


def layer_sensitivity(units: Sequence[str], candidates: Sequence[Candidate], ridge: float = 1e-3) -> dict[str, float]:
    x = torch.tensor([[c.config[u] for u in units] for c in candidates], dtype=torch.float64)
    y = torch.tensor([c.score for c in candidates], dtype=torch.float64)
    x = torch.cat([torch.ones(len(candidates), 1, dtype=torch.float64), x - x.mean(0)], dim=1)
    reg = ridge * torch.eye(x.shape[1], dtype=torch.float64)
    reg[0, 0] = 0
    beta = torch.linalg.solve(x.t() @ x + reg, x.t() @ y)
    return {u: float(b) for u, b in zip(units, beta[1:])}


def narrow_space(sensitivity: dict[str, float], bits: Sequence[int], fraction: float = 1 / 3) -> dict[str, list[int]]:
    bits = sorted(bits)
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
    k = int(round(len(ranked) * fraction))
    mid = bits[len(bits) // 2]
    space = {u: list(bits) for u in ranked}
    if len(bits) > 1 and k > 0:
        for u in ranked[:k]:
            space[u] = [b for b in bits if b >= mid]
        for u in ranked[-k:]:
            if u not in ranked[:k]:
                space[u] = [b for b in bits if b <= mid]
    return space


def _sample_config(space: dict[str, list[int]], target: float, rng: random.Random) -> dict[str, int]:
    out = {}
    for u, choices in space.items():
        probs = max_entropy_probs(target, choices)
        out[u] = rng.choices(choices, weights=probs)[0]
    return out


def search(model: nn.Module, evaluate: Callable[[dict[str, int]], float], budget: Budget, *,
           metric_name: str = "score", higher_is_better: bool = True, n_initial: int = 100,
           n_refine: int = 50, seed: int = 0, progress: bool = True) -> SearchResult:
    """Evaluate subnets with `evaluate(config) -> metric`; see the module docstring for the steps."""
    state = state_of(model)
    units, bits = state.units, sorted(state.config.bits)
    rng = random.Random(seed)
    seen: dict[tuple, Candidate] = {}
    bar = tqdm(total=0, desc="qfa search", disable=not progress, unit="subnet")

    def score(config: dict[str, int], phase: str) -> Candidate | None:
        key = tuple(config[u] for u in units)
        if key in seen:
            return None
        metric = float(evaluate(config))
        c = Candidate(dict(config), round(avg_bits(model, config), 4), weight_bytes(model, config) / MB,
                      metric, metric if higher_is_better else -metric, phase)
        seen[key] = c
        bar.update(1)
        return c

    space_size = len(bits) ** len(units)
    exhaustive = space_size <= n_initial + n_refine + len(bits)
    if exhaustive:
        bar.total = space_size
        for combo in itertools.product(bits, repeat=len(units)):
            score(dict(zip(units, combo)), "exhaustive")
    else:
        bar.total = len(bits) + n_initial + n_refine
        for b in bits:
            score({u: b for u in units}, "uniform")
        tries = 0
        while len(seen) < len(bits) + n_initial and tries < 20 * n_initial:
            tries += 1
            score(_sample_config({u: bits for u in units}, rng.uniform(bits[0], bits[-1]), rng), "initial")
    sensitivity = layer_sensitivity(units, list(seen.values())) if len(seen) > 1 else {u: 0.0 for u in units}
    narrowed = narrow_space(sensitivity, bits)
    if not exhaustive:
        lo = min(min(v) for v in narrowed.values())
        hi = max(max(v) for v in narrowed.values())
        if budget.kind == "bits":
            hi = min(hi, max(lo, budget.value))
        start, tries = len(seen), 0
        while len(seen) < start + n_refine and tries < 40 * n_refine:
            tries += 1
            cfg = _sample_config(narrowed, rng.uniform(lo, hi), rng)
            cost = avg_bits(model, cfg) if budget.kind == "bits" else weight_bytes(model, cfg) / MB
            if cost <= budget.value or tries > 20 * n_refine:
                score(cfg, "refine")
    bar.close()
    candidates = list(seen.values())
    mark_pareto(candidates, lambda c: _cost(c, budget))
    for c in candidates:
        c.within_budget = _cost(c, budget) <= budget.value + 1e-9
    feasible = [c for c in candidates if c.within_budget]
    best = max(feasible, key=lambda c: (c.score, -_cost(c, budget))) if feasible else None
    return SearchResult(metric_name, higher_is_better, budget, list(units), candidates, sensitivity,
                        narrowed, best, exhaustive)


# ----------------------------------------------------------------------------- reports
def write_search_report(result: SearchResult, out_dir: str | Path, title: str = "QFA deployment search") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "qfa_search.json", "md": out / "qfa_search.md", "png": out / "qfa_search.png"}
    atomic_write_text(paths["json"], json.dumps(result.to_json(), indent=2))

    def cfg_text(c: Candidate) -> str:
        return ",".join(str(c.config[u]) for u in result.units)

    direction = "higher" if result.higher_is_better else "lower"
    lines = [f"# {title}", "",
             f"Budget: **{result.budget.label()}**. Metric: `{result.metric_name}` ({direction} is better). "
             f"{len(result.candidates)} subnets scored ({'exhaustive' if result.exhaustive else 'sampled + narrowed'}). "
             f"Layer order: {', '.join(result.units)}.", ""]
    if result.best:
        b = result.best
        lines += [f"**Best within budget:** `{cfg_text(b)}` — {b.avg_bits:.3f} avg bits, "
                  f"{b.weight_mb * 1000:.2f} KB quantized weights, {result.metric_name} {b.metric:.4f}", ""]
    else:
        lines += ["**No scored subnet fits the budget.**", ""]
    lines += ["## Pareto front", "", f"| config | avg bits | weight memory (KB) | {result.metric_name} | within budget |",
              "|---|---:|---:|---:|:---:|"]
    for c in result.pareto():
        lines.append(f"| `{cfg_text(c)}` | {c.avg_bits:.3f} | {c.weight_mb * 1000:.2f} | {c.metric:.4f} | "
                     f"{'yes' if c.within_budget else 'no'} |")
    lines += ["", "## Layer sensitivity (score gained per extra bit; higher = keep more bits)", "",
              "| layer | sensitivity | narrowed bit choices |", "|---|---:|---|"]
    for u in sorted(result.sensitivity, key=result.sensitivity.get, reverse=True):
        lines.append(f"| {u} | {result.sensitivity[u]:+.4f} | {result.narrowed[u]} |")
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    plot_search(result, paths["png"], title)
    return paths


def plot_search(result: SearchResult, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"uniform": "tab:red", "initial": "tab:gray", "refine": "tab:blue", "exhaustive": "tab:gray"}
    for phase, color in colors.items():
        pts = [c for c in result.candidates if c.phase == phase]
        if pts:
            ax.scatter([c.avg_bits for c in pts], [c.metric for c in pts], s=14, c=color, alpha=0.6, label=phase)
    front = result.pareto()
    ax.plot([c.avg_bits for c in front], [c.metric for c in front], "-", c="black", lw=1, label="Pareto front")
    if result.best:
        ax.scatter([result.best.avg_bits], [result.best.metric], marker="*", s=180, c="gold",
                   edgecolors="black", zorder=5, label="best within budget")
    if result.budget.kind == "bits":
        ax.axvline(result.budget.value, ls="--", c="tab:green", lw=1, label=f"budget {result.budget.label()}")
    ax.set_xlabel("average bits per quantized weight")
    ax.set_ylabel(result.metric_name)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
