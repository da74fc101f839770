"""Reports: metrics.json (machine), report.md (human), categories.png (per-category bars).

Baselines (copy-input, copy-demo) are always printed beside the model's scores, since tiny models
trained from scratch can score below them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..io_safety import REPORT_MARKER, atomic_replace_dir


def markdown_report(items, metrics: dict, baselines: dict, title: str) -> str:
    tasks = list(dict.fromkeys(it.task.name for it in items))
    task_obj = {it.task.name: it.task for it in items}
    cats = list(dict.fromkeys(it.task.category_key for it in items))
    families = list(dict.fromkeys(it.task.family for it in items))
    ci, cd = baselines["copy_input"], baselines["copy_demo"]
    lines = [f"# {title}", "",
             f"{int(metrics['num_instances'])} instances from {len(tasks)} tasks. Scores ×100; "
             "baselines: copy-input predicts the instance input, copy-demo the demonstration's output.", "",
             "| | exact match | ROUGE-L |", "|---|---:|---:|",
             f"| **model** | **{metrics['exact_match']:.1f}** | **{metrics['rougeL']:.1f}** |",
             f"| copy-input | {ci['exact_match']:.1f} | {ci['rougeL']:.1f} |",
             f"| copy-demo | {cd['exact_match']:.1f} | {cd['rougeL']:.1f} |", ""]
    if len(families) > 1:
        lines += ["## Per family", "", "| family | EM | ROUGE-L | copy-input RL | copy-demo RL |",
                  "|---|---:|---:|---:|---:|"]
        for f in families:
            k = f"family_{f}"
            lines.append(f"| {f} | {metrics[f'exact_match_for_{k}']:.1f} | {metrics[f'rougeL_for_{k}']:.1f} | "
                         f"{ci[f'rougeL_for_{k}']:.1f} | {cd[f'rougeL_for_{k}']:.1f} |")
        lines.append("")
    lines += ["## Per category", "", "| category | EM | ROUGE-L | copy-input RL | copy-demo RL |",
              "|---|---:|---:|---:|---:|"]
    for c in cats:
        lines.append(f"| {c} | {metrics[f'exact_match_for_{c}']:.1f} | {metrics[f'rougeL_for_{c}']:.1f} | "
                     f"{ci[f'rougeL_for_{c}']:.1f} | {cd[f'rougeL_for_{c}']:.1f} |")
    lines += ["", "## Per task", "", "| task | family | n | EM | ROUGE-L | other metrics | copy-input RL | copy-demo RL |",
              "|---|---|---:|---:|---:|---|---:|---:|"]
    for t in tasks:
        n = sum(1 for it in items if it.task.name == t)
        other = ", ".join(f"{m} {metrics[f'{m}_for_{t}']:.1f}" for m in task_obj[t].metrics
                          if m not in ("exact_match", "rougeL") and f"{m}_for_{t}" in metrics)
        lines.append(f"| {t} | {task_obj[t].family} | {n} | {metrics[f'exact_match_for_{t}']:.1f} | "
                     f"{metrics[f'rougeL_for_{t}']:.1f} | {other or '-'} | {ci[f'rougeL_for_{t}']:.1f} | "
                     f"{cd[f'rougeL_for_{t}']:.1f} |")
    return "\n".join(lines) + "\n"


def category_plot(path: Path, items, metrics: dict, baselines: dict, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(it.task.category_key for it in items))
    series = [("model", metrics), ("copy-input", baselines["copy_input"]), ("copy-demo", baselines["copy_demo"])]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cats) + 2), 4))
    width = 0.8 / len(series)
    for s, (label, m) in enumerate(series):
        xs = [i + (s - 1) * width for i in range(len(cats))]
        ax.bar(xs, [m[f"rougeL_for_{c}"] for c in cats], width, label=label)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([c.replace("_", "\n") for c in cats], fontsize=8)
    ax.set_ylabel("ROUGE-L")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output_dir: Path, items, predictions: Sequence[str], metrics: dict, baselines: dict,
                 title: str = "Held-out evaluation") -> Path:
    """Write the whole report into a temporary directory, then rename: never half a report."""
    def write(tmp: Path):
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for it, pred in zip(items, predictions):
                rec = {"Task": it.task.name, "Category": it.task.category_key, "Family": it.task.family,
                       "Instance": {"id": it.instance.id, "input": it.instance.input,
                                    "output": it.instance.outputs},
                       "prediction": pred}
                if it.demos:
                    rec["demos"] = [d.id for d in it.demos]
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (tmp / "metrics.json").write_text(json.dumps({**metrics, "baselines": baselines}, indent=2), encoding="utf-8")
        (tmp / "report.md").write_text(markdown_report(items, metrics, baselines, title), encoding="utf-8")
        category_plot(tmp / "categories.png", items, metrics, baselines, title)
    return atomic_replace_dir(output_dir, write, marker=REPORT_MARKER)
