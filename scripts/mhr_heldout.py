"""Held-out-task few-shot adaptation: multi-task LoRA vs MHR, MHR-z, MHR-μ (and zero-shot MHR-μ).

    python scripts/mhr_heldout.py --output runs/mhr_heldout            # bundled tasks/sample
    python scripts/mhr_heldout.py --quick --output /tmp/mhr_heldout    # a few minutes on 2 CPU cores

0. (--pretrain-steps) A small "pretrained" base: full fine-tuning of tiny-t5 on the seen tasks, frozen after.
1. Multi-task stage on the seen tasks (splits/train_tasks.txt): a LoRA run and an MHR run, same rank
   and target modules, the same tiny random-init base (tiny-t5), the same steps and data order.
2. For each held-out task (splits/test_tasks.txt): adapt each run on the task's first `--shots`
   instances: LoRA (keep training the multi-task LoRA), MHR (new router row; router + skills), MHR-z
   (router only), MHR-μ (average of skills as one LoRA; trained), zero-shot MHR-μ (average, untrained).
3. Score every adapted model on instances after the shots (never trained on): exact match and ROUGE-L.

Writes results.json, results.md, heldout.png and the MHR run's routing report (routing_heatmap.png,
task_similarity.png, routing.json). Tiny models trained from scratch on synthetic tasks: the numbers
test the pipeline and compare the modes at this scale only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("lora", "mhr", "mhr-z", "mhr-mu", "mhr-mu-zeroshot")


def multitask_config(args, method: str, out: Path, base: str = "tiny-t5", steps: int | None = None):
    from instructmt.config import load_config

    overrides = [
        f"output_dir={out}", f"model.name_or_path={base}", f"model.tiny_d_model={args.d_model}",
        f"model.tiny_layers={args.layers}", f"data.tasks={args.tasks}", f"data.split_dir={args.tasks}/splits",
        f"data.max_instances_per_task={args.mt_instances}", f"data.max_source_length={args.max_source_length}",
        f"data.max_target_length={args.max_target_length}", f"max_steps={steps or args.mt_steps}",
        f"batch_size={args.batch_size}", f"learning_rate={args.lr}", f"seed={args.seed}", "log_every=10",
        f"adapter.method={method}", f"adapter.r={args.r}", "adapter.alpha=" + str(args.r),
        "adapter.target_modules=q,k,v,o",
    ]
    cfg = load_config(None, overrides)
    if method == "mhr":
        cfg.adapter.options = {"n_skills": args.n_skills, "n_splits": args.n_splits, "router_lr": args.router_lr}
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="tasks/sample", help="task directory with splits/")
    ap.add_argument("--output", default="runs/mhr_heldout")
    ap.add_argument("--quick", action="store_true", help="few steps, 2 held-out tasks, few eval instances")
    ap.add_argument("--held-out", nargs="+", help="held-out tasks (default: the split's test tasks)")
    ap.add_argument("--max-held-out", type=int, help="use only the first N held-out tasks")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--pretrain-steps", type=int, default=300,
                    help="stage 0: full fine-tuning of the tiny base on the seen tasks (0: a random frozen base)")
    ap.add_argument("--mt-steps", type=int, default=300, help="multi-task adapter steps")
    ap.add_argument("--mt-instances", type=int, default=100, help="training instances per seen task")
    ap.add_argument("--adapt-steps", type=int, default=100, help="few-shot steps (paper: 1000)")
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--eval-instances", type=int, default=50, help="scored instances per held-out task")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="adapter learning rate (paper: 1e-3)")
    ap.add_argument("--router-lr", type=float, default=0.1, help="router learning rate (paper: 0.1)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--n-skills", type=int, default=8)
    ap.add_argument("--n-splits", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-source-length", type=int, default=256)
    ap.add_argument("--max-target-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.mt_steps, args.adapt_steps, args.eval_instances = min(args.mt_steps, 60), min(args.adapt_steps, 20), \
            min(args.eval_instances, 16)
        args.pretrain_steps = min(args.pretrain_steps, 60)
        args.max_held_out = args.max_held_out or 2

    import torch

    torch.set_num_threads(1)
    from instructmt.adapters.mhr import write_routing_report
    from instructmt.workflows.adapt import adapt_run, evaluate_adapted
    from instructmt.models.loading import load_run
    from instructmt.tasks.natural_instructions import read_split_file
    from instructmt.training.trainer import train

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    held = args.held_out or read_split_file(Path(args.tasks) / "splits" / "test_tasks.txt")
    held = held[: args.max_held_out] if args.max_held_out else held
    timings: dict[str, float] = {}

    base = "tiny-t5"
    if args.pretrain_steps:
        # stage 0: a small "pretrained" base (full fine-tuning on the seen tasks), then frozen
        t0 = time.time()
        res = train(multitask_config(args, "full", out / "base_full", steps=args.pretrain_steps))
        timings["pretrain_full_s"] = round(time.time() - t0, 1)
        base = str(res.model_dir)
        print(f"[mhr_heldout] base (full fine-tuning, {args.pretrain_steps} steps): final loss "
              f"{res.final_loss:.4f}", flush=True)

    runs = {}
    for method in ("lora", "mhr"):
        if method == "lora" and "lora" not in args.modes:
            continue
        t0 = time.time()
        res = train(multitask_config(args, method, out / f"mt_{method}", base=base))
        timings[f"multitask_{method}_s"] = round(time.time() - t0, 1)
        runs[method] = res.model_dir
        print(f"[mhr_heldout] multi-task {method}: final loss {res.final_loss:.4f}", flush=True)

    mhr_model, _, mhr_meta = load_run(runs["mhr"])
    write_routing_report(mhr_model, mhr_meta["task_names"], out / "routing")
    del mhr_model

    results: dict[str, dict[str, dict]] = {}
    for task in held:
        results[task] = {}
        for mode in args.modes:
            src = runs["lora"] if mode == "lora" else runs["mhr"]
            run_dir = out / "adapt" / task / mode
            t0 = time.time()
            model_dir = adapt_run(src, [task], mode, output=str(run_dir), shots=args.shots,
                                  steps=args.adapt_steps, lr=args.lr, batch_size=args.batch_size,
                                  task_sources=[args.tasks], seed=args.seed, router_lr=args.router_lr)
            metrics = evaluate_adapted(model_dir, [task], run_dir / "eval", shots=args.shots,
                                       max_instances=args.eval_instances, task_sources=[args.tasks])
            results[task][mode] = {"exact_match": round(metrics["exact_match"], 2),
                                   "rougeL": round(metrics["rougeL"], 2),
                                   "instances": int(metrics["num_instances"]),
                                   "seconds": round(time.time() - t0, 1)}
            print(f"[mhr_heldout] {task} {mode}: EM {metrics['exact_match']:.2f} "
                  f"ROUGE-L {metrics['rougeL']:.2f}", flush=True)

    mean = {m: {k: round(sum(results[t][m][k] for t in held) / len(held), 2) for k in ("exact_match", "rougeL")}
            for m in args.modes}
    payload = {"machine": "CPU, 2 cores, shared", "args": vars(args), "held_out": held, "results": results,
               "mean": mean, "timings": timings,
               "note": "tiny random-init T5 base, briefly fully fine-tuned on the seen tasks (stage 0), then frozen; "
                       "adapters trained from scratch; synthetic tasks"}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    lines = [f"# Held-out few-shot adaptation ({args.shots} shots, {args.adapt_steps} steps)", "",
             f"Machine: CPU, 2 cores, shared. Base: tiny-t5 (d_model {args.d_model}, {args.layers} layers, random "
             f"init, then {args.pretrain_steps} steps of full fine-tuning on the seen tasks, then frozen); r={args.r} on q,k,v,o; MHR K={args.n_skills}, h={args.n_splits}; multi-task "
             f"{args.mt_steps} steps. Scored on up to {args.eval_instances} instances after the shots.", "",
             "| task | " + " | ".join(f"{m} EM / RL" for m in args.modes) + " |",
             "|---|" + "---|" * len(args.modes)]
    for t in held:
        lines.append(f"| {t} | " + " | ".join(f"{results[t][m]['exact_match']:.1f} / {results[t][m]['rougeL']:.1f}"
                                               for m in args.modes) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{mean[m]['exact_match']:.1f} / {mean[m]['rougeL']:.1f}**"
                                             for m in args.modes) + " |")
    lines += ["", "Routing of the multi-task MHR run: routing/routing_heatmap.png, routing/task_similarity.png."]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(args.modes))
    ax.bar([x - 0.2 for x in xs], [mean[m]["rougeL"] for m in args.modes], width=0.4, label="ROUGE-L")
    ax.bar([x + 0.2 for x in xs], [mean[m]["exact_match"] for m in args.modes], width=0.4, label="exact match")
    ax.set_xticks(list(xs), labels=list(args.modes))
    ax.set_ylabel("mean over held-out tasks")
    ax.set_title(f"few-shot adaptation ({args.shots} shots)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=120)
    plt.close(fig)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
