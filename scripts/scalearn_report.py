"""ScaLearn transfer report on the bundled sample tasks: one run, one table (JSON + Markdown).

Pipeline (CPU-sized; every number comes from this script):
  0. base: a tiny T5 fully fine-tuned on the training-split tasks (the target task is held out) —
     the stand-in for a pretrained model, which cannot be downloaded here;
  1. stage 1: one LoRA per source task and one for the target (few target instances);
  2. stage 2: ScaLearn's four variants train only ω on the target, sources = source adapters +
     the target's own adapter (the paper's setting);
  baselines: (a) the target's LoRA alone, (b) a uniform average of the sources' deltas (ω = 1/N,
  untrained), (c) peft's add_weighted_adapter with equal weights (linear and cat), and the base
  model without any adapter.
Every system is scored on the target's held-back instances, which no stage trained on.

    python scripts/scalearn_report.py --output runs/scalearn_report
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructmt.adapters.scalearn import ScaLearnConfig, ScaLearnModel  # noqa: E402
from instructmt.workflows.scalearn_stage1 import train_per_task  # noqa: E402
from instructmt.workflows.scalearn_transfer import (evaluate_on_heldback, run_transfer, target_split,  # noqa: E402
                                                   transfer_config)
from instructmt.config import load_config  # noqa: E402
from instructmt.models.loading import load_pretrained, load_run  # noqa: E402
from instructmt.training.trainer import train  # noqa: E402

VARIANTS = ("scalearn", "uniform", "pp", "uniform-pp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="tasks/sample")
    p.add_argument("--target", default="task956_is_it_a_fruit")
    p.add_argument("--sources", default="task911_word_kind,task909_even_or_odd,task908_sentiment_rule",
                   help="source tasks (seen); the target's own adapter is added as the last source")
    p.add_argument("--output", default="runs/scalearn_report")
    p.add_argument("--encoding", default="def", help="short prompts keep this CPU-sized")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=600)
    p.add_argument("--base-steps", type=int, default=1200)
    p.add_argument("--base-lr", type=float, default=2e-3)
    p.add_argument("--source-steps", type=int, default=200)
    p.add_argument("--target-steps", type=int, default=200, help="steps of the target LoRA and of each ω run")
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--omega-lr", type=float, default=6e-3)
    p.add_argument("--source-instances", type=int, default=80)
    p.add_argument("--target-instances", type=int, default=32, help="target training instances (few-shot)")
    p.add_argument("--holdback", type=int, default=40, help="held-back instances per task, scored")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def base_config(args, out: Path):
    return load_config(None, [
        f"output_dir={out / 'base_run'}", f"data.tasks=[{args.tasks}]", f"data.encoding={args.encoding}",
        f"data.holdback_per_seen_task={args.holdback}", f"model.tiny_d_model={args.d_model}",
        f"model.tiny_layers={args.layers}", f"model.tiny_vocab_size={args.vocab}", "data.max_target_length=32",
        "data.max_source_length=256", f"batch_size={args.batch_size}", f"seed={args.seed}", "log_every=50"])


def logged_seconds(run_dir: Path) -> float | None:
    """Training wall time from a run's logs.jsonl (survives reusing a finished stage-1 run)."""
    log = run_dir / "logs.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    return round(json.loads(lines[-1])["elapsed_s"], 1) if lines else None


