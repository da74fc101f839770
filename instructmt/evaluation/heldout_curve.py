"""The held-out curve: the scorer the trainer calls every `eval_every` steps, and the curve report.

`HeldoutCurveScorer` is what `instructmt train --eval-every N` passes into `training.trainer.train`
(training may not import evaluation; see training/heldout_eval.py). It renders the first
`eval_instances` instances of each held-out task once, then at every call generates greedily with
the held-out runner's `generate_sharded` (sharded by index and gathered in order under
`accelerate launch`, as `instructmt eval` does) and scores with the runner's `score` (SNI ROUGE-L /
exact match, per task). `write_curve` reads the points back from `logs.jsonl` (the last record of
each step wins, so a resumed run that repeats a step keeps one point) and writes
RUN/heldout_curve.json, .md and .png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..data.tokenize import source_length_fn
from ..io_safety import atomic_write_text
from ..prompts.render import PromptRenderer
from .runner import build_items, encode_items, generate_sharded, score

CURVE_NAME = "heldout_curve"
RECORD_KIND = "heldout_eval"   # = training.heldout_eval.HELDOUT_RECORD


class HeldoutCurveScorer:
    """Generate + score the held-out tasks of a run; one instance per training run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self._items = None
        self._src_ids = None

    def _prepare(self, tokenizer, kind: str, split) -> None:
        d = self.cfg.data
        renderer = PromptRenderer(d.encoding, length_fn=source_length_fn(tokenizer),
                                  max_source_length=d.max_source_length)
        self._items = build_items(split.held_out, renderer, max_instances=self.cfg.eval_instances)
        self._src_ids = encode_items(self._items, tokenizer, kind=kind, encoding=renderer.encoding.name,
                                     max_source_length=d.max_source_length, max_new_tokens=self.max_new_tokens,
                                     use_chat_template=self.cfg.model.use_chat_template)

    @property
    def max_new_tokens(self) -> int:
        return self.cfg.eval_max_new_tokens or self.cfg.data.max_target_length

    def __call__(self, model, tokenizer, *, kind: str, split, accelerator) -> dict[str, Any]:
        if self._items is None:
            self._prepare(tokenizer, kind, split)
        preds = generate_sharded(model, tokenizer, kind, self._src_ids, accelerator=accelerator,
                                 batch_size=self.cfg.eval_batch_size, max_new_tokens=self.max_new_tokens,
                                 show_progress=False)
        m = score(self._items, preds)
        tasks = list(dict.fromkeys(it.task.name for it in self._items))
        return {"rougeL": m["rougeL"], "exact_match": m["exact_match"],
                "num_instances": int(m["num_instances"]),
                "per_task": {t: {"rougeL": m[f"rougeL_for_{t}"], "exact_match": m[f"exact_match_for_{t}"]}
                             for t in tasks}}

    def write_report(self, run_dir) -> None:
        write_curve(run_dir)


def read_curve(run_dir: str | Path) -> list[dict]:
    """The held-out points of a run's logs.jsonl, one per step (the last written wins), by step."""
    points: dict[int, dict] = {}
    path = Path(run_dir) / "logs.jsonl"
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(rec, dict) and rec.get("kind") == RECORD_KIND:
            points[int(rec["step"])] = rec
    return [points[s] for s in sorted(points)]


def curve_markdown(points: list[dict]) -> str:
    tasks = list(dict.fromkeys(t for p in points for t in p.get("per_task", {})))
    n = points[0].get("num_instances", "?") if points else 0
    lines = ["# Held-out curve during training", "",
             f"{n} instances from {len(tasks)} held-out tasks, scored at each step below (step 0 is the base "
             "model before any update). Scores ×100; per-task columns are ROUGE-L.", "",
             "| step | ROUGE-L | exact match | " + " | ".join(tasks) + " |",
             "|---:|---:|---:|" + "---:|" * len(tasks)]
    for p in points:
        per = p.get("per_task", {})
        cells = " | ".join(f"{per[t]['rougeL']:.1f}" if t in per else "-" for t in tasks)
        lines.append(f"| {p['step']} | {p['rougeL']:.1f} | {p['exact_match']:.1f} | {cells} |")
    return "\n".join(lines) + "\n"


def curve_plot(path: Path, points: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    tasks = list(dict.fromkeys(t for p in points for t in p.get("per_task", {})))
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in tasks:
        ax.plot(steps, [p.get("per_task", {}).get(t, {}).get("rougeL", float("nan")) for p in points],
                lw=0.8, alpha=0.45, label=t if len(tasks) <= 8 else None)
    ax.plot(steps, [p["rougeL"] for p in points], "o-", lw=2.2, color="black", label="overall ROUGE-L")
    ax.plot(steps, [p["exact_match"] for p in points], "s--", lw=1.6, color="tab:red", label="overall exact match")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("score (×100)")
    ax.set_ylim(0, 100)
    ax.set_title("Held-out tasks during training")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_curve(run_dir: str | Path) -> list[dict]:
    """RUN/heldout_curve.json (machine), .md (table), .png (plot), each written atomically."""
    run_dir = Path(run_dir)
    points = read_curve(run_dir)
    if not points:
        return points
    atomic_write_text(run_dir / f"{CURVE_NAME}.json", json.dumps({"points": points}, indent=2))
    atomic_write_text(run_dir / f"{CURVE_NAME}.md", curve_markdown(points))
    tmp = run_dir / f".{CURVE_NAME}.tmp.png"
    curve_plot(tmp, points)
    tmp.replace(run_dir / f"{CURVE_NAME}.png")
    return points
