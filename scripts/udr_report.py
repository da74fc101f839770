#!/usr/bin/env python3
"""UDR side by side on held-out tasks: no demonstrations / random / BM25 / untrained dense
(all-MiniLM-L6-v2) / trained UDR retriever — plus the tasks' fixed positive examples for reference.

1. the generator: a tiny T5 trained from scratch on the seen sample tasks (`instructmt demo`'s
   recipe), or an existing run with --run;
2. the UDR retriever: all-MiniLM-L6-v2 fine-tuned across the seen tasks with feedback from that
   generator (BM25 iteration 0, then its own candidates), saved with its index;
3. held-out evaluation (`evaluate_tasks`) once per selector, same model, same instances, same k
   and token budget; demonstrations come from each held-out task's own pool, never the test
   instance. Besides exact match / ROUGE-L it reports an intrinsic number that does not depend
   on generation: the generator's mean log-likelihood of the gold output given the selected
   most-similar demonstration (the quantity UDR is trained to rank by), and copy-demo (the last
   demonstration's output taken as the prediction).

Writes OUTPUT/udr_report.{json,md,png}. Everything runs on CPU; the models are tiny and trained
from scratch, so absolute scores are low — compare the rows with each other.

    python scripts/udr_report.py --output runs/udr_report            # see --help for the knobs
    python scripts/udr_report.py --run runs/udr_report/lm --skip-udr-train   # reuse both
    python scripts/udr_report.py --quick | --full    # on SmolLM2-135M-Instruct (scripts/udr_real.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SELECTORS = ("none", "random", "bm25", "dense", "udr", "fixed")
LABELS = {"none": "no demonstrations", "random": "random", "bm25": "BM25", "dense": "dense (untrained MiniLM)",
          "udr": "UDR (trained)", "fixed": "task's positive examples"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["tasks/sample"])
    ap.add_argument("--output", type=Path, default=Path("runs/udr_report"))
    ap.add_argument("--run", type=Path, default=None, help="reuse a trained run (RUN or RUN/model)")
    ap.add_argument("--steps", type=int, default=600, help="generator training steps when no --run")
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--encoder-layers", type=int, default=3,
                    help="keep the encoder's first N layers, for UDR and the dense baseline alike (CPU cost)")
    ap.add_argument("--udr-list-size", type=int, default=8)
    ap.add_argument("--udr-iterations", type=int, default=3)
    ap.add_argument("--udr-candidates", type=int, default=20, help="L (the paper uses 50)")
    ap.add_argument("--udr-queries-per-task", type=int, default=40)
    ap.add_argument("--udr-epochs", type=int, default=1)
    ap.add_argument("--udr-lr", type=float, default=3e-5)
    ap.add_argument("--udr-batch-size", type=int, default=8)
    ap.add_argument("--skip-udr-train", action="store_true", help="reuse OUTPUT/udr_retriever")
    ap.add_argument("--k", type=int, default=2, help="demonstrations per prompt")
    ap.add_argument("--demo-budget", type=int, default=None, help="demo token budget (default max_source/2)")
    ap.add_argument("--eval-instances", type=int, default=50, help="first N instances of each held-out task")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main() -> None:
    if {"--quick", "--full"} & set(sys.argv[1:]):  # the real-model report (SmolLM2): scripts/udr_real.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from udr_real import main as real_main
        sys.exit(real_main(sys.argv[1:]))
    args = parse_args()
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from instructmt.commands.demo import demo_config
    from instructmt.data.tokenize import source_length_fn
    from instructmt.evaluation.runner import evaluate_tasks
    from instructmt.models.loading import load_run
    from instructmt.retrieval.encoder import task_prefix
    from instructmt.retrieval.scorer import LMScorer, demo_context
    from instructmt.retrieval.selectors import make_demo_selector
    from instructmt.retrieval.train import UDRTrainConfig, train_udr
    from instructmt.training.task_setup import resolve_tasks

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cfg = demo_config(str(out / "lm"), args.steps, args.tasks)
    split = resolve_tasks(cfg.data)
    t0 = time.time()
    if args.run is None:
        from instructmt.training.trainer import train
        print(f"[udr-report] training the tiny T5 generator ({args.steps} steps) on {len(split.seen)} seen tasks")
        model_dir = train(cfg, split).model_dir
    else:
        model_dir = args.run
    timings["generator_train_s"] = round(time.time() - t0, 1)
    model, tok, meta = load_run(model_dir)
    kind = meta["kind"]
    max_src, max_tgt = cfg.data.max_source_length, cfg.data.max_target_length
    scorer = LMScorer(model, tok, kind, batch_size=64, max_source_length=max_src, max_target_length=max_tgt)

    retriever_dir = out / "udr_retriever"
    t0 = time.time()
    history = None
    if not args.skip_udr_train:
        ucfg = UDRTrainConfig(encoder=args.encoder, num_candidates=args.udr_candidates, list_size=args.udr_list_size,
                              encoder_layers=args.encoder_layers,
                              iterations=args.udr_iterations, epochs_per_iteration=args.udr_epochs,
                              batch_size=args.udr_batch_size, lr=args.udr_lr,
                              max_queries_per_task=args.udr_queries_per_task, max_length=64, seed=args.seed)
        print(f"[udr-report] training the UDR retriever from {args.encoder} on {len(split.seen)} seen tasks")
        history = train_udr(split.seen, scorer, ucfg, output_dir=retriever_dir).history
    timings["udr_train_s"] = round(time.time() - t0, 1)

    held = split.held_out
    length_fn = source_length_fn(tok)
    budget = args.demo_budget or max_src // 2
    rows = {}
    for name in SELECTORS:
        t0 = time.time()
        if name == "fixed":
            selector = None
        else:
            selector = make_demo_selector(name, held, k=args.k, demo_budget_tokens=budget, length_fn=length_fn,
                                          retriever_dir=retriever_dir if name == "udr" else None, seed=args.seed,
                                          encoder=args.encoder, encoder_layers=args.encoder_layers,
                                          encoder_max_length=64)  # the UDR encoder's settings
        eval_dir = out / "eval" / name
        metrics = evaluate_tasks(model, tok, held, kind=kind, output_dir=eval_dir, encoding=cfg.data.encoding,
                                 max_source_length=max_src, max_new_tokens=max_tgt,
                                 max_instances=args.eval_instances, batch_size=64, demo_selector=selector,
                                 title=f"Held-out tasks — demonstrations: {LABELS[name]}", show_progress=False)
        saved = json.loads((eval_dir / "metrics.json").read_text())
        records = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines() if line]
        rows[name] = {"label": LABELS[name], "exact_match": metrics["exact_match"], "rougeL": metrics["rougeL"],
                      "copy_demo_exact_match": saved["baselines"]["copy_demo"]["exact_match"],
                      "per_task_rougeL": {t.name: metrics[f"rougeL_for_{t.name}"] for t in held},
                      "eval_s": round(time.time() - t0, 1)}
        rows[name]["gold_loglik_top_demo"] = top_demo_loglik(scorer, held, args.eval_instances, selector,
                                                             name, task_prefix, demo_context)
        rows[name]["demo_ids_recorded"] = any(r.get("demos") for r in records)
        # the guarantee: no test instance was ever shown as its own demonstration
        rows[name]["self_retrieved"] = sum(r["Instance"]["id"] in (r.get("demos") or []) for r in records)
        print(f"[udr-report] {name:7s} EM {rows[name]['exact_match']:.1f}  RougeL {rows[name]['rougeL']:.1f}  "
              f"log p(gold | top demo) {rows[name]['gold_loglik_top_demo']:.3f}")

    encoder_desc = args.encoder + (f" (first {args.encoder_layers} layers)" if args.encoder_layers else "")
    summary = {"machine": f"CPU, {os.cpu_count()} cores", "generator": str(model_dir), "kind": kind,
               "encoder": encoder_desc, "held_out_tasks": [t.name for t in held], "seen_tasks": len(split.seen),
               "k": args.k, "demo_budget_tokens": budget, "eval_instances_per_task": args.eval_instances,
               "udr_history": history, "timings": timings, "rows": rows, "command": " ".join(sys.argv)}
    (out / "udr_report.json").write_text(json.dumps(summary, indent=2))
    (out / "udr_report.md").write_text(markdown(summary))
    plot(summary, out / "udr_report.png")
    print(markdown(summary))


def top_demo_loglik(scorer, tasks, max_instances, selector, name, task_prefix, demo_context) -> float:
    """Mean log p(gold | most-similar demo, input) under the generator, UDR's own training signal
    (UDR's feedback format). "fixed" uses the task's last positive example; "none" no demo."""
    pairs = []
    for task in tasks:
        pre = task_prefix(task)
        for inst in task.instances[:max_instances]:
            if name == "fixed":
                demos = task.positive_examples[-1:]
            else:
                demos = selector(task, inst)[-1:]
            ctx = (demo_context(pre + demos[0].input, demos[0].output, pre + inst.input) if demos
                   else pre + inst.input + "\t")
            pairs.append((ctx, inst.outputs[0]))
    vals = scorer.score(pairs)
    return float(sum(vals) / max(1, len(vals)))


def markdown(s: dict) -> str:
    lines = [f"# UDR demonstration retrieval on held-out tasks ({s['machine']})", "",
             f"Generator: tiny {s['kind']} model trained from scratch on {s['seen_tasks']} seen sample tasks "
             f"(`{s['generator']}`). Held-out tasks: {', '.join(s['held_out_tasks'])}; first "
             f"{s['eval_instances_per_task']} instances each; k = {s['k']} demonstrations under a "
             f"{s['demo_budget_tokens']}-token budget, most similar last. Retriever encoder: {s['encoder']}.", "",
             "| demonstrations | exact match | ROUGE-L | copy-demo EM | log p(gold given top demo) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in s["rows"].items():
        lines.append(f"| {r['label']} | {r['exact_match']:.1f} | {r['rougeL']:.1f} | "
                     f"{r['copy_demo_exact_match']:.1f} | {r['gold_loglik_top_demo']:.3f} |")
    tasks = s["held_out_tasks"]
    lines += ["", "ROUGE-L per held-out task:", "", "| demonstrations | " + " | ".join(tasks) + " |",
              "|---|" + "---:|" * len(tasks)]
    for r in s["rows"].values():
        lines.append(f"| {r['label']} | " + " | ".join(f"{r['per_task_rougeL'][t]:.1f}" for t in tasks) + " |")
    if s.get("udr_history"):
        lines += ["", "UDR training (per mining iteration):", "",
                  "| iteration | queries | LM-scored pairs | mean candidates | steps | first loss | last loss | s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for h in s["udr_history"]:
            lines.append(f"| {h['iteration']} | {h['queries']} | {h['lm_scored_pairs']} | {h['mean_candidates']:.1f} | "
                         f"{h['steps']} | {h['first_loss']:.3f} | {h['last_loss']:.3f} | "
                         f"{h['mine_seconds'] + h['train_seconds']:.0f} |")
    lines += ["", f"Timings (s): {json.dumps(s['timings'])}. Command: `{s['command']}`", ""]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(s["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, title in ((axes[0], "rougeL", "ROUGE-L (held-out)"),
                              (axes[1], "gold_loglik_top_demo", "log p(gold | top demo)")):
        vals = [s["rows"][n][metric] for n in names]
        ax.bar(range(len(names)), vals, color=["#999", "#bbb", "#6a9", "#69c", "#c63", "#ddd"][:len(names)])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n for n in names], rotation=20)
        ax.set_title(title)
    fig.suptitle(f"UDR vs baselines — {s['machine']}, tiny from-scratch generator")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