def timed(fn):
    t = time.time()
    out = fn()
    return out, round(time.time() - t, 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = [s for s in args.sources.split(",") if s]
    target = args.target
    rows: list[dict] = []

    # 0. base model: full fine-tuning on the training split (target held out)
    cfg0 = base_config(args, out)
    cfg0.adapter.method, cfg0.max_steps, cfg0.learning_rate = "full", args.base_steps, args.base_lr
    if not (out / "base_run" / "model" / "config.json").is_file():
        res0, t0 = timed(lambda: train(cfg0))
        if res0.model_dir is None:
            print("[report] interrupted while training the base model")
            return 1
        base_dir = res0.model_dir
        print(f"[report] base: {res0.steps} steps, loss {res0.final_loss:.3f}, {t0}s")
    else:
        base_dir = out / "base_run" / "model"
    base_dir = Path(base_dir).resolve()

    # 1. stage 1: per-task LoRA adapters on that base
    cfg1 = copy.deepcopy(cfg0)
    cfg1.adapter.method, cfg1.model.name_or_path = "lora", str(base_dir)
    cfg1.output_dir, cfg1.learning_rate, cfg1.resume = str(out / "stage1"), args.lora_lr, True
    cfg1.data.seen, cfg1.data.held_out, cfg1.data.split_dir = sources, [], None
    cfg1.max_steps, cfg1.data.max_instances_per_task = args.source_steps, args.source_instances
    _, t_src = timed(lambda: train_per_task(cfg1))
    print(f"[report] stage 1: {len(sources)} source adapters in {t_src}s")
    cfg1t = copy.deepcopy(cfg1)
    cfg1t.data.seen, cfg1t.max_steps = [target], args.target_steps
    cfg1t.data.max_instances_per_task = args.target_instances
    train_per_task(cfg1t)

    all_sources = sources + [target]
    stage1 = out / "stage1"

    def stage2_cfg(variant: str):
        cfg = transfer_config(run_dir=stage1, sources=all_sources, target=target, variant=variant,
                              output_dir=out / "transfer" / variant, learning_rate=args.omega_lr)
        cfg.max_steps, cfg.data.max_instances_per_task = args.target_steps, args.target_instances
        return cfg

    eval_cfg = stage2_cfg("scalearn")
    _, task, held = target_split(eval_cfg, target)
    print(f"[report] target {target}: {args.target_instances} training instances, {len(held)} held-back scored")

    def score(model, tok, kind, name):
        m = evaluate_on_heldback(model, tok, kind, eval_cfg, task, held, out / "eval" / name, title=name)
        return {"exact_match": round(m["exact_match"], 2), "rougeL": round(m["rougeL"], 2)}

    base_model, tok, kind = load_pretrained(str(base_dir))
    rows.append({"system": "base model, no adapter", "trainable_params": 0, "train_steps": 0,
                 **score(base_model.eval(), tok, kind, "base")})

    lora, tok, meta = load_run(stage1 / "adapters" / target)
    n_lora = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    rows.append({"system": "(a) LoRA on the target alone", "trainable_params": n_lora,
                 "train_steps": args.target_steps, "train_s": logged_seconds(stage1 / "adapters" / target),
                 **score(lora, tok, kind, "target_lora")})

    for variant in VARIANTS:
        res, t = timed(lambda: run_transfer(stage2_cfg(variant), target, evaluate=False))
        model, tok, meta = load_run(res.model_dir)
        omega = {k: v.detach() for k, v in model.omega.items()}
        mean_per_source = torch.stack([v.reshape(v.shape[0], -1).mean(1) for v in omega.values()]).mean(0)
        rows.append({"system": f"ScaLearn {variant}", "trainable_params": res.trainable_parameters,
                     "train_steps": res.steps, "train_s": t, "final_loss": round(res.final_loss, 4),
                     "omega_mean_per_source": dict(zip(all_sources, [round(x, 3) for x in mean_per_source.tolist()])),
                     **score(model, tok, kind, f"scalearn_{variant}")})

    # pure transfer: the same ScaLearn without the target's own adapter among the sources
    cfg_nt = transfer_config(run_dir=stage1, sources=sources, target=target, variant="scalearn",
                             output_dir=out / "transfer" / "scalearn-no-target", learning_rate=args.omega_lr)
    cfg_nt.max_steps, cfg_nt.data.max_instances_per_task = args.target_steps, args.target_instances
    res, t = timed(lambda: run_transfer(cfg_nt, target, evaluate=False))
    model, tok, meta = load_run(res.model_dir)
    rows.append({"system": "ScaLearn scalearn, source adapters only (no target adapter)",
                 "trainable_params": res.trainable_parameters, "train_steps": res.steps, "train_s": t,
                 "final_loss": round(res.final_loss, 4), **score(model, tok, kind, "scalearn_no_target")})

    n = len(all_sources)
    src_dirs = [stage1 / "adapters" / s / "model" for s in all_sources]
    avg = ScaLearnModel(load_pretrained(str(base_dir))[0],
                        ScaLearnConfig(sources=[str(d) for d in src_dirs], source_names=all_sources,
                                       variant="uniform-pp", init_mean=1.0 / n, init_std=0.0)).eval()
    rows.append({"system": "(b) uniform average of sources (ω = 1/N, untrained)", "trainable_params": 0,
                 "train_steps": 0, **score(avg, tok, kind, "uniform_average")})

    from peft import PeftModel
    for combo in ("linear", "cat"):
        pm = PeftModel.from_pretrained(load_pretrained(str(base_dir))[0], str(src_dirs[0]), adapter_name="s0")
        for i, d in enumerate(src_dirs[1:], start=1):
            pm.load_adapter(str(d), adapter_name=f"s{i}")
        pm.add_weighted_adapter([f"s{i}" for i in range(n)], [1.0 / n] * n, "avg", combination_type=combo)
        pm.set_adapter("avg")
        rows.append({"system": f"(c) peft add_weighted_adapter, equal weights 1/N, {combo}",
                     "trainable_params": 0, "train_steps": 0, **score(pm.eval(), tok, kind, f"peft_{combo}")})

    report = {"machine": "CPU, 2 cores (shared)", "target": target, "sources": all_sources,
              "scored_instances": len(held), "target_training_instances": args.target_instances,
              "settings": vars(args),
              "train_seconds": {"base": logged_seconds(out / "base_run"),
                                **{f"stage1 {s}": logged_seconds(stage1 / "adapters" / s) for s in all_sources}},
              "rows": rows}
    (out / "scalearn_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = [f"# ScaLearn on `{target}` (sample tasks)", "",
          f"Sources: {', '.join(f'`{s}`' for s in all_sources)} (the last is the target's own adapter). "
          f"Target: {args.target_instances} training instances; scored on {len(held)} held-back instances. "
          f"Tiny T5 (d_model {args.d_model}, {args.layers}+{args.layers} layers) trained from scratch; "
          f"CPU, 2 cores. Command: `python scripts/scalearn_report.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}`", "",
          "| system | trainable params | steps | train s | exact match | ROUGE-L |",
          "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['system']} | {r['trainable_params']:,} | {r['train_steps']} | {r.get('train_s', '')} | "
                  f"{r['exact_match']:.1f} | {r['rougeL']:.1f} |")
    md += ["", "Mean ω per source after training (the last source is the target's own adapter):", ""]
    for r in rows:
        if r.get("omega_mean_per_source"):
            md.append(f"- {r['system']}: " + ", ".join(f"{k} {v}" for k, v in r["omega_mean_per_source"].items()))
    (out / "scalearn_report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
