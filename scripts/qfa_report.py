"""QFA report on the bundled tasks: one once-for-all run vs per-bit-width QLoRA-style runs, the
shared-LoRA and uniform-sampling ablations, a GPTQ-only (no LoRA) and a full-precision LoRA
reference; then a deployment search + export of the QFA supernet, and RTN-vs-GPTQ reconstruction
error.

Quantizing a random-init model only swaps one random matrix for another, so stage 0 first
fully fine-tunes a tiny T5 from scratch on the seen tasks; that model is the "pretrained" base
every adapter run quantizes and adapts (stage 1, same tasks, continued). Everything runs on CPU;
numbers compare methods with each other, not with the paper. Usage:

    .venv/bin/python scripts/qfa_report.py --output runs/qfa_report --steps 300
    .venv/bin/python scripts/qfa_report.py --output runs/qfa_report --reuse   # re-evaluate only
    .venv/bin/python scripts/qfa_report.py --quick | --full   # on SmolLM2-135M-Instruct (scripts/qfa_real.py)

Writes OUTPUT/qfa_report.{json,md}, OUTPUT/qfa_bits_vs_loss.png, OUTPUT/qfa_bit_schedule.png and
OUTPUT/qfa/qfa_search/ (Pareto table of the QFA supernet).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructmt.adapters.qfa import (export_subnet, load_subnet, qfa_layers, set_configuration,  # noqa: E402
                                     state_of, uniform_configuration, weight_bytes)
from instructmt.adapters.qfa.quant import gptq_quantize, rtn_quantize  # noqa: E402
from instructmt.workflows.qfa_scoring import (load_tasks_for_run, loss_batches, make_scorer,  # noqa: E402
                                             mean_token_loss, validation_slice)
from instructmt.adapters.qfa.search import Budget, search, write_search_report  # noqa: E402
from instructmt.config import load_config  # noqa: E402
from instructmt.models.loading import load_run  # noqa: E402
from instructmt.training.trainer import train  # noqa: E402


def runs(period: int, quantizer: str = "gptq") -> list[tuple[str, str, dict, str]]:
    g = {"quantizer": quantizer}
    return [
        ("qfa", "qfa", {**g, "period": period}, "QFA: decoupled LoRA per bit, resource-balanced sampling (one run)"),
        ("qfa_uniform", "qfa", {**g, "sampling": "uniform"}, "ablation: uniform per-layer sampling"),
        ("qfa_shared", "qfa", {**g, "period": period, "shared_lora": True}, "ablation: one LoRA shared by all bits"),
        ("qlora_2bit", "qfa", {**g, "bits": [2]}, "QLoRA-style: 2-bit base + one LoRA (own run)"),
        ("qlora_3bit", "qfa", {**g, "bits": [3]}, "QLoRA-style: 3-bit base + one LoRA (own run)"),
        ("qlora_4bit", "qfa", {**g, "bits": [4]}, "QLoRA-style: 4-bit base + one LoRA (own run)"),
        ("lora_fp", "lora", {}, "reference: LoRA on the full-precision base"),
    ]


def train_run(out: Path, name: str, method: str, options: dict, args, *, base: str = "tiny-t5",
              steps: int | None = None, lr: float | None = None) -> float:
    cfg = load_config(None, [
        f"output_dir={out / name}", f"data.tasks=[{REPO / 'tasks' / 'sample'}]", f"adapter.method={method}",
        f"model.name_or_path={base}", f"max_steps={steps or args.steps}", f"batch_size={args.batch_size}",
        f"learning_rate={lr or args.lr}", f"model.tiny_d_model={args.d_model}", "model.tiny_vocab_size=600",
        f"seed={args.seed}", "data.max_instances_per_task=100", "data.max_source_length=256", "log_every=10",
        f"adapter.r={args.r}", f"adapter.alpha={2 * args.r}", "adapter.options=" + json.dumps(options),
        # the same layers as QFA adapts (peft's T5 default would be q,v only)
        "adapter.target_modules=[q,k,v,o,wi,wo]"])
    t0 = time.time()
    train(cfg)
    return time.time() - t0


def evaluate_run(model_dir: Path, bits_list, vslice, args) -> dict:
    model, tok, meta = load_run(model_dir)
    batches = loss_batches(meta["kind"], tok, vslice, max_source_length=meta.get("max_source_length", 256))
    rouge = make_scorer(model, tok, vslice, kind=meta["kind"], metric="rougeL",
                        max_source_length=meta.get("max_source_length", 256), max_new_tokens=args.max_new_tokens)
    out = {}
    for bits in bits_list:
        config = uniform_configuration(model, bits) if bits else None
        if config:
            set_configuration(model, config)
        out[str(bits or "fp")] = {"val_loss": round(mean_token_loss(model, batches), 4),
                                  "rougeL": round(rouge(config) if config else _rouge_fp(model, tok, meta, vslice, args), 2),
                                  "weight_kb": round(weight_bytes(model, config) / 1000, 2) if config else None}
    return out


def evaluate_gptq_only(base_dir: Path, tasks, vslice, args) -> dict:
    """The paper's GPTQ row: quantize the base (calibrated on training instances), no LoRA.
    (With --quantizer rtn the row is the RTN-quantized base; the key keeps its name.)"""
    from instructmt.adapters.base import AdapterConfig, get_adapter

    model, tok, meta = load_run(base_dir)
    method = get_adapter("qfa")
    model = method.apply(model, AdapterConfig(method="qfa", r=args.r, alpha=2 * args.r,
                                              options={"quantizer": args.quantizer}), [])
    calib = validation_slice(tasks, args.val_per_task)
    calib.instances = {t.name: list(t.instances)[:args.val_per_task] for t in tasks}  # training instances
    method.calibrate(model, loss_batches(meta["kind"], tok, calib, max_source_length=256))
    batches = loss_batches(meta["kind"], tok, vslice, max_source_length=256)
    rouge = make_scorer(model, tok, vslice, kind=meta["kind"], metric="rougeL", max_source_length=256,
                        max_new_tokens=args.max_new_tokens)
    out = {}
    for bits in (2, 3, 4):
        config = uniform_configuration(model, bits)
        set_configuration(model, config)
        out[str(bits)] = {"val_loss": round(mean_token_loss(model, batches), 4), "rougeL": round(rouge(config), 2),
                          "weight_kb": round(weight_bytes(model, config) / 1000, 2)}
    return out


def _rouge_fp(model, tok, meta, vslice, args) -> float:
    from instructmt.data.tokenize import EncodeSpec, encode_sources, source_length_fn
    from instructmt.evaluation.generation import generate
    from instructmt.evaluation.metrics import get_metric
    from instructmt.prompts.render import PromptRenderer

    r = PromptRenderer("def+pos2", length_fn=source_length_fn(tok), max_source_length=meta.get("max_source_length", 256))
    pairs = vslice.pairs()
    src = encode_sources([r.render(t, i) for t, i in pairs], tok,
                         EncodeSpec(meta["kind"], "def+pos2", meta.get("max_source_length", 256), args.max_new_tokens))
    preds = generate(model, tok, meta["kind"], src, max_new_tokens=args.max_new_tokens, show_progress=False)
    return float(get_metric("rougeL").compute(preds, [i.outputs for _, i in pairs]))


def quant_error_table(run_model_dir: Path, vslice) -> dict:
    """Relative output error ||X(W - Ŵ)ᵀ|| / ||XWᵀ|| of RTN and GPTQ per bit-width, averaged over
    the adapted linears of the stage-0 base, X = the layers' inputs on the validation slice."""
    from safetensors.torch import load_file

    model, tok, meta = load_run(run_model_dir)
    base = load_file(str(Path(meta["base_model"]) / "model.safetensors"))
    layers = qfa_layers(model)
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: acts[n].append(a[0].detach().reshape(-1, mod.in_features)))
             for n, m in layers.items()]
    set_configuration(model, uniform_configuration(model, 4))
    mean_token_loss(model, loss_batches(meta["kind"], tok, vslice, max_source_length=256)[:4])
    for h in hooks:
        h.remove()
    table = {}
    for bits in (2, 3, 4):
        errs = {"rtn": [], "gptq": []}
        for n, m in layers.items():
            w = base[f"{n}.weight"].float()
            x = torch.cat(acts[n])[:2048]  # inputs of the 4-bit supernet: close to, not exactly, fp inputs
            ref = (x @ w.t()).norm()
            h = x.double().t() @ x.double()
            for name, q in (("rtn", rtn_quantize(w, bits)), ("gptq", gptq_quantize(w, h, bits))):
                errs[name].append(float((x @ (w - q.dequantize()).t()).norm() / ref))
        table[str(bits)] = {k: round(sum(v) / len(v), 4) for k, v in errs.items()}
    return table


