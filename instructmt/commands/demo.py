"""`instructmt demo`: the embedded default, end to end on 2 CPU cores in a few minutes.

Trains a tiny T5 *from scratch* (random init; no pretrained model is available offline) on the
bundled seen tasks, then evaluates the bundled held-out tasks and the seen tasks' held-back
instances, printing each score beside the copy-input and copy-demo baselines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..adapters.base import AdapterConfig
from ..config import DataConfig, ModelConfig, TrainConfig

DEMO_TASKS = ["tasks/mixtures/four_families.yaml"]  # all four families; held-out: tasks/sample/splits


def demo_config(output: str, steps: int, tasks: list[str]) -> TrainConfig:
    return TrainConfig(
        output_dir=output,
        model=ModelConfig(name_or_path="tiny-t5", tiny_d_model=128, tiny_layers=2, tiny_vocab_size=600),
        data=DataConfig(tasks=tasks, encoding="def+pos1", max_instances_per_task=100, holdback_per_seen_task=20,
                        max_source_length=160, max_target_length=24),
        # The tiny base is random: adapting a few LoRA weights on top of noise learns nothing, so the
        # demo fine-tunes every weight. LoRA is the default everywhere else.
        adapter=AdapterConfig(method="full"),
        max_steps=steps, batch_size=32, learning_rate=2e-3, lr_scheduler="linear", warmup_steps=30,
        save_every=max(steps // 2, 1), log_every=25, seed=7)


def _run(args) -> int:
    from ..evaluation.runner import evaluate_tasks
    from ..data.mixture import split_instances
    from ..training.task_setup import resolve_tasks
    from ..training.trainer import train

    t0 = time.time()
    out = Path(args.output)
    cfg = demo_config(str(out), args.steps, args.tasks or DEMO_TASKS)
    print("[demo] training a tiny T5 from scratch (random init, ~1M parameters) on the bundled seen tasks.")
    print("[demo] its scores are those of a tiny from-scratch model: compare them with the baselines beside them.")
    split = resolve_tasks(cfg.data)
    result = train(cfg, split)
    t_train = time.time() - t0

    from ..models.loading import load_run
    model, tok, meta = load_run(result.model_dir)
    common = dict(kind=meta["kind"], encoding=cfg.data.encoding, max_source_length=cfg.data.max_source_length,
                  max_new_tokens=cfg.data.max_target_length, batch_size=64)
    held = evaluate_tasks(model, tok, split.held_out, output_dir=out / "report" / "held_out",
                          max_instances=args.eval_instances, title="Held-out tasks (never trained on)", **common)
    seen_back = {t.name: split_instances(t, cfg.data.max_instances_per_task, cfg.data.holdback_per_seen_task)[1]
                 for t in split.seen}
    seen = evaluate_tasks(model, tok, split.seen, output_dir=out / "report" / "seen_heldback",
                          instances=seen_back, max_instances=args.eval_instances,
                          title="Seen tasks, held-back instances (never trained on)", **common)
    wall = time.time() - t0
    summary = {"train_steps": result.steps, "final_loss": result.final_loss, "train_seconds": round(t_train, 1),
               "wall_seconds": round(wall, 1),
               "held_out": {k: v for k, v in held.items() if "_for_" not in k},
               "seen_heldback": {k: v for k, v in seen.items() if "_for_" not in k},
               "baselines_held_out": {b: {m: held_b[m] for m in ("exact_match", "rougeL")}
                                      for b, held_b in json.loads((out / "report" / "held_out" / "metrics.json").read_text())["baselines"].items()}}
    (out / "report" / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    for name in ("held_out", "seen_heldback"):
        print((out / "report" / name / "report.md").read_text(encoding="utf-8"))
    print(f"[demo] done in {wall:.0f} s (training {t_train:.0f} s). Model: {result.model_dir} "
          f"(reload with `instructmt eval --model {result.model_dir} --tasks tasks/sample --output DIR`). "
          f"Reports: {out / 'report'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a tiny model on the bundled tasks and evaluate held-out tasks",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", help="output directory (default demo_output)")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    p.add_argument("--eval-instances", type=int, default=20, help="instances per task to evaluate (default 20)")
    p.add_argument("--tasks", nargs="+", help="task sources (default: the bundled tasks/sample)")
    p.set_defaults(func=_run)
