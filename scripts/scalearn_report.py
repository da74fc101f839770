"""ScaLearn transfer report on a real base: per target task, the four ScaLearn variants against the
target-only LoRA, a uniform average of the adapters (ω = 1/N, untrained), peft's
`add_weighted_adapter` with equal weights (AdapterFusion-style averaging) and the base zero-shot.

    python scripts/scalearn_report.py --output runs/scalearn_report              # full (≤ 45 min, 2 idle cores)
    python scripts/scalearn_report.py --quick --output /tmp/scalearn_report      # CI smoke (< 10 min)

  1. stage 1: one LoRA per source task on the frozen base (default SmolLM2-135M-Instruct; sources
     from two families: SNI sample tasks + decaNLP / BoX samples), and one LoRA per target on its
     first --target-instances instances (that is also the "target-only LoRA" row);
  2. stage 2, per target: ScaLearn / Uniform / ++ / Uniform++ train only ω on the same target
     instances; sources = the source adapters + the target's own adapter (the paper's setting);
  3. every system is scored on the target's last --holdback instances, which no stage trained on;
     EM / ROUGE-L per target and pooled, paired bootstrap 95% intervals against the target-only LoRA.

Writes scalearn_report.json (after every system; a rerun skips finished systems and finished stage-1
adapters), scalearn_report.md and omega_heatmap.png. The last line printed is
`scalearn_minus_target_lora_rougeL=<x> ci_low=<a> ci_high=<b>` (ScaLearn minus target-only LoRA,
pooled over targets).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("scalearn", "uniform", "pp", "uniform-pp")
BASELINE = "target_lora"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="base model (preset, Hub id or path)")
    p.add_argument("--tasks", nargs="+", default=["tasks/sample", "tasks/families/decanlp.yaml",
                                                  "tasks/families/box.yaml"], help="task sources")
    p.add_argument("--sources", default="task907_max_number,task903_first_word,task911_word_kind,"
                   "task908_sentiment_rule,decanlp_sst_sample,box_Fever_YesNo",
                   help="source tasks; each target's own adapter is added as the last source")
    p.add_argument("--targets", default="task951_min_number,task952_second_word,task956_is_it_a_fruit")
    p.add_argument("--output", default="runs/scalearn_report")
    p.add_argument("--quick", action="store_true", help="CI smoke: 3 sources, 1 target, a few steps")
    p.add_argument("--encoding", default="def+pos1")
    p.add_argument("--max-source-length", type=int, default=160)
    p.add_argument("--max-target-length", type=int, default=16)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="LoRA modules of the sources")
    p.add_argument("--source-steps", type=int, default=60)
    p.add_argument("--target-steps", type=int, default=30, help="steps of the target LoRA and of each ω run")
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--omega-lr", type=float, default=6e-3, help="paper: 6e-3")
    p.add_argument("--source-instances", type=int, default=80)
    p.add_argument("--target-instances", type=int, default=64, help="target training instances")
    p.add_argument("--holdback", type=int, default=40, help="held-back instances per task, scored")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.sources = ",".join(args.sources.split(",")[:2] + [args.sources.split(",")[-2]])
        args.targets = args.targets.split(",")[0]
        args.source_steps, args.target_steps, args.holdback = min(args.source_steps, 4), \
            min(args.target_steps, 4), min(args.holdback, 8)
        args.target_instances = min(args.target_instances, 16)
    return args


def stage1_config(args, out: Path):
    from instructmt.config import load_config

    cfg = load_config(None, [
        f"output_dir={out / 'stage1'}", f"model.name_or_path={args.model}", f"data.tasks=[{','.join(args.tasks)}]",
        "data.split_dir=null", f"data.encoding={args.encoding}", f"data.holdback_per_seen_task={args.holdback}",
        f"data.max_source_length={args.max_source_length}", f"data.max_target_length={args.max_target_length}",
        f"batch_size={args.batch_size}", f"seed={args.seed}", "log_every=10", "save_every=0",
        "adapter.method=lora", f"adapter.r={args.r}", f"adapter.alpha={args.r}",
        f"adapter.target_modules=[{args.lora_targets}]", f"learning_rate={args.lora_lr}", "resume=true"])
    return cfg


def timed(fn):
    t = time.time()
    out = fn()
    return out, round(time.time() - t, 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from paired_report import git_commit

    from instructmt.adapters.scalearn import ScaLearnConfig, ScaLearnModel
    from instructmt.workflows.scalearn_stage1 import train_per_task
    from instructmt.workflows.scalearn_transfer import evaluate_on_heldback, run_transfer, target_split, transfer_config
    from instructmt.models.loading import load_pretrained, load_run

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = [s for s in args.sources.split(",") if s]
    targets = [t for t in args.targets.split(",") if t]
    report_path = out / "scalearn_report.json"
    state = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    state.update({"args": vars(args), "sources": sources, "targets": targets,
                  "machine": f"{platform.machine()} CPU, {args.threads} thread(s), 2 cores shared with other jobs",
                  "started_utc": state.get("started_utc") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                  "git_commit": git_commit(),
                  "command": "python scripts/scalearn_report.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    state.setdefault("stage1", {})
    state.setdefault("systems", {})

    def save():
        report_path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    # 1. stage 1: source adapters, then one adapter per target on its few training instances
    cfg1 = stage1_config(args, out)
    cfg1.data.seen, cfg1.data.held_out = sources + targets, []
    cfg1.max_steps, cfg1.data.max_instances_per_task = args.source_steps, args.source_instances
    for name in sources:
        if name not in state["stage1"]:
            res, t = timed(lambda: train_per_task(cfg1, [name]))
            state["stage1"][name] = {"train_s": t, "steps": res.steps.get(name), "kind": "source"}
            save()
    cfg1t = copy.deepcopy(cfg1)
    cfg1t.max_steps, cfg1t.data.max_instances_per_task = args.target_steps, args.target_instances
    for name in targets:
        if name not in state["stage1"]:
            res, t = timed(lambda: train_per_task(cfg1t, [name]))
            state["stage1"][name] = {"train_s": t, "steps": res.steps.get(name), "kind": "target"}
            save()
    stage1 = out / "stage1"

    def run_system(key: str, fn) -> None:
        if key in state["systems"] and (out / "eval" / key / "predictions.jsonl").is_file():
            return
        info, total = timed(lambda: fn(out / "eval" / key))
        info["total_s"] = total
        state["systems"][key] = info
        save()
        print(f"[scalearn_report] {key}: EM {info['exact_match']:.1f} ROUGE-L {info['rougeL']:.1f} ({total} s)",
              flush=True)

    for target in targets:
        all_sources = sources + [target]

        def stage2_cfg(variant: str, names=all_sources):
            cfg = transfer_config(run_dir=stage1, sources=names, target=target, variant=variant,
                                  output_dir=out / "transfer" / target / variant, learning_rate=args.omega_lr)
            cfg.max_steps, cfg.data.max_instances_per_task = args.target_steps, args.target_instances
            cfg.data.holdback_per_seen_task = args.holdback
            return cfg

        eval_cfg = stage2_cfg("scalearn")
        _, task, held = target_split(eval_cfg, target)

        def scored(model, tok, kind, eval_dir, **info):
            m = evaluate_on_heldback(model, tok, kind, eval_cfg, task, held, eval_dir, title=eval_dir.name)
            return {"target": target, "exact_match": m["exact_match"], "rougeL": m["rougeL"],
                    "instances": int(m["num_instances"]), **info}

        def base_fn(eval_dir):
            model, tok, kind = load_pretrained(args.model)
            return scored(model.eval(), tok, kind, eval_dir, system="base", trainable_params=0, train_s=0.0)

        def lora_fn(eval_dir):
            model, tok, meta = load_run(stage1 / "adapters" / target)
            n = sum(p.numel() for n_, p in model.named_parameters() if "lora_" in n_)
            return scored(model, tok, meta["kind"], eval_dir, system=BASELINE, trainable_params=n,
                          train_s=state["stage1"][target]["train_s"])

        def variant_fn(variant: str, names=all_sources, system=None):
            def fn(eval_dir):
                res, t = timed(lambda: run_transfer(stage2_cfg(variant, names), target, evaluate=False))
                model, tok, meta = load_run(res.model_dir)
                omega = {k: v.detach().float().reshape(v.shape[0], -1).mean(1).tolist() for k, v in model.omega.items()}
                return scored(model, tok, meta["kind"], eval_dir, system=system or variant,
                              trainable_params=res.trainable_parameters, train_s=t, omega_by_group=omega,
                              source_names=list(names), final_loss=res.final_loss)
            return fn

        src_dirs = [stage1 / "adapters" / s / "model" for s in all_sources]
        n = len(all_sources)

        def average_fn(eval_dir):
            base, tok, kind = load_pretrained(args.model)
            avg = ScaLearnModel(base, ScaLearnConfig(sources=[str(d) for d in src_dirs], source_names=all_sources,
                                                     variant="uniform-pp", init_mean=1.0 / n, init_std=0.0)).eval()
            return scored(avg, tok, kind, eval_dir, system="average", trainable_params=0, train_s=0.0)

        def peft_linear_fn(eval_dir):
            from peft import PeftModel

            base, tok, kind = load_pretrained(args.model)
            pm = PeftModel.from_pretrained(base, str(src_dirs[0]), adapter_name="s0")
            for i, d in enumerate(src_dirs[1:], start=1):
                pm.load_adapter(str(d), adapter_name=f"s{i}")
            pm.add_weighted_adapter([f"s{i}" for i in range(n)], [1.0 / n] * n, "avg", combination_type="linear")
            pm.set_adapter("avg")
            return scored(pm.eval(), tok, kind, eval_dir, system="peft_linear", trainable_params=0, train_s=0.0)

        run_system(f"{target}/base", base_fn)
        run_system(f"{target}/{BASELINE}", lora_fn)
        for variant in VARIANTS:
            run_system(f"{target}/{variant}", variant_fn(variant))
        run_system(f"{target}/average", average_fn)
        run_system(f"{target}/peft_linear", peft_linear_fn)

    text = write_report(args, out, state, sources, targets)
    print(text, flush=True)
    d = state["summary"]["scalearn_minus_target_lora_rougeL"]
    print(f"scalearn_minus_target_lora_rougeL={d['delta']:.2f} ci_low={d['low']:.2f} ci_high={d['high']:.2f}",
          flush=True)
    return 0


SYSTEM_LABEL = {"base": "base model, zero-shot", BASELINE: "target-only LoRA", "scalearn": "ScaLearn",
                "uniform": "ScaLearnUniform", "pp": "ScaLearn++", "uniform-pp": "ScaLearnUniform++",
                "average": "uniform average of the adapters (ω = 1/N, untrained)",
                "peft_linear": "peft add_weighted_adapter, equal weights, linear"}


def write_report(args, out: Path, state: dict, sources: list[str], targets: list[str]) -> str:
    from paired_report import fmt_delta, instance_scores, mean_score, paired_delta

    systems = list(SYSTEM_LABEL)
    scores = {key: instance_scores(out / "eval" / key) for key in state["systems"]}
    pooled: dict[str, dict] = {s: {} for s in systems}
    for key, sc in scores.items():
        target, system = key.split("/", 1)
        pooled[system].update(sc)
    rows = []
    for s in systems:
        if not pooled[s]:
            continue
        infos = [state["systems"][f"{t}/{s}"] for t in targets if f"{t}/{s}" in state["systems"]]
        row = {"system": s, "label": SYSTEM_LABEL[s], "exact_match": mean_score(pooled[s], "exact_match"),
               "rougeL": mean_score(pooled[s], "rougeL"), "instances": len(pooled[s]),
               "trainable_params": infos[0]["trainable_params"], "train_s": round(sum(i["train_s"] for i in infos), 1),
               "per_target": {t: {m: mean_score(pooled[s], m, t) for m in ("exact_match", "rougeL")} for t in targets}}
        if s != BASELINE and pooled[BASELINE]:
            for m in ("exact_match", "rougeL"):
                row[f"delta_{m}"] = paired_delta(pooled[s], pooled[BASELINE], m, seed=args.seed)
                row[f"delta_{m}_per_target"] = {t: paired_delta(pooled[s], pooled[BASELINE], m, task=t, seed=args.seed)
                                                for t in targets}
        rows.append(row)
    state["rows"] = rows
    state["summary"] = {"scalearn_minus_target_lora_rougeL": paired_delta(pooled["scalearn"], pooled[BASELINE],
                                                                          "rougeL", seed=args.seed)}
    state["finished_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    (out / "scalearn_report.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    omega_heatmap(out, state, targets)

    held = rows[0]["instances"] // max(1, len(targets))
    lines = [f"# ScaLearn on `{args.model}`", "", f"Command: `{state['command']}`  ",
             f"Machine: {state['machine']}. Started {state['started_utc']} UTC, finished {state['finished_utc']} UTC; "
             f"git {state['git_commit']}.", "",
             f"Sources ({len(sources)}): {', '.join(f'`{s}`' for s in sources)}, plus each target's own adapter "
             f"(N = {len(sources) + 1}). LoRA r={args.r} on {args.lora_targets}; sources {args.source_steps} steps on "
             f"{args.source_instances} instances; target LoRA and each ω run {args.target_steps} steps on the target's "
             f"first {args.target_instances} instances (batch {args.batch_size}; lr {args.lora_lr} LoRA, "
             f"{args.omega_lr} ω). Scored on the last {held} instances of each target (never trained on).", "",
             "Exact match / ROUGE-L ×100; Δ = system − target-only LoRA, paired bootstrap 95% interval.", "",
             "| system | " + " | ".join(f"{t} EM / RL" for t in targets) + " | all EM / RL | Δ RL [95% CI] | "
             "Δ EM [95% CI] | trainable params | train s (all targets) |",
             "|---|" + "---|" * len(targets) + "---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(
            f"{r['per_target'][t]['exact_match']:.1f} / {r['per_target'][t]['rougeL']:.1f}" for t in targets)
            + f" | **{r['exact_match']:.1f} / {r['rougeL']:.1f}** | {fmt_delta(r.get('delta_rougeL'))} | "
            f"{fmt_delta(r.get('delta_exact_match'))} | {r['trainable_params']:,} | {r['train_s']} |")
    lines += ["", "Per-target Δ ROUGE-L vs target-only LoRA [95% CI]:", "",
              "| system | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for r in rows:
        if r.get("delta_rougeL_per_target"):
            lines.append(f"| {r['label']} | " + " | ".join(fmt_delta(r["delta_rougeL_per_target"][t])
                                                         for t in targets) + " |")
    lines += ["", "Mean ω per source (over modules and dimensions), per target (last source = the target's own "
              "adapter):", ""]
    for key, info in state["systems"].items():
        if info.get("omega_by_group"):
            vals = list(info["omega_by_group"].values())
            mean = [round(sum(v[i] for v in vals) / len(vals), 3) for i in range(len(info["source_names"]))]
            lines.append(f"- {key}: " + ", ".join(f"{s} {m}" for s, m in zip(info["source_names"], mean)))
    lines += ["", "ω heatmap (ScaLearnUniform: one scalar per adapted module and source; ScaLearn: mean over "
              "output dimensions): omega_heatmap.png."]
    text = "\n".join(lines) + "\n"
    (out / "scalearn_report.md").write_text(text, encoding="utf-8")
    return text


def omega_heatmap(out: Path, state: dict, targets: list[str]) -> None:
    """Per target, learned ω of ScaLearnUniform and ScaLearn (mean over d): adapted modules × sources."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(t, v) for t in targets for v in ("uniform", "scalearn") if f"{t}/{v}" in state["systems"]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 6), squeeze=False)
    for ax, (t, v) in zip(axes[0], panels):
        info = state["systems"][f"{t}/{v}"]
        groups = list(info["omega_by_group"])
        mat = np.array([info["omega_by_group"][g] for g in groups])
        im = ax.imshow(mat, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(info["source_names"])), labels=[s[:14] for s in info["source_names"]],
                      rotation=60, ha="right", fontsize=6)
        step = max(1, len(groups) // 12)
        ax.set_yticks(range(0, len(groups), step),
                      labels=[g.replace("m:", "").replace("base_model/", "").replace("model/layers/", "L")
                              .replace("self_attn/", "")[:18] for g in groups[::step]], fontsize=6)
        ax.set_title(f"{t[:18]}\n{v}", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(out / "omega_heatmap.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
