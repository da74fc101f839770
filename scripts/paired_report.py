"""Shared helpers of the method reports (mhr_heldout.py, scalearn_report.py): per-instance scores read
back from an evaluation's predictions.jsonl, and paired bootstrap intervals against a baseline row.

The intervals come from `instructmt.evaluation.bootstrap.paired_bootstrap`; this file only pairs
instances by (task, instance id) so that two systems are compared on exactly the same instances.
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("exact_match", "rougeL")


def instance_scores(eval_dir: str | Path) -> dict[tuple[str, str], dict[str, float]]:
    """{(task, instance id): {"exact_match": 0|100, "rougeL": 0..100}} from EVAL/predictions.jsonl
    (the SNI per-instance metrics, ×100 as in metrics.json)."""
    from instructmt.evaluation.comparison import read_predictions
    from instructmt.evaluation.metrics import rougeL_instance, sni_exact_match_instance

    out: dict[tuple[str, str], dict[str, float]] = {}
    for rec in read_predictions(Path(eval_dir)):
        refs, pred = rec["Instance"]["output"], rec["prediction"]
        out[(rec["Task"], str(rec["Instance"]["id"]))] = {
            "exact_match": 100.0 * sni_exact_match_instance(pred, refs),
            "rougeL": 100.0 * rougeL_instance(pred, refs)}
    return out


def paired_delta(method: dict, baseline: dict, metric: str, *, task: str | None = None, seed: int = 0,
                 n_resamples: int = 10_000) -> dict | None:
    """Mean of method − baseline over the instances both scored (optionally one task's), with the
    95% paired bootstrap interval; None when they share no instance."""
    from instructmt.evaluation.bootstrap import paired_bootstrap

    keys = sorted(k for k in method if k in baseline and (task is None or k[0] == task))
    if not keys:
        return None
    ci = paired_bootstrap([method[k][metric] for k in keys], [baseline[k][metric] for k in keys],
                          n_resamples=n_resamples, seed=seed)
    return {"delta": round(ci.delta, 2), "low": round(ci.low, 2), "high": round(ci.high, 2), "n": ci.n_instances}


def mean_score(scores: dict, metric: str, task: str | None = None) -> float:
    vals = [v[metric] for k, v in scores.items() if task is None or k[0] == task]
    return round(sum(vals) / len(vals), 2) if vals else float("nan")


def fmt_delta(d: dict | None) -> str:
    return "—" if d is None else f"{d['delta']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def git_commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parents[1], timeout=10).stdout.strip()
        return sha + (" (working tree with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