def plot_results(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results["runs"].items():
        pts = sorted((int(b), v) for b, v in r["eval"].items() if b != "fp")
        if not pts:
            fp = r["eval"]["fp"]
            for ax, key in zip(axes, ("val_loss", "rougeL")):
                ax.axhline(fp[key], ls=":", c="black" if name == "base_fp" else "tab:gray", lw=1.2,
                           label=f"{name} (full precision)")
            continue
        style = "o-" if name.startswith("qfa") else "s--"
        for ax, key in zip(axes, ("val_loss", "rougeL")):
            ax.plot([b for b, _ in pts], [v[key] for _, v in pts], style, label=name, ms=5)
    for ax, key in zip(axes, ("validation loss (lower is better)", "ROUGE-L on validation slice")):
        ax.set_xlabel("bits (all layers)")
        ax.set_ylabel(key)
        ax.set_xticks([2, 3, 4])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    fig.suptitle("QFA vs per-bit QLoRA-style runs (tiny T5, tasks/sample, CPU)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out / "qfa_bits_vs_loss.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    for name, color in (("qfa", "tab:blue"), ("qfa_uniform", "tab:orange")):
        hist = out / name / "model" / "qfa_bit_history.jsonl"
        if hist.exists():
            recs = [json.loads(x) for x in hist.read_text().splitlines()]
            ax.plot([r["step"] for r in recs], [r["qfa_mean_bits"] for r in recs], ".", ms=3, c=color,
                    alpha=0.6, label=f"{name}: realised mean bits")
            if name == "qfa":
                ax.plot([r["step"] for r in recs], [r["qfa_target_bits"] for r in recs], "-", c="black", lw=1,
                        label="qfa: target (triangular wave)")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean bit-width over layers")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "qfa_bit_schedule.png", dpi=120)
    plt.close(fig)


def write_markdown(results: dict, out: Path) -> None:
    base_s = results["base_train_s"]
    base_note = f"{base_s} s" if isinstance(base_s, (int, float)) else str(base_s)
    st = results["settings"]
    lines = ["# QFA report (tiny T5 from scratch, tasks/sample)", "",
             f"Machine: {results['machine']}. Command: `{results['command']}`.",
             f"Stage 0: a tiny T5 fully fine-tuned from scratch for {st['base_steps']} steps ({base_note}) is the "
             f"base. Each adapter run: {st['steps']} steps on it, batch {st['batch_size']}, d_model {st['d_model']}, "
             f"LoRA r={st['r']}, {st.get('quantizer', 'gptq').upper()} base quantization (group 32). Validation "
             f"slice: last {st['val_per_task']} instances of each of the {results['validation_tasks']} seen tasks "
             "(never trained on: training uses the first 100).",
             "", "## Uniform deployments (every layer at the same bit-width)", "",
             "| run | adapter training runs | 2-bit loss | 3-bit loss | 4-bit loss | 2-bit R-L | 3-bit R-L | 4-bit R-L | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["runs"].items():
        ev = r["eval"]

        def cell(b, k):
            return f"{ev[b][k]:.3f}" if b in ev and k == "val_loss" else (f"{ev[b][k]:.1f}" if b in ev else "—")
        if "fp" in ev:
            row = [f"{ev['fp']['val_loss']:.3f} (fp)"] * 3 + [f"{ev['fp']['rougeL']:.1f} (fp)"] * 3
        else:
            row = [cell(b, "val_loss") for b in "234"] + [cell(b, "rougeL") for b in "234"]
        n_runs = 0 if name in ("base_fp", "gptq_only") else 1
        lines.append(f"| {name} | {n_runs} | " + " | ".join(row) + f" | {r['train_s']:.0f} |")
    lines += ["", "QLoRA-style rows need one run per bit-width (3 runs for the three columns); QFA needs one "
              "run for all of them and any per-layer mix.", "",
              "## Reconstruction error of the base quantization (relative ||X(W-Ŵ)ᵀ|| / ||XWᵀ||, mean over layers)", "",
              "| bits | RTN | GPTQ |", "|---:|---:|---:|"]
    for b, v in results["quant_error"].items():
        lines.append(f"| {b} | {v['rtn']:.4f} | {v['gptq']:.4f} |")
    s = results.get("search")
    if s:
        lines += ["", f"## Deployment search on the QFA supernet (budget {s['budget']})", "",
                  f"{s['n_scored']} subnets scored by loss on a separate search slice (the {results['settings']['val_per_task']} "
                  f"instances before the validation slice) in {s['seconds']:.0f} s; best within budget: "
                  f"`{s['best_config']}` ({s['best_avg_bits']:.3f} avg bits). On the validation slice: "
                  f"loss {s['best_loss']:.3f}, vs uniform 2/3/4-bit {s['uniform2_loss']:.3f} / "
                  f"{s['uniform3_loss']:.3f} / {s['uniform4_loss']:.3f}. Exported subnet reloaded: loss {s['export_loss']:.3f} "
                  f"(supernet {s['best_loss']:.3f}), file {s['export_file_kb']:.1f} KB. Pareto table: "
                  "[qfa/qfa_search/qfa_search.md](qfa/qfa_search/qfa_search.md).", ""]
    lines += ["![bits vs loss](qfa_bits_vs_loss.png)", "", "![bit schedule](qfa_bit_schedule.png)", ""]
    (out / "qfa_report.md").write_text("\n".join(lines), encoding="utf-8")


def train_and_evaluate(out: Path, base_dir: Path, tasks, vslice, results: dict, old: dict, args) -> dict:
    """Evaluate the base (fp and quantized without LoRA), then train and evaluate every run."""
    base_s = results["base_train_s"]
    runs_out = {
        "base_fp": {"description": "the stage-0 base, full precision, no adapter", "options": {},
                    "train_s": base_s if isinstance(base_s, float) else float("nan"),
                    "eval": evaluate_run(base_dir, [None], vslice, args)},
        "gptq_only": {"description": f"the base quantized ({args.quantizer}), no LoRA training",
                      "options": {"quantizer": args.quantizer}, "train_s": 0.0,
                      "eval": evaluate_gptq_only(base_dir, tasks, vslice, args)}}
    print(json.dumps({k: v["eval"] for k, v in runs_out.items()}), flush=True)
    for name, method, options, desc in runs(args.period, args.quantizer):
        if args.only and name not in args.only:
            continue
        model_dir = out / name / "model"
        train_s = old["runs"].get(name, {}).get("train_s", float("nan"))
        if not (args.reuse and model_dir.exists()):
            print(f"== training {name}: {desc}", flush=True)
            train_s = train_run(out, name, method, options, args, base=str(base_dir))
        bits = options.get("bits", [2, 3, 4]) if method == "qfa" else [None]
        print(f"== evaluating {name} at {bits}", flush=True)
        runs_out[name] = {"description": desc, "options": options, "train_s": round(train_s, 1),
                          "eval": evaluate_run(model_dir, bits, vslice, args)}
        print(json.dumps(runs_out[name]["eval"]), flush=True)
    return runs_out


def main() -> int:
    if {"--quick", "--full"} & set(sys.argv[1:]):  # the real-model report (SmolLM2): scripts/qfa_real.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from qfa_real import main as real_main
        return real_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="runs/qfa_report")
    ap.add_argument("--steps", type=int, default=300, help="adapter training steps per run")
    ap.add_argument("--base-steps", type=int, default=800, help="full fine-tuning steps of the stage-0 base")
    ap.add_argument("--base-lr", type=float, default=2e-3)
    ap.add_argument("--period", type=int, default=100, help="triangular wave period (steps)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-per-task", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--n-initial", type=int, default=40)
    ap.add_argument("--n-refine", type=int, default=20)
    ap.add_argument("--budget", default="3")
    ap.add_argument("--only", nargs="*", help="train only these runs")
    ap.add_argument("--search-only", action="store_true",
                    help="with --reuse: keep the earlier run evaluations, redo only quantization error + search")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs in OUTPUT instead of retraining")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base", metavar="MODEL_DIR", help="reuse a stage-0 base (RUN/base/model of an earlier report)")
    ap.add_argument("--quantizer", choices=("gptq", "rtn"), default="gptq", help="base quantizer of every run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch thread(s), "
                          "2 shared cores", "command": " ".join(["python"] + sys.argv),
               "settings": vars(args), "runs": {}}
    prev = out / "qfa_report.json"
    old = json.loads(prev.read_text()) if prev.exists() and args.reuse else {"runs": {}}

    base_dir = Path(args.base) if args.base else out / "base" / "model"
    if args.base:
        results["base_train_s"] = f"reused {args.base}"
    elif not (args.reuse and base_dir.exists()):
        print("== stage 0: full fine-tuning of the tiny T5 base", flush=True)
        results["base_train_s"] = round(train_run(out, "base", "full", {}, args, steps=args.base_steps,
                                                  lr=args.base_lr), 1)
    else:
        results["base_train_s"] = old.get("base_train_s")
    _, _, meta = load_run(base_dir)
    tasks = load_tasks_for_run(meta, [str(REPO / "tasks" / "sample")], "seen")
    vslice = validation_slice(tasks, args.val_per_task)
    results["validation_tasks"] = len(tasks)
    if args.search_only:
        results["runs"], results["base_train_s"] = old["runs"], old.get("base_train_s")
        results["command"] = old.get("command", "") + " ; then " + results["command"]
        results["settings"] = {**old.get("settings", {}), **{k: v for k, v in vars(args).items()
                                                                if k in ("budget", "n_initial", "n_refine")}}
    else:
        results["runs"].update(train_and_evaluate(out, base_dir, tasks, vslice, results, old, args))
    if (out / "qfa" / "model").exists():
        print("== quantization error (RTN vs GPTQ)", flush=True)
        results["quant_error"] = quant_error_table(out / "qfa" / "model", vslice)
        print("== deployment search", flush=True)
        model, tok, meta = load_run(out / "qfa" / "model")
        # select on a search slice (the K instances before the validation slice, also never trained
        # on) and report the chosen subnet on the validation slice: no selection bias in the numbers
        search_slice = validation_slice(tasks, 2 * args.val_per_task)
        search_slice.instances = {n: v[:args.val_per_task] for n, v in search_slice.instances.items()}
        scorer = make_scorer(model, tok, search_slice, kind=meta["kind"], metric="loss", max_source_length=256)
        val_scorer = make_scorer(model, tok, vslice, kind=meta["kind"], metric="loss", max_source_length=256)
        t0 = time.time()
        res = search(model, scorer, Budget.parse(args.budget), metric_name="loss", higher_is_better=False,
                     n_initial=args.n_initial, n_refine=args.n_refine, seed=args.seed)
        seconds = time.time() - t0
        res.extra["validation"] = {"tasks": len(search_slice.tasks), "instances": search_slice.size,
                                   "note": "search slice: instances [-2K, -K) of each seen task"}
        write_search_report(res, out / "qfa" / "qfa_search", title="QFA deployment search (tiny T5, CPU)")
        export_dir = out / "qfa" / "deploy_best"
        info = export_subnet(model, res.best.config, export_dir, tokenizer=tok, run_meta=meta)
        deployed, _, _ = load_subnet(export_dir)
        export_loss = mean_token_loss(deployed, loss_batches(meta["kind"], tok, vslice, max_source_length=256))
        results["search"] = {"budget": res.budget.label(), "n_scored": len(res.candidates), "seconds": seconds,
                             "best_config": ",".join(str(res.best.config[u]) for u in res.units),
                             "best_avg_bits": res.best.avg_bits, "best_loss_search_slice": res.best.metric,
                             "best_loss": val_scorer(res.best.config),
                             **{f"uniform{b}_loss": val_scorer(uniform_configuration(model, b)) for b in (2, 3, 4)},
                             "export_loss": export_loss, "export_file_kb": info["file_bytes"] / 1000,
                             "sensitivity": res.sensitivity, "units": state_of(model).units}
    (out / "qfa_report.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    plot_results(results, out)
    if "quant_error" in results:
        write_markdown(results, out)
    print(f"wrote {out / 'qfa_report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
