"""Held-out-task few-shot adaptation on a real base: multi-task LoRA vs Poly vs MHR, then LoRA / Poly /
MHR / MHR-z / MHR-μ adaptation to unseen tasks, with paired bootstrap intervals against LoRA.

    python scripts/mhr_heldout.py --output runs/mhr_heldout              # full mode (≤ 45 min, 2 idle cores)
    python scripts/mhr_heldout.py --quick --output /tmp/mhr_heldout      # CI smoke (< 10 min)

1. Multi-task stage on the seen tasks (default: the four-families mixture = 14 SNI sample tasks +
   decaNLP, BoX and molecular samples): LoRA, Poly (h = 1) and MHR (h > 1), same rank and target
   modules, same base (SmolLM2-135M-Instruct), same steps, seed and therefore data order.
2. For each held-out task and each k in --shots: adapt on the task's first k instances
   (mode lora: continue the multi-task LoRA; poly: new router row + skills of the Poly run;
   mhr, mhr-z, mhr-mu: ANCHORS §5). Zero-shot rows need no adaptation: the base model, the
   multi-task LoRA as is, and MHR-μ (the plain average of the skills).
3. Score every system on the same instances: those after the first max(k) (never trained on, for
   any k). EM / ROUGE-L per task and pooled, paired bootstrap 95% intervals against the LoRA row of
   the same k (zero-shot rows against zero-shot LoRA), trainable parameters, train and eval wall time.

Writes results.json (after every system, so a stopped run keeps what is done; a rerun skips finished
systems), results.md, heldout.png, routing/ (MHR) and routing_poly/ (Poly). The last line printed is
`mhr_minus_lora_rougeL=<x> ci_low=<a> ci_high=<b>`: MHR minus LoRA, pooled over held-out tasks and k.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ADAPT_MODES = ("lora", "mhr", "mhr-z", "mhr-mu", "poly")     # trained on k shots
ZEROSHOT = ("base", "lora-zeroshot", "mhr-mu-zeroshot")       # no training on the held-out task
SOURCE_OF_MODE = {"lora": "lora", "poly": "poly", "mhr": "mhr", "mhr-z": "mhr", "mhr-mu": "mhr",
                  "lora-zeroshot": "lora", "mhr-mu-zeroshot": "mhr"}
ADAPT_CALL = {"lora": "lora", "poly": "mhr", "mhr": "mhr", "mhr-z": "mhr-z", "mhr-mu": "mhr-mu"}
BASELINE = {"lora": "lora", "poly": "lora", "mhr": "lora", "mhr-z": "lora", "mhr-mu": "lora",
            "base": "lora-zeroshot", "lora-zeroshot": "lora-zeroshot", "mhr-mu-zeroshot": "lora-zeroshot"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="base model (preset, Hub id or path)")
    ap.add_argument("--tasks", default="tasks/mixtures/four_families.yaml", help="seen tasks (dir, YAML or mixture)")
    ap.add_argument("--heldout-source", default="tasks/sample", help="where the held-out tasks live (splits/)")
    ap.add_argument("--held-out", nargs="+", help="held-out tasks (default: the first --max-held-out of the "
                    "source's splits/test_tasks.txt)")
    ap.add_argument("--max-held-out", type=int, default=3)
    ap.add_argument("--output", default="runs/mhr_heldout")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 2 tasks, k=16, a few steps, 8 instances")
    ap.add_argument("--mt-steps", type=int, default=120, help="multi-task steps (paper SuperNI: 25k)")
    ap.add_argument("--adapt-steps", type=int, default=20, help="few-shot steps (paper: 1000)")
    ap.add_argument("--shots", type=int, nargs="+", default=[16, 64], help="k: training instances of the task")
    ap.add_argument("--eval-instances", type=int, default=40, help="scored instances per held-out task")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="adapter learning rate (paper: 1e-3)")
    ap.add_argument("--router-lr", type=float, default=0.1, help="router learning rate (paper: 0.1)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="adapted modules (paper: q,k,v,o)")
    ap.add_argument("--n-skills", type=int, default=8, help="K")
    ap.add_argument("--n-splits", type=int, default=8, help="h of MHR (Poly is h = 1)")
    ap.add_argument("--encoding", default="def+pos1")
    ap.add_argument("--max-source-length", type=int, default=160)
    ap.add_argument("--max-target-length", type=int, default=16)
    ap.add_argument("--mixing-cap", type=int, default=100, help="instances per seen task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="write results.md from what a (stopped) run "
                    "recorded in --output, training nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.mt_steps, args.adapt_steps, args.eval_instances = min(args.mt_steps, 8), min(args.adapt_steps, 4), \
            min(args.eval_instances, 8)
        args.max_held_out, args.shots = min(args.max_held_out, 2), [min(args.shots)]
    return args


def multitask_config(args, method: str, out: Path):
    from instructmt.config import load_config

    cfg = load_config(None, [
        f"output_dir={out}", f"model.name_or_path={args.model}", f"data.tasks={args.tasks}",
        f"data.encoding={args.encoding}", f"data.max_instances_per_task={args.mixing_cap}",
        f"data.max_source_length={args.max_source_length}", f"data.max_target_length={args.max_target_length}",
        f"max_steps={args.mt_steps}", f"batch_size={args.batch_size}", f"learning_rate={args.lr}",
        f"seed={args.seed}", "log_every=10", "save_every=0", f"adapter.method={method}", f"adapter.r={args.r}",
        f"adapter.alpha={args.r}", f"adapter.target_modules=[{args.targets}]"])
    if method in ("mhr", "poly"):
        cfg.adapter.options = {"n_skills": args.n_skills, "router_lr": args.router_lr,
                               "n_splits": args.n_splits if method == "mhr" else 1}
    return cfg


class TrainableCounter:
    """Records the trainer's own (trainable, total) count of the last run (it prints it; no API returns it)."""

    def __init__(self):
        import instructmt.training.trainer as trainer_module

        self.last: tuple[int, int] | None = None
        original = trainer_module.count_parameters

        def counting(model):
            self.last = original(model)
            return self.last
        trainer_module.count_parameters = counting


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from paired_report import git_commit, instance_scores, mean_score

    from instructmt.adapters.mhr import write_routing_report
    from instructmt.workflows.adapt import adapt_run, evaluate_adapted
    from instructmt.evaluation.runner import evaluate_tasks
    from instructmt.models.loading import load_pretrained, load_run
    from instructmt.tasks.natural_instructions import read_split_file
    from instructmt.tasks.registry import load_path
    from instructmt.training.trainer import train

    counter = TrainableCounter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    state = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    if args.report_only:  # describe the run as it was started, not this call
        if not state.get("systems"):
            raise SystemExit(f"[mhr_heldout] nothing recorded in {results_path}")
        args = argparse.Namespace(**{**state["args"], "report_only": True})
    else:
        state.update({"args": vars(args),
                      "machine": f"{platform.machine()} CPU, {args.threads} thread(s), 2 cores shared with other jobs",
                      "started_utc": state.get("started_utc") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                      "git_commit": git_commit(), "command": "python scripts/mhr_heldout.py " + " ".join(
                          argv if argv is not None else sys.argv[1:])})
    held = args.held_out or read_split_file(Path(args.heldout_source) / "splits" / "test_tasks.txt")
    held = held[: args.max_held_out]
    offset = max(args.shots)  # every k is scored on the same instances, after the largest k
    state.update({"held_out": held, "eval_offset": offset})
    state.setdefault("multitask", {})
    state.setdefault("systems", {})

    def save():
        results_path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    # 1. multi-task stage, trained when first needed (a stopped run has the LoRA and MHR rows first)
    runs: dict[str, Path] = {}

    def run_of(method: str) -> Path:
        if method in runs:
            return runs[method]
        mt_dir = out / f"mt_{method}"
        if state["multitask"].get(method) and (mt_dir / "model").is_dir():
            runs[method] = mt_dir / "model"
        else:
            t0 = time.time()
            res = train(multitask_config(args, method, mt_dir))
            if res.model_dir is None:
                raise SystemExit(f"[mhr_heldout] multi-task {method} stopped early")
            runs[method] = Path(res.model_dir)
            state["multitask"][method] = {"train_s": round(time.time() - t0, 1), "steps": res.steps,
                                          "final_loss": round(res.final_loss or float("nan"), 4),
                                          "trainable_params": counter.last[0] if counter.last else None}
            save()
            print(f"[mhr_heldout] multi-task {method}: final loss {res.final_loss:.4f}, "
                  f"{state['multitask'][method]['train_s']} s", flush=True)
        sub = {"mhr": "routing", "poly": "routing_poly"}.get(method)
        if sub and not (out / sub / "routing.json").is_file():
            model, _, meta = load_run(runs[method])
            write_routing_report(model, meta["task_names"], out / sub)
            del model
        return runs[method]

    sources = [args.heldout_source]
    tasks = {t.name: t for t in load_path(Path(args.heldout_source)) if t.name in held}
    eval_instances = {n: list(tasks[n].instances[offset:])[: args.eval_instances] for n in held}

    def run_system(key: str, fn) -> None:
        """Train (or not) and score one system on all held-out tasks; record it; skip when recorded."""
        if key in state["systems"] and (out / "eval" / key / "predictions.jsonl").is_file():
            return
        t0 = time.time()
        info = fn(out / "eval" / key)
        info["total_s"] = round(time.time() - t0, 1)
        state["systems"][key] = info
        save()
        print(f"[mhr_heldout] {key}: EM {info['exact_match']:.1f} ROUGE-L {info['rougeL']:.1f} "
              f"({info['total_s']} s)", flush=True)

    def zeroshot(mode: str):
        def fn(eval_dir: Path):
            src = None if mode == "base" else run_of(SOURCE_OF_MODE[mode])
            t0 = time.time()
            if mode == "base":
                model, tok, kind = load_pretrained(args.model)
                m = evaluate_tasks(model.eval(), tok, [tasks[n] for n in held], kind=kind, output_dir=eval_dir,
                                   encoding=args.encoding, max_source_length=args.max_source_length,
                                   max_new_tokens=args.max_target_length, max_instances=None,
                                   instances=eval_instances, batch_size=args.eval_batch_size, show_progress=False)
                params = 0
            else:
                model_dir = src if mode == "lora-zeroshot" else adapt_run(
                    src, held, "mhr-mu-zeroshot", output=str(out / "zeroshot" / mode), task_sources=sources)
                m = evaluate_adapted(model_dir, held, eval_dir, shots=offset, max_instances=args.eval_instances,
                                     task_sources=sources, batch_size=args.eval_batch_size)
                params = 0
            return {"mode": mode, "k": 0, "exact_match": m["exact_match"], "rougeL": m["rougeL"],
                    "instances": int(m["num_instances"]), "trainable_params": params, "train_s": 0.0,
                    "eval_s": round(time.time() - t0, 1)}
        return fn

    def adapted(mode: str, k: int):
        def fn(eval_dir: Path):
            train_s, eval_s, params = 0.0, 0.0, 0
            source = run_of(SOURCE_OF_MODE[mode])
            for task in held:  # one adaptation per held-out task (as the paper), pooled scoring below
                t0 = time.time()
                model_dir = adapt_run(source, [task], ADAPT_CALL[mode],
                                      output=str(out / "adapt" / f"k{k}" / mode / task), shots=k,
                                      steps=args.adapt_steps, lr=args.lr, batch_size=args.batch_size,
                                      task_sources=sources, seed=args.seed, router_lr=args.router_lr)
                train_s += time.time() - t0
                params = counter.last[0] if counter.last else params
                t0 = time.time()
                evaluate_adapted(model_dir, [task], eval_dir / task, shots=offset,
                                 max_instances=args.eval_instances, task_sources=sources,
                                 batch_size=args.eval_batch_size)
                eval_s += time.time() - t0
            # merge the per-task predictions into one file, as for the zero-shot systems
            eval_dir.mkdir(parents=True, exist_ok=True)
            with open(eval_dir / "predictions.jsonl.tmp", "w", encoding="utf-8") as fh:
                for task in held:
                    fh.write((eval_dir / task / "predictions.jsonl").read_text(encoding="utf-8"))
            (eval_dir / "predictions.jsonl.tmp").replace(eval_dir / "predictions.jsonl")
            scores = instance_scores(eval_dir)
            return {"mode": mode, "k": k, "exact_match": mean_score(scores, "exact_match"),
                    "rougeL": mean_score(scores, "rougeL"), "instances": len(scores), "trainable_params": params,
                    "train_s": round(train_s, 1), "eval_s": round(eval_s, 1)}
        return fn

    # the order a stopped run is most useful in: LoRA and the MHR modes at the smallest k, the zero-shot
    # rows (cheap), Poly (one more multi-task run), then the larger k
    ks = sorted(args.shots)
    if not args.report_only:
        for mode in ADAPT_MODES[:-1]:
            run_system(f"{mode}@k{ks[0]}", adapted(mode, ks[0]))
        for mode in ZEROSHOT:
            run_system(mode, zeroshot(mode))
        run_system(f"poly@k{ks[0]}", adapted("poly", ks[0]))
        for k in ks[1:]:
            for mode in ADAPT_MODES:
                run_system(f"{mode}@k{k}", adapted(mode, k))

    report = write_report(args, out, state, held)
    print(report, flush=True)
    d = state["summary"]["mhr_minus_lora_rougeL"]
    if d is None:
        print("mhr_minus_lora_rougeL=nan ci_low=nan ci_high=nan (no MHR and LoRA rows yet)", flush=True)
        return 1
    print(f"mhr_minus_lora_rougeL={d['delta']:.2f} ci_low={d['low']:.2f} ci_high={d['high']:.2f}", flush=True)
    return 0


