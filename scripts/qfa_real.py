"""QFA-LoRA on the real model (SmolLM2-135M-Instruct): `scripts/qfa_report.py --quick | --full`.

1. Quantization table: the pretrained model's 210 linear layers quantized with our packed RTN and
   GPTQ (group 32) at 2/3/4 bits — weight bytes against bits·params/8 + fp16 scales/zeros,
   held-out perplexity of the gold outputs (SNI-format prompts) and held-out ROUGE-L, next to fp32;
   relative layer-output error ||X(W−Ŵ)ᵀ||/||XWᵀ|| of RTN, our GPTQ and (when installed) HQQ on the
   same layers, X = the fp model's inputs to each layer on held-out prompts.
2. Once-for-all training on the seen tasks, all from ONE GPTQ quantization (`quantized_base`):
   QFA (decoupled per-bit LoRAs, triangular-wave sampler), one LoRA shared by all bit-widths, and
   one QLoRA-style run per bit-width (3 runs of steps/3 each: same total steps as one QFA run).
   Held-out loss and ROUGE-L at uniform 2/3/4 bits; `qfa search` at budgets 2.5/3/3.5 bits on a
   seen-task selection slice, the chosen subnets reported on the held-out tasks; the budget-3
   subnet is exported, reloaded with `load_run` and generates.

Held-out = the sample split's held-out tasks (never trained on). One seed; CPU; 1 torch thread
(on 2 shared cores, tiny per-column GPTQ ops are ~20x slower with 2 OpenMP threads).
The last line is `qfa_3bit_minus_shared_lora_loss=<x> gptq_vs_rtn_err=<ratio> subnet_bytes_vs_ideal=<ratio>`.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "smollm2-135m"
ENCODING = "def+pos2"


@dataclass
class Mode:
    name: str
    eval_per_task: int            # first N instances of each held-out task
    search_per_task: int          # last N instances of each seen task (never trained on) for the search
    max_source_length: int
    max_new_tokens: int
    calib_seqs: int
    calib_len: int
    table_bits: list[int]
    gptq_table: bool              # GPTQ rows in the table (quick: only the layer-error comparison)
    error_layers: int | None      # first N quantized linears (None: see error_blocks)
    quantizer: str                # base quantizer of the training runs
    steps: int                    # QFA / shared-LoRA steps; QLoRA runs get steps // 3 each
    period: int
    batch_size: int
    lr: float
    runs: list[str]
    budgets: list[str]
    n_initial: int
    n_refine: int
    rouge_runs: bool = True
    error_blocks: tuple[int, ...] = (0, 6, 12, 18, 24, 29)  # layer error on these blocks' 7 linears each
                                                           # (HQQ's optimiser costs ~0.5 s per layer and bit)
    extra: dict = field(default_factory=dict)


MODES = {
    "quick": Mode("quick", eval_per_task=2, search_per_task=2, max_source_length=160, max_new_tokens=8,
                  calib_seqs=4, calib_len=64, table_bits=[3], gptq_table=False, error_layers=14,
                  quantizer="rtn", steps=4, period=4, batch_size=2, lr=1e-3, runs=["qfa", "qfa_shared"],
                  budgets=["3"], n_initial=3, n_refine=2, rouge_runs=False),
    "full": Mode("full", eval_per_task=8, search_per_task=3, max_source_length=192, max_new_tokens=16,
                 calib_seqs=32, calib_len=128, table_bits=[2, 3, 4], gptq_table=True, error_layers=None,
                 quantizer="gptq", steps=36, period=18, batch_size=4, lr=1e-3,
                 runs=["qfa", "qfa_shared", "qlora_2bit", "qlora_3bit", "qlora_4bit"],
                 budgets=["2.5", "3", "3.5"], n_initial=4, n_refine=2),
}


def run_options(name: str, mode: Mode, base_file: str | None) -> dict:
    g = {"quantizer": mode.quantizer, "period": mode.period}
    if base_file:
        g["quantized_base"] = base_file
    return {"qfa": dict(g), "qfa_shared": {**g, "shared_lora": True},
            **{f"qlora_{b}bit": {**g, "bits": [b]} for b in (2, 3, 4)}}[name]


# ----------------------------------------------------------------------------- data
def task_split():
    from instructmt.config import DataConfig
    from instructmt.training.task_setup import resolve_tasks
    return resolve_tasks(DataConfig(tasks=[str(REPO / "tasks" / "sample")]))


def eval_slice(tasks, first: int):
    from instructmt.workflows.qfa_scoring import ValidationSlice
    return ValidationSlice(list(tasks), {t.name: list(t.instances)[:first] for t in tasks})


def calibration_batches(tok, seen, mode: Mode):
    """`calib_seqs` training instances (round-robin over seen tasks), truncated to `calib_len`."""
    from instructmt.workflows.qfa_scoring import ValidationSlice, loss_batches
    per = math.ceil(mode.calib_seqs / len(seen))
    insts = {t.name: list(t.instances)[:per] for t in seen}
    sl = ValidationSlice(list(seen), insts)
    batches = loss_batches("causal", tok, sl, encoding=ENCODING, max_source_length=mode.calib_len,
                           max_target_length=16, batch_size=8)
    return batches[: math.ceil(mode.calib_seqs / 8)]


# ----------------------------------------------------------------------------- scoring
def held_out_scores(model, tok, vslice, mode: Mode, *, rouge: bool = True) -> dict:
    """Token loss / perplexity of the gold outputs and ROUGE-L of greedy generations."""
    from instructmt.workflows.qfa_scoring import loss_batches, mean_token_loss
    from instructmt.data.tokenize import EncodeSpec, encode_sources, source_length_fn
    from instructmt.evaluation.generation import generate
    from instructmt.evaluation.metrics import get_metric
    from instructmt.prompts.render import PromptRenderer

    batches = loss_batches("causal", tok, vslice, encoding=ENCODING, max_source_length=mode.max_source_length,
                           max_target_length=32, batch_size=8)
    loss = mean_token_loss(model, batches)
    out = {"loss": round(loss, 4), "ppl": round(math.exp(loss), 3)}
    if rouge:
        r = PromptRenderer(ENCODING, length_fn=source_length_fn(tok), max_source_length=mode.max_source_length)
        pairs = vslice.pairs()
        src = encode_sources([r.render(t, i) for t, i in pairs], tok,
                             EncodeSpec("causal", ENCODING, mode.max_source_length, mode.max_new_tokens))
        preds = generate(model, tok, "causal", src, batch_size=8, max_new_tokens=mode.max_new_tokens,
                         show_progress=False)
        refs = [i.outputs for _, i in pairs]
        out["rougeL"] = round(float(get_metric("rougeL").compute(preds, refs)), 2)
        out["exact_match"] = round(float(get_metric("exact_match").compute(preds, refs)), 2)
        # per instance (x100), in the slice's order: paired bootstrap intervals between systems
        from instructmt.evaluation.metrics import rougeL_instance, sni_exact_match_instance
        out["rougeL_items"] = [round(100 * rougeL_instance(p, r), 3) for p, r in zip(preds, refs)]
        out["exact_match_items"] = [100 * sni_exact_match_instance(p, r) for p, r in zip(preds, refs)]
    return out


def paired_intervals(res: dict) -> list[dict]:
    """QFA at each uniform bit-width against the shared LoRA and the QLoRA-style run of that width:
    paired bootstrap 95% intervals of the ROUGE-L and EM differences over the held-out instances."""
    from instructmt.evaluation.bootstrap import paired_bootstrap
    runs, rows = res.get("runs") or {}, []
    qfa = runs.get("qfa", {}).get("eval", {})
    for b in "234":
        for other in ("qfa_shared", f"qlora_{b}bit"):
            base = runs.get(other, {}).get("eval", {}).get(b)
            mine = qfa.get(b)
            if not base or not mine or "rougeL_items" not in base or "rougeL_items" not in mine:
                continue
            row = {"bits": b, "baseline": other, "n": len(mine["rougeL_items"])}
            for key in ("rougeL", "exact_match"):
                row[key] = paired_bootstrap(mine[key + "_items"], base[key + "_items"]).to_dict()
            rows.append(row)
    return rows


def ideal_bytes(model, config) -> float:
    """bits·params/8 + one fp16 scale and one fp16 zero per group of `group_size` weights."""
    from instructmt.adapters.qfa import state_of
    st = state_of(model)
    g = st.config.group_size
    return sum(v["in"] * v["out"] * config[v["unit"]] / 8 + 4 * v["out"] * math.ceil(v["in"] / g)
               for v in st.linears.values())


def quantized_model(quantizer: str, bits: list[int], calib=None):
    """SmolLM2 with every linear (except the tied head) replaced by a QFA layer; LoRAs are zero."""
    from instructmt.adapters.base import AdapterConfig, get_adapter
    from instructmt.models.loading import load_pretrained
    model, tok = load_pretrained(MODEL)[:2]
    method = get_adapter("qfa")
    model = method.apply(model, AdapterConfig(method="qfa", r=8, alpha=16,
                                              options={"quantizer": quantizer, "bits": bits}), [])
    if quantizer == "gptq":
        method.calibrate(model, calib)
    model.eval()
    return model, tok, method


# ----------------------------------------------------------------------------- layer error
@torch.no_grad()
def layer_inputs(fp_model, tok, vslice, mode: Mode, names: list[str], rows: int = 1024) -> dict:
    from instructmt.workflows.qfa_scoring import loss_batches
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [fp_model.get_submodule(n).register_forward_pre_hook(
        lambda mod, a, n=n: acts[n].append(a[0].detach().reshape(-1, mod.in_features))) for n in names]
    for b in loss_batches("causal", tok, vslice, encoding=ENCODING, max_source_length=mode.max_source_length,
                          batch_size=4)[:2]:
        fp_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in hooks:
        h.remove()
    out = {}
    for n, xs in acts.items():
        x = torch.cat(xs)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:rows]
        out[n] = x[keep]
    return out


def hqq_dequantized(w: torch.Tensor, bits: int, group: int):
    """HQQ (half-quadratic, calibration-free) reference at the same bits / group size, or None."""
    try:
        from hqq.core.quantize import Quantizer
    except ImportError:
        return None
    wq, meta = Quantizer.quantize(w, nbits=bits, channel_wise=True, group_size=group, optimize=True,
                                  round_zero=False, axis=1, bitpack=False, compute_dtype=torch.float32,
                                  device="cpu")
    return Quantizer.dequantize(wq, meta).reshape(w.shape).float()


def gptq_only_layers(fp_model, names: list[str], calib, bits_list):
    """Quick mode: GPTQ on a few layers only (a stand-in model object exposing `.quantized(b)`)."""
    from instructmt.adapters.qfa.quant import gptq_quantize
    hess = {n: torch.zeros(fp_model.get_submodule(n).in_features, fp_model.get_submodule(n).in_features,
                           dtype=torch.float64) for n in names}
    def hook(name):
        def fn(mod, a):
            x = a[0].detach().reshape(-1, mod.in_features).double()
            hess[name].add_(x.t() @ x)   # returns None: a pre-hook's return value replaces the input
        return fn
    hooks = [fp_model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for b in calib:
            fp_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in hooks:
        h.remove()

    class _Layer:
        def __init__(self, w, h):
            self.q = {b: gptq_quantize(w, h, b) for b in bits_list}

        def quantized(self, b):
            return self.q[b]
    return {n: _Layer(fp_model.get_submodule(n).weight.detach().float(), hess[n]) for n in names}


# ----------------------------------------------------------------------------- training runs
def train_run(out: Path, name: str, options: dict, mode: Mode, steps: int) -> float:
    from instructmt.config import load_config
    from instructmt.training.trainer import train
    cfg = load_config(None, [
        f"output_dir={out / name}", f"data.tasks=[{REPO / 'tasks' / 'sample'}]", "adapter.method=qfa",
        f"model.name_or_path={MODEL}", f"max_steps={steps}", f"batch_size={mode.batch_size}",
        f"learning_rate={mode.lr}", "seed=0", "data.max_instances_per_task=100",
        f"data.encoding={ENCODING}", f"data.max_source_length={mode.max_source_length}",
        "data.max_target_length=32", "log_every=5", "adapter.r=8", "adapter.alpha=16",
        "adapter.options=" + json.dumps(options)])
    t0 = time.time()
    train(cfg)
    return round(time.time() - t0, 1)


def search_and_report(out: Path, name: str, tok, seen, held_slice, mode: Mode) -> dict:
    """`qfa search` at each budget on a seen-task slice (memoised across budgets), the chosen
    subnets scored on the held-out slice; the budget-3 (or first) subnet exported and reloaded."""
    from instructmt.adapters.qfa import (avg_bits, cache_dequantized_weights, export_subnet, set_configuration,
                                         uniform_configuration, weight_bytes)
    from instructmt.workflows.qfa_scoring import make_scorer, validation_slice
    from instructmt.adapters.qfa.search import Budget, search, write_search_report
    from instructmt.models.loading import load_run

    model, _, meta = load_run(out / name / "model")
    cache_dequantized_weights(model)
    sslice = validation_slice(seen, mode.search_per_task)
    raw = make_scorer(model, tok, sslice, kind="causal", metric="loss", encoding=ENCODING,
                      max_source_length=mode.max_source_length, batch_size=8)
    memo: dict[tuple, float] = {}

    def scorer(config):
        key = tuple(sorted(config.items()))
        if key not in memo:
            memo[key] = raw(config)
        return memo[key]

    res_all, t0 = {}, time.time()
    for budget in mode.budgets:
        res = search(model, scorer, Budget.parse(budget), metric_name="loss", higher_is_better=False,
                     n_initial=mode.n_initial, n_refine=mode.n_refine, seed=0, progress=False)
        write_search_report(res, out / name / f"qfa_search_{budget}", title=f"QFA search, SmolLM2, budget {budget} bits")
        best = res.best
        set_configuration(model, best.config)
        held = held_out_scores(model, tok, held_slice, mode, rouge=mode.rouge_runs)
        res_all[budget] = {"best_config": [best.config[u] for u in res.units], "avg_bits": round(best.avg_bits, 3),
                           "search_loss": round(best.metric, 4), "held_out": held,
                           "weight_bytes": weight_bytes(model, best.config),
                           "ideal_bytes": round(ideal_bytes(model, best.config)),
                           "candidates": [(c.avg_bits, round(c.metric, 4), c.pareto) for c in res.candidates]}
        print(f"[qfa] {name} budget {budget}: {json.dumps({k: v for k, v in res_all[budget].items() if k != 'candidates'})}",
              flush=True)
    seconds = round(time.time() - t0, 1)
    budget = "3" if "3" in res_all else mode.budgets[0]
    chosen = dict(zip(model.qfa_state.units, res_all[budget]["best_config"]))
    export_dir = out / name / "deploy_best"
    info = export_subnet(model, chosen, export_dir, tokenizer=tok, run_meta=meta)
    deployed, dtok, dmeta = load_run(export_dir)   # the spine's loader, method qfa_subnet
    cache_dequantized_weights(deployed)
    reloaded = held_out_scores(deployed, dtok or tok, held_slice, mode, rouge=True)
    return {"budgets": res_all, "subnets_scored": len(memo), "search_s": seconds,
            "export": {"budget": budget, "dir": str(export_dir), "method": dmeta.get("method"),
                       "file_bytes": info["file_bytes"], "weight_bytes": info["weight_bytes"],
                       "ideal_bytes": round(ideal_bytes(model, chosen)), "avg_bits": round(info["avg_bits"], 3),
                       "reloaded_held_out": reloaded,
                       "uniform_bytes": {b: weight_bytes(model, uniform_configuration(model, b)) for b in (2, 3, 4)},
                       "uniform_avg_bits_check": avg_bits(model, uniform_configuration(model, 3))}}


# ----------------------------------------------------------------------------- report
def _table_markdown(res: dict) -> list[str]:
    L = ["## Base quantization (no training)", "",
         "| weights | bits | linear-weight bytes | ideal b·P/8 + scales | ratio | held-out loss | perplexity | ROUGE-L | EM |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in res["table"]:
        L.append(f"| {row['name']} | {row['bits']} | {row['bytes']:,} | {row.get('ideal', 0):,.0f} | "
                 f"{row.get('ratio', 1.0):.3f} | {row['loss']:.3f} | {row['ppl']:.2f} | "
                 f"{row.get('rougeL', float('nan')):.1f} | {row.get('exact_match', float('nan')):.1f} |")
    L += ["", f"Layer output error ||X(W−Ŵ)ᵀ|| / ||XWᵀ||, mean over {res['layer_error_layers']} layers, X = fp inputs "
          "on held-out prompts (HQQ: calibration-free reference, same bits and group 32):", "",
          "| bits | RTN | our GPTQ | HQQ | GPTQ / RTN |", "|---:|---:|---:|---:|---:|"]
    for b, v in res["layer_error"].items():
        L.append(f"| {b} | {v['rtn']:.4f} | {v['gptq']:.4f} | {v.get('hqq', float('nan')):.4f} | "
                 f"{v['gptq'] / v['rtn']:.3f} |")
    return L


def markdown(res: dict) -> str:
    m = res["mode"]
    L = [f"# QFA on SmolLM2-135M-Instruct ({m} mode)", "",
         f"Machine: {res['machine']}. Date: {res['date']}. Commit: {res['commit']}. Command: `{res['command']}`.",
         f"Held-out: {res['held_out_tasks']} tasks × first {res['settings']['eval_per_task']} instances "
         f"({res['held_out_instances']}); encoding {ENCODING}, prompts ≤ {res['settings']['max_source_length']} "
         f"tokens, {res['settings']['max_new_tokens']} new tokens (greedy).", ""]
    if res.get("table"):
        L += _table_markdown(res)
    if res.get("runs"):
        L += ["", "## Once-for-all training (held-out tasks, uniform deployments)", "",
              "| run | steps | train s | 2-bit loss | 3-bit loss | 4-bit loss | 2-bit R-L | 3-bit R-L | 4-bit R-L |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in res["runs"].items():
            ev = r["eval"]
            cells = [f"{ev[b]['loss']:.3f}" if b in ev else "—" for b in "234"]
            cells += [f"{ev[b]['rougeL']:.1f}" if b in ev and "rougeL" in ev[b] else "—" for b in "234"]
            L.append(f"| {name} | {r['steps']} | {r['train_s']:.0f} | " + " | ".join(cells) + " |")
    if res.get("intervals"):
        L += ["", "Paired bootstrap 95% intervals over the held-out instances (QFA minus baseline, same instances):", "",
              "| bits | QFA − | n | Δ ROUGE-L [95% CI] | Δ EM [95% CI] |", "|---:|---|---:|---|---|"]
        for r in res["intervals"]:
            cells = [f"{r[k]['delta']:+.1f} [{r[k]['low']:+.1f}, {r[k]['high']:+.1f}]" for k in ("rougeL", "exact_match")]
            L.append(f"| {r['bits']} | {r['baseline']} | {r['n']} | " + " | ".join(cells) + " |")
    for name, s in (res.get("search") or {}).items():
        L += ["", f"## Searched mixed-precision subnets of `{name}` (selected on seen-task slice, scored held-out)", "",
              "| budget (bits) | avg bits | search-slice loss | held-out loss | held-out R-L | weight bytes | vs ideal |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
        for b, v in s["budgets"].items():
            h = v["held_out"]
            L.append(f"| {b} | {v['avg_bits']:.3f} | {v['search_loss']:.3f} | {h['loss']:.3f} | "
                     f"{h.get('rougeL', float('nan')):.1f} | {v['weight_bytes']:,} | {v['weight_bytes'] / v['ideal_bytes']:.3f} |")
        e = s["export"]
        L += ["", f"{s['subnets_scored']} distinct subnets scored in {s['search_s']:.0f} s. Export (budget {e['budget']}, "
              f"{e['avg_bits']} avg bits) reloaded with `load_run` (method `{e['method']}`): held-out loss "
              f"{e['reloaded_held_out']['loss']:.3f}, ROUGE-L {e['reloaded_held_out']['rougeL']:.1f}; file "
              f"{e['file_bytes']:,} bytes (quantized linears {e['weight_bytes']:,}, ideal {e['ideal_bytes']:,})."]
    L += ["", "![Pareto](qfa_real_pareto.png)", ""]
    return "\n".join(L)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in (res.get("search") or {}).items():
        pts = {}
        for v in s["budgets"].values():
            for bits, loss, _ in v["candidates"]:
                pts[(bits, loss)] = 1
        xs, ys = zip(*pts) if pts else ([], [])
        ax.scatter(xs, ys, s=8, alpha=0.5, label=f"{name}: subnets (search slice)")
        front = sorted(pts)
        best, fx, fy = float("inf"), [], []
        for x, y in front:
            if y < best:
                best = y
                fx.append(x)
                fy.append(y)
        ax.plot(fx, fy, "-", lw=1, label=f"{name}: Pareto front")
    for name, r in (res.get("runs") or {}).items():
        if name.startswith("qlora"):
            b = name.split("_")[1][0]
            if b in r.get("search_slice", {}):
                ax.plot([int(b)], [r["search_slice"][b]], "s", c="black", ms=5)
    ax.set_xlabel("average bits (parameter-weighted)")
    ax.set_ylabel("loss on seen-task search slice")
    ax.legend(fontsize=7)
    ax.set_title("QFA subnets on SmolLM2 (squares: per-bit QLoRA-style runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="smoke: < 10 min on 2 idle cores")
    g.add_argument("--full", action="store_true", help="the documented run (≤ 45 min on 2 idle cores)")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--part", choices=("all", "table", "train"), default="all",
                    help="table: quantization table only; train: the training comparison (reuses OUTPUT/gptq_base)")
    ap.add_argument("--reuse", action="store_true", help="reuse trained runs found in OUTPUT")
    ap.add_argument("--runs", nargs="+", default=None,
                    help="with --part train: only these runs (parallel processes; results merge)")
    ap.add_argument("--search", choices=("yes", "no", "only"), default="yes",
                    help="with --part train: also / not / only the deployment search on OUTPUT/qfa")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = args.output or REPO / "runs" / f"qfa_real_{mode.name}"
    out.mkdir(parents=True, exist_ok=True)
    tag = args.part
    if args.part == "train":
        tag = "search" if args.search == "only" else "train_" + "+".join(args.runs or mode.runs)
    part_file = out / f"qfa_real_{tag}.json"   # parts may run as parallel processes; merged below
    res = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    res.update({"mode": mode.name, "machine": f"CPU {platform.machine()}, 2 cores shared with other jobs, "
                f"{args.threads} torch thread(s)", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "commit": commit, "command": "python scripts/qfa_report.py " + " ".join(argv),
                "settings": asdict(mode)})
    timings = res.setdefault("timings", {})
    split = task_split()
    held = eval_slice(split.held_out, mode.eval_per_task)
    res["held_out_tasks"], res["held_out_instances"] = len(held.tasks), held.size

    from instructmt.adapters.qfa import (cache_dequantized_weights, qfa_layers, save_supernet, set_configuration,
                                         uniform_configuration, weight_bytes)
    from instructmt.models.loading import load_pretrained

    base_file = None
    if args.part in ("all", "table"):
        t0 = time.time()
        fp_model, tok = load_pretrained(MODEL)[:2]
        fp_model.eval()
        calib = calibration_batches(tok, split.seen, mode)
        rtn, _, _ = quantized_model("rtn", [2, 3, 4])
        cache_dequantized_weights(rtn)
        quantizers = [("RTN", rtn)]
        t1 = time.time()
        if mode.gptq_table:
            gptq, _, _ = quantized_model("gptq", [2, 3, 4], calib)
            cache_dequantized_weights(gptq)
            quantizers.append(("GPTQ", gptq))
            timings["gptq_calibrate_quantize_s"] = round(time.time() - t1, 1)
            save_supernet(gptq, out / "gptq_base")   # zero LoRAs: the shared quantized base of the runs
            base_file = str(out / "gptq_base")
        fp = held_out_scores(fp_model, tok, held, mode)
        n_lin = sum(m.weight.numel() for n, m in fp_model.named_modules()
                    if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
        table = [{"name": "fp32 (no quantization)", "bits": 32, "bytes": 4 * n_lin, "ideal": 4 * n_lin, **fp}]
        print(f"[qfa] fp32: {fp}", flush=True)
        for qname, qm in quantizers:
            for b in mode.table_bits:
                cfg = uniform_configuration(qm, b)
                set_configuration(qm, cfg)
                s = held_out_scores(qm, tok, held, mode)
                nb, ideal = weight_bytes(qm, cfg), ideal_bytes(qm, cfg)
                table.append({"name": f"{qname} (ours, packed)", "bits": b, "bytes": nb, "ideal": ideal,
                              "ratio": nb / ideal, **s})
                print(f"[qfa] {qname} {b}-bit: {table[-1]}", flush=True)
                res["table"] = table
                part_file.write_text(json.dumps(res, indent=2), encoding="utf-8")  # partial results survive
        names = (list(qfa_layers(rtn))[: mode.error_layers] if mode.error_layers else
                 [n for n in qfa_layers(rtn) if any(f".layers.{b}." in n for b in mode.error_blocks)])
        acts = layer_inputs(fp_model, tok, held, mode, names)
        if mode.gptq_table:
            gptq_layers = qfa_layers(quantizers[1][1])
        else:  # quick: GPTQ on the error layers only
            t1 = time.time()
            gptq_layers = gptq_only_layers(fp_model, names, calib, mode.table_bits)
            timings["gptq_error_layers_s"] = round(time.time() - t1, 1)
        res["layer_error"] = layer_error_table(fp_model, qfa_layers(rtn), gptq_layers, acts, mode.table_bits)
        res["layer_error_layers"] = len(names)
        try:
            import hqq  # noqa: F401
            res["hqq"] = "hqq " + getattr(hqq, "__version__", "?")
        except ImportError:
            res["hqq"] = "not installed (no reference comparison)"
        print(f"[qfa] layer error: {res['layer_error']}", flush=True)
        timings["table_s"] = round(time.time() - t0, 1)
        del rtn, quantizers, fp_model, gptq_layers
    elif (out / "gptq_base").exists():
        base_file = str(out / "gptq_base")

    if args.part in ("all", "train"):
        from instructmt.models.loading import load_run
        _, tok = load_pretrained(MODEL)[:2]
        runs = res.setdefault("runs", {})
        # training times recorded by earlier runs of this output (read before this run rewrites its part file)
        earlier_train_s = {n: r["train_s"] for f in sorted(out.glob("qfa_real_*.json"))
                           for n, r in json.loads(f.read_text(encoding="utf-8")).get("runs", {}).items()
                           if r.get("train_s") == r.get("train_s")}
        for name in ([] if args.search == "only" else (args.runs or mode.runs)):
            steps = mode.steps // 3 if name.startswith("qlora") else mode.steps
            opts = run_options(name, mode, base_file if mode.quantizer == "gptq" else None)
            model_dir = out / name / "model"
            train_s = runs.get(name, {}).get("train_s", float("nan"))
            if args.reuse and train_s != train_s:  # a re-evaluation keeps the training time recorded earlier
                train_s = earlier_train_s.get(name, train_s)
            if not (args.reuse and model_dir.exists()):
                print(f"[qfa] training {name} ({steps} steps): {opts}", flush=True)
                train_s = train_run(out, name, opts, mode, steps)
            model, _, _ = load_run(model_dir)
            cache_dequantized_weights(model)
            ev = {}
            for b in opts.get("bits", [2, 3, 4]):
                set_configuration(model, uniform_configuration(model, b))
                ev[str(b)] = held_out_scores(model, tok, held, mode, rouge=mode.rouge_runs)
            runs[name] = {"options": opts, "steps": steps, "train_s": train_s, "eval": ev}
            print(f"[qfa] {name}: {json.dumps(runs[name])}", flush=True)
            part_file.write_text(json.dumps(res, indent=2), encoding="utf-8")
        if args.search != "no":
            t0 = time.time()
            res["search"] = {"qfa": search_and_report(out, "qfa", tok, split.seen, held, mode)}
            timings["search_s"] = round(time.time() - t0, 1)
    part_file.write_text(json.dumps(res, indent=2), encoding="utf-8")
    if args.part != "all":  # merge with the other parts' results when they exist
        res = merge_parts(out)
    res["intervals"] = paired_intervals(res)
    (out / "qfa_real.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (out / "qfa_real.md").write_text(markdown(res), encoding="utf-8")
    plot(res, out / "qfa_real_pareto.png")
    print(f"[qfa] wrote {out / 'qfa_real.md'}")
    print(last_line(res))
    return 0


def merge_parts(out: Path) -> dict:
    """Union of the part files (table, train_<runs>, search) written by parallel processes."""
    res: dict = {}
    commands = []
    for f in sorted(out.glob("qfa_real_*.json")):
        part = json.loads(f.read_text(encoding="utf-8"))
        commands.append(part.get("command", ""))
        runs = {**res.get("runs", {}), **part.get("runs", {})}
        timings = {**res.get("timings", {}), **part.get("timings", {})}
        res.update({k: v for k, v in part.items() if v is not None})
        res["runs"], res["timings"] = runs, timings
    res["command"] = " ; ".join(dict.fromkeys(c for c in commands if c))
    return res


@torch.no_grad()
def layer_error_table(fp_model, rtn_layers: dict, gptq_layers: dict, acts: dict, bits_list) -> dict:
    """Mean relative output error per quantizer; `*_layers[name].quantized(b)` gives the weights."""
    table = {}
    for b in bits_list:
        errs: dict[str, list[float]] = {"rtn": [], "gptq": [], "hqq": []}
        for n, x in acts.items():
            w = fp_model.get_submodule(n).weight.detach().float()
            ref = (x @ w.t()).norm()
            errs["rtn"].append(float((x @ (w - rtn_layers[n].quantized(b).dequantize()).t()).norm() / ref))
            errs["gptq"].append(float((x @ (w - gptq_layers[n].quantized(b).dequantize()).t()).norm() / ref))
            wh = hqq_dequantized(w, b, 32)
            if wh is not None:
                errs["hqq"].append(float((x @ (w - wh).t()).norm() / ref))
        table[str(b)] = {k: round(sum(v) / len(v), 4) for k, v in errs.items() if v}
        table[str(b)]["layers"] = len(acts)
    return table


def last_line(res: dict) -> str:
    runs = res.get("runs", {})
    diff = (runs["qfa"]["eval"]["3"]["loss"] - runs["qfa_shared"]["eval"]["3"]["loss"]
            if "qfa" in runs and "qfa_shared" in runs else float("nan"))
    err = res.get("layer_error", {}).get("3")
    ratio = err["gptq"] / err["rtn"] if err else float("nan")
    exp = (res.get("search") or {}).get("qfa", {}).get("export")
    sub = exp["weight_bytes"] / exp["ideal_bytes"] if exp else float("nan")
    return f"qfa_3bit_minus_shared_lora_loss={diff:.4f} gptq_vs_rtn_err={ratio:.4f} subnet_bytes_vs_ideal={sub:.4f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
