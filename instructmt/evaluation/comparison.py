"""Two evaluations of the same instances side by side: a base model zero-shot and the tuned model.

Reads the two report directories `evaluate_tasks` wrote (predictions.jsonl + metrics.json), checks
they scored the same instances, and reports ROUGE-L / exact match overall, per family and per task
for base, tuned and the copy-input / copy-demo baselines, with a paired bootstrap 95% interval of
(tuned − base) ROUGE-L. Writes comparison.json, report.md and comparison.png.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..errors import InstructMTError
from .bootstrap import paired_bootstrap
from .metrics import rougeL_instance, sni_exact_match_instance

SYSTEMS = ("base", "tuned", "copy_input", "copy_demo")


def read_predictions(report_dir: Path) -> list[dict]:
    path = Path(report_dir) / "predictions.jsonl"
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise InstructMTError(f"cannot read predictions from {path}: {e}") from None


def _key(rec: dict) -> tuple[str, str]:
    return rec["Task"], str(rec["Instance"]["id"])


def compare_reports(base_dir: str | Path, tuned_dir: str | Path, *, n_resamples: int = 10_000,
                    confidence: float = 0.95, seed: int = 0) -> dict:
    """Scores ×100 of base, tuned and both copy baselines per group ("overall", "family:F",
    "task:T"), plus the paired bootstrap interval of tuned − base ROUGE-L in each group."""
    base, tuned = read_predictions(Path(base_dir)), read_predictions(Path(tuned_dir))
    if [_key(r) for r in base] != [_key(r) for r in tuned]:
        raise InstructMTError(f"{base_dir} and {tuned_dir} did not score the same instances in the same order")
    baselines = json.loads((Path(tuned_dir) / "metrics.json").read_text(encoding="utf-8"))["baselines"]
    refs = [r["Instance"]["output"] for r in tuned]
    rl = {"base": [100 * rougeL_instance(r["prediction"], y) for r, y in zip(base, refs)],
          "tuned": [100 * rougeL_instance(r["prediction"], y) for r, y in zip(tuned, refs)],
          "copy_input": [100 * rougeL_instance(r["Instance"]["input"], y) for r, y in zip(tuned, refs)]}
    em = {"base": [100 * sni_exact_match_instance(r["prediction"], y) for r, y in zip(base, refs)],
          "tuned": [100 * sni_exact_match_instance(r["prediction"], y) for r, y in zip(tuned, refs)]}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(tuned):
        groups["overall"].append(i)
        groups[f"family:{r.get('Family', 'unknown')}"].append(i)
        groups[f"task:{r['Task']}"].append(i)
    out = {}
    for name, idx in groups.items():
        suffix = "" if name == "overall" else \
            f"_for_family_{name[7:]}" if name.startswith("family:") else f"_for_{name[5:]}"
        mean = lambda xs: sum(xs[i] for i in idx) / len(idx)  # noqa: E731
        ci = paired_bootstrap([rl["tuned"][i] for i in idx], [rl["base"][i] for i in idx],
                              n_resamples=n_resamples, confidence=confidence, seed=seed)
        out[name] = {
            "n": len(idx),
            "rougeL": {"base": mean(rl["base"]), "tuned": mean(rl["tuned"]),
                       "copy_input": baselines["copy_input"][f"rougeL{suffix}"],
                       "copy_demo": baselines["copy_demo"][f"rougeL{suffix}"]},
            "exact_match": {"base": mean(em["base"]), "tuned": mean(em["tuned"]),
                            "copy_input": baselines["copy_input"][f"exact_match{suffix}"],
                            "copy_demo": baselines["copy_demo"][f"exact_match{suffix}"]},
            "delta_rougeL_tuned_minus_base": ci.to_dict(),
        }
    overall_vs_copy = paired_bootstrap(rl["tuned"], rl["copy_input"], n_resamples=n_resamples,
                                       confidence=confidence, seed=seed)
    out["overall"]["delta_rougeL_tuned_minus_copy_input"] = overall_vs_copy.to_dict()
    return out


def _ci(d: dict) -> str:
    return f"{d['delta']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def comparison_markdown(comp: dict, title: str, notes: list[str] = ()) -> str:
    o = comp["overall"]
    pct = int(round(100 * o["delta_rougeL_tuned_minus_base"]["confidence"]))
    lines = [f"# {title}", "", *notes, "" if notes else None,
             f"{o['n']} held-out instances. Scores ×100. Δ = tuned − base ROUGE-L with its paired bootstrap "
             f"{pct}% interval (instances resampled {o['delta_rougeL_tuned_minus_base']['n_resamples']} times).", "",
             "| | base (zero-shot) | tuned | copy-input | copy-demo |", "|---|---:|---:|---:|---:|",
             "| ROUGE-L | " + " | ".join(f"{o['rougeL'][s]:.1f}" for s in SYSTEMS) + " |",
             "| exact match | " + " | ".join(f"{o['exact_match'][s]:.1f}" for s in SYSTEMS) + " |", "",
             f"**Δ ROUGE-L (tuned − base): {_ci(o['delta_rougeL_tuned_minus_base'])}**; "
             f"tuned − copy-input: {_ci(o['delta_rougeL_tuned_minus_copy_input'])}.", ""]
    lines = [x for x in lines if x is not None]
    for kind, header in (("family", "family"), ("task", "task")):
        names = [k for k in comp if k.startswith(f"{kind}:")]
        lines += [f"## Per {header} (ROUGE-L)", "",
                  f"| {header} | n | base | tuned | Δ [{pct}% CI] | copy-input | copy-demo |",
                  "|---|---:|---:|---:|---|---:|---:|"]
        for k in names:
            g = comp[k]
            lines.append(f"| {k.split(':', 1)[1]} | {g['n']} | {g['rougeL']['base']:.1f} | {g['rougeL']['tuned']:.1f} "
                         f"| {_ci(g['delta_rougeL_tuned_minus_base'])} | {g['rougeL']['copy_input']:.1f} "
                         f"| {g['rougeL']['copy_demo']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def comparison_plot(path: Path, comp: dict, title: str) -> None:
    """Per-task ROUGE-L bars for the four systems, overall first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["overall"] + [k for k in comp if k.startswith("task:")]
    labels = ["overall"] + [k[5:].split("_", 1)[-1] for k in groups[1:]]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) + 2), 4))
    width = 0.8 / len(SYSTEMS)
    for s, system in enumerate(SYSTEMS):
        xs = [i + (s - 1.5) * width for i in range(len(groups))]
        ax.bar(xs, [comp[g]["rougeL"][system] for g in groups], width, label=system.replace("_", "-"))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([x.replace("_", "\n") for x in labels], fontsize=8)
    ax.set_ylabel("ROUGE-L")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