def write_report(args, out: Path, state: dict, held: list[str]) -> str:
    from paired_report import fmt_delta, instance_scores, mean_score, paired_delta

    scores = {key: instance_scores(out / "eval" / key) for key in state["systems"]}
    rows = []
    order = list(ZEROSHOT) + [f"{m}@k{k}" for k in sorted(args.shots) for m in ADAPT_MODES]
    for key in [k for k in order if k in scores]:
        info = state["systems"][key]
        mode, k = info["mode"], info["k"]
        base_key = BASELINE[mode] if k == 0 else f"{BASELINE[mode]}@k{k}"
        row = {"system": key, **{f"{t}_{m}": mean_score(scores[key], m, t) for t in held for m in ("exact_match", "rougeL")},
               "exact_match": mean_score(scores[key], "exact_match"), "rougeL": mean_score(scores[key], "rougeL"),
               "instances": len(scores[key]), "trainable_params": info["trainable_params"],
               "train_s": info.get("train_s"), "eval_s": info.get("eval_s"), "baseline": base_key}
        if base_key in scores and base_key != key:
            for m in ("exact_match", "rougeL"):
                row[f"delta_{m}"] = paired_delta(scores[key], scores[base_key], m, seed=args.seed)
                row[f"delta_{m}_per_task"] = {t: paired_delta(scores[key], scores[base_key], m, task=t, seed=args.seed)
                                              for t in held}
        rows.append(row)
    # the headline: MHR minus LoRA pooled over tasks and k (pairs keyed by k as well)
    pooled = {m: {} for m in ("mhr", "lora")}
    for k in args.shots:
        for m in pooled:
            for (t, i), v in scores.get(f"{m}@k{k}", {}).items():
                pooled[m][(f"k{k}:{t}", i)] = v
    state["rows"] = rows
    state["summary"] = {"mhr_minus_lora_rougeL": paired_delta(pooled["mhr"], pooled["lora"], "rougeL", seed=args.seed),
                        "mhr_minus_lora_exact_match": paired_delta(pooled["mhr"], pooled["lora"], "exact_match",
                                                                   seed=args.seed)}
    state["finished_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    (out / "results.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    mt = state["multitask"]
    lines = [f"# Held-out few-shot adaptation on `{args.model}`", "",
             f"Command: `{state['command']}`  ", f"Machine: {state['machine']}. Started {state['started_utc']} UTC, "
             f"finished {state['finished_utc']} UTC; git {state['git_commit']}.", "",
             f"Multi-task: {args.mt_steps} steps, batch {args.batch_size}, lr {args.lr} (router {args.router_lr}), "
             f"r={args.r} on {args.targets}, K={args.n_skills}, MHR h={args.n_splits}, Poly h=1; "
             + ", ".join(f"{m} {v['train_s']} s ({v['trainable_params']:,} trainable)" for m, v in mt.items()
                         if v.get("trainable_params")) + ".  ",
             f"Few-shot: k ∈ {sorted(args.shots)} instances, {args.adapt_steps} steps, lr {args.lr}. Scored on "
             f"{args.eval_instances} instances per task after the first {state['eval_offset']} (never trained on).",
             "", "Exact match / ROUGE-L ×100; Δ = system − baseline (LoRA of the same k; zero-shot rows against the "
             "multi-task LoRA without adaptation), pooled over tasks, paired bootstrap 95% interval.", "",
             "| system | " + " | ".join(f"{t} EM / RL" for t in held) + " | all EM / RL | Δ RL [95% CI] | "
             "Δ EM [95% CI] | trainable params | adapt train s | eval s |",
             "|---|" + "---|" * len(held) + "---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['system']} | " + " | ".join(
            f"{r[t + '_exact_match']:.1f} / {r[t + '_rougeL']:.1f}" for t in held)
            + f" | **{r['exact_match']:.1f} / {r['rougeL']:.1f}** | {fmt_delta(r.get('delta_rougeL'))} | "
            f"{fmt_delta(r.get('delta_exact_match'))} | {r['trainable_params']:,} | {r['train_s']} | {r['eval_s']} |")
    lines += ["", "Per-task Δ ROUGE-L vs the baseline row [95% CI]:", "",
              "| system | " + " | ".join(held) + " |", "|---|" + "---|" * len(held)]
    for r in rows:
        if r.get("delta_rougeL_per_task"):
            lines.append(f"| {r['system']} | " + " | ".join(fmt_delta(r["delta_rougeL_per_task"][t]) for t in held) + " |")
    s = state["summary"]
    lines += ["", f"MHR − LoRA pooled over tasks and k: ROUGE-L {fmt_delta(s['mhr_minus_lora_rougeL'])}, "
              f"EM {fmt_delta(s['mhr_minus_lora_exact_match'])} (n = {s['mhr_minus_lora_rougeL']['n'] if s['mhr_minus_lora_rougeL'] else 0} pairs).",
              "", "Routing of the multi-task runs: routing/ (MHR) and routing_poly/ (Poly): routing_heatmap.png, "
              "task_similarity.png, routing.json."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text, encoding="utf-8")
    plot(out, rows)
    return text


def plot(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 3.8))
    xs = list(range(len(rows)))
    ax.bar([x - 0.2 for x in xs], [r["rougeL"] for r in rows], width=0.4, label="ROUGE-L")
    ax.bar([x + 0.2 for x in xs], [r["exact_match"] for r in rows], width=0.4, label="exact match")
    ax.set_xticks(xs, labels=[r["system"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("pooled over held-out tasks")
    ax.set_title("held-out tasks: zero-shot and few-shot adaptation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
