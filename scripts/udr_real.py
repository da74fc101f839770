"""UDR on the real model (SmolLM2-135M-Instruct as generator and LM-feedback scorer):
`scripts/udr_report.py --quick | --full`.

1. Seen tasks of the sample split, minus the last `holdback` instances of each (kept for the
   in-domain evaluation), train the retriever (all-MiniLM-L6-v2 from the bundled package) with
   the UDR recipe: BM25 candidates (L per query), every candidate scored by SmolLM2's
   log-likelihood of the gold output given `"{z_q}\t{z_a}\n{x}\t"`, lists of 8 sampled from the
   LM ranking, 4·LambdaRank + in-batch loss, then further rounds mined with the retriever itself.
2. Held-out tasks (first N instances each; demonstrations from the task's own other instances)
   and in-domain (the seen tasks' held-back instances; demonstrations from the seen tasks'
   training pool) evaluated with `none | random | bm25 | dense | udr` at each k under one demo
   token budget: EM / ROUGE-L of greedy generations, and SmolLM2's mean log-likelihood of the
   gold output given the full prompt. Paired bootstrap intervals (instances resampled) of each
   selector minus BM25.

The last line is `udr_minus_bm25_rougeL=<x> ci_low=<a> ci_high=<b>` (held-out, the mode's
headline k). One seed; CPU, 1 torch thread.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "smollm2-135m"
ENCODING = "def+pos2"   # demonstrations from the selector replace the positive examples
SELECTORS = ("none", "random", "bm25", "dense", "udr")


@dataclass
class Mode:
    name: str
    holdback: int               # last N instances of each seen task: in-domain test, not in the pool
    pool_per_task: int          # demonstration pool: first N instances of each task (CPU: every pool
                                # item is embedded by MiniLM at each index build)
    queries_per_task: int
    num_candidates: int         # L
    iterations: int             # mining rounds (0 = BM25, then the retriever's own)
    epochs: int
    udr_batch: int
    udr_lr: float
    eval_per_task: int          # held-out: first N instances of each held-out task
    ks: list[int]
    headline_k: int
    indomain_ks: list[int]
    demo_budget: int            # tokens for all demonstrations together (same for every k)
    max_source_length: int
    max_new_tokens: int
    encoder_max_length: int = 96
    n_resamples: int = 5000


MODES = {
    "quick": Mode("quick", holdback=2, pool_per_task=10, queries_per_task=2, num_candidates=6, iterations=2, epochs=1, udr_batch=7,
                  udr_lr=3e-5, eval_per_task=3, ks=[2], headline_k=2, indomain_ks=[], demo_budget=200,
                  max_source_length=384, max_new_tokens=8, n_resamples=1000),
    "full": Mode("full", holdback=4, pool_per_task=30, queries_per_task=4, num_candidates=8, iterations=2, epochs=2, udr_batch=8,
                 udr_lr=3e-5, eval_per_task=8, ks=[2, 1, 4], headline_k=2, indomain_ks=[2], demo_budget=200,
                 max_source_length=320, max_new_tokens=16),
}


def per_instance(eval_dir: Path) -> tuple[list[str], list[float], list[float], int]:
    """(instance ids, ROUGE-L ×100, EM ×100, self-retrieved count) from predictions.jsonl."""
    from instructmt.evaluation.comparison import read_predictions
    from instructmt.evaluation.metrics import rougeL_instance, sni_exact_match_instance
    ids, rl, em, selfr = [], [], [], 0
    for r in read_predictions(eval_dir):
        ids.append(r["Instance"]["id"])
        rl.append(100 * rougeL_instance(r["prediction"], r["Instance"]["output"]))
        em.append(100 * sni_exact_match_instance(r["prediction"], r["Instance"]["output"]))
        selfr += r["Instance"]["id"] in (r.get("demos") or [])
    return ids, rl, em, selfr


def evaluate_setting(model, tok, scorer, tasks, pool_tasks, instances, kind_name: str, k: int, mode: Mode,
                     out_dir: Path, retriever_dir: Path) -> dict:
    from instructmt.data.tokenize import source_length_fn
    from instructmt.evaluation.runner import evaluate_tasks
    from instructmt.prompts.render import PromptRenderer
    from instructmt.retrieval.selectors import make_demo_selector

    length_fn = source_length_fn(tok)
    selector = make_demo_selector(kind_name, pool_tasks, k=k, demo_budget_tokens=mode.demo_budget,
                                  length_fn=length_fn, retriever_dir=retriever_dir if kind_name == "udr" else None,
                                  seed=0, encoder="all-MiniLM-L6-v2", encoder_max_length=mode.encoder_max_length)
    t0 = time.time()
    metrics = evaluate_tasks(model, tok, tasks, kind="causal", output_dir=out_dir, encoding=ENCODING,
                             max_source_length=mode.max_source_length, max_new_tokens=mode.max_new_tokens,
                             instances=instances, max_instances=None, batch_size=8, demo_selector=selector,
                             title=f"demos {kind_name}, k={k}", show_progress=False)
    ids, rl, em, selfr = per_instance(out_dir)
    # the LM's log-likelihood of the gold output given the same prompt it generated from
    renderer = PromptRenderer(ENCODING, length_fn=length_fn, max_source_length=mode.max_source_length)
    by_name = {t.name: t for t in tasks}
    pairs, n_demos = [], []
    for name, insts in instances.items():
        for inst in insts:
            demos = selector(by_name[name], inst)
            n_demos.append(len(demos))
            pairs.append((renderer.render(by_name[name], inst, demos=demos), inst.outputs[0]))
    ll = scorer.score(pairs)
    return {"selector": kind_name, "k": k, "exact_match": metrics["exact_match"], "rougeL": metrics["rougeL"],
            "gold_loglik": sum(ll) / len(ll), "mean_demos": sum(n_demos) / len(n_demos),
            "self_retrieved": selfr, "ids": ids, "rougeL_per": rl, "em_per": em, "loglik_per": ll,
            "seconds": round(time.time() - t0, 1)}


def with_intervals(rows: list[dict], mode: Mode) -> None:
    """Paired bootstrap of each row minus BM25 at the same k (same instances, same order)."""
    from instructmt.evaluation.bootstrap import paired_bootstrap
    base = {r["k"]: r for r in rows if r["selector"] == "bm25"}
    for r in rows:
        b = base.get(r["k"]) or next(iter(base.values()), None)
        if b is None or r is b:
            continue
        assert r["ids"] == b["ids"], "paired rows must score the same instances in the same order"
        for key in ("rougeL", "em", "loglik"):
            ci = paired_bootstrap(r[f"{key}_per"], b[f"{key}_per"], n_resamples=mode.n_resamples, seed=0)
            r[f"{key}_vs_bm25"] = [round(ci.delta, 4), round(ci.low, 4), round(ci.high, 4)]


def table(rows: list[dict], title: str) -> list[str]:
    L = [f"### {title}", "",
         "| demos | k | EM | ROUGE-L | ROUGE-L − BM25 [95% CI] | EM − BM25 [95% CI] | log p(gold given prompt) | − BM25 [95% CI] | demos used |",
         "|---|---:|---:|---:|---|---|---:|---|---:|"]

    def ci(r, key, fmt):
        v = r.get(f"{key}_vs_bm25")
        return "—" if v is None else f"{v[0]:{fmt}} [{v[1]:{fmt}}, {v[2]:{fmt}}]"
    for r in rows:
        L.append(f"| {r['selector']} | {r['k']} | {r['exact_match']:.1f} | {r['rougeL']:.1f} | {ci(r, 'rougeL', '+.1f')} | "
                 f"{ci(r, 'em', '+.1f')} | {r['gold_loglik']:.3f} | {ci(r, 'loglik', '+.3f')} | {r['mean_demos']:.2f} |")
    return L


def markdown(res: dict) -> str:
    L = [f"# UDR on SmolLM2-135M-Instruct ({res['mode']} mode)", "",
         f"Machine: {res['machine']}. Date: {res['date']}. Commit: {res['commit']}. Command: `{res['command']}`.",
         f"Held-out: {len(res['held_out_tasks'])} tasks × first {res['settings']['eval_per_task']} instances; "
         f"in-domain: {res['seen_tasks']} seen tasks × last {res['settings']['holdback']} instances (never in the "
         f"retriever's training pool). Demo budget {res['settings']['demo_budget']} tokens for every k, most similar "
         f"last; prompts ≤ {res['settings']['max_source_length']} tokens; {res['settings']['max_new_tokens']} new "
         "tokens, greedy. Intervals: paired bootstrap over instances "
         f"({res['settings']['n_resamples']} resamples), each row minus BM25 at the same k.", ""]
    L += table(res.get("held_out", []), "Held-out tasks")
    if res.get("in_domain"):
        L += [""] + table(res["in_domain"], "In-domain (seen tasks' held-back instances)")
    if res.get("udr_history"):
        L += ["", "UDR training (per mining round):", "",
              "| round | queries | LM-scored pairs | mean candidates | steps | first loss | last loss | s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for h in res["udr_history"]:
            L.append(f"| {h['iteration']} | {h['queries']} | {h['lm_scored_pairs']} | {h['mean_candidates']:.1f} | "
                     f"{h['steps']} | {h['first_loss']:.3f} | {h['last_loss']:.3f} | "
                     f"{h['mine_seconds'] + h['train_seconds']:.0f} |")
    L += ["", f"Timings (s): {json.dumps(res['timings'])}", ""]
    return "\n".join(L)


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="smoke: < 10 min on 2 idle cores")
    g.add_argument("--full", action="store_true", help="the documented run (≤ 45 min on 2 idle cores)")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--skip-udr-train", action="store_true", help="reuse OUTPUT/udr_retriever")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    torch.set_num_threads(args.threads)
    out = args.output or REPO / "runs" / f"udr_real_{mode.name}"
    out.mkdir(parents=True, exist_ok=True)

    from instructmt.config import DataConfig
    from instructmt.models.loading import load_pretrained
    from instructmt.retrieval.scorer import LMScorer
    from instructmt.retrieval.train import UDRTrainConfig, train_udr
    from instructmt.training.task_setup import resolve_tasks

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    res = {"mode": mode.name, "machine": f"CPU {platform.machine()}, 2 cores shared with other jobs, "
           f"{args.threads} torch thread(s)", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commit": commit, "command": "python scripts/udr_report.py " + " ".join(argv), "settings": asdict(mode),
           "timings": {}}
    split = resolve_tasks(DataConfig(tasks=[str(REPO / "tasks" / "sample")]))
    seen_pool = [dataclasses.replace(t, instances=list(t.instances)[:mode.pool_per_task]) for t in split.seen]
    held = [dataclasses.replace(t, instances=list(t.instances)[:mode.pool_per_task]) for t in split.held_out]
    res["held_out_tasks"], res["seen_tasks"] = [t.name for t in held], len(seen_pool)

    model, tok = load_pretrained(MODEL)[:2]
    model.eval()
    scorer = LMScorer(model, tok, "causal", batch_size=16, max_source_length=mode.max_source_length,
                      max_target_length=32)
    retriever_dir = out / "udr_retriever"
    t0 = time.time()
    if not args.skip_udr_train:
        ucfg = UDRTrainConfig(encoder="all-MiniLM-L6-v2", num_candidates=mode.num_candidates, list_size=8,
                              iterations=mode.iterations, epochs_per_iteration=mode.epochs,
                              batch_size=mode.udr_batch, lr=mode.udr_lr, max_queries_per_task=mode.queries_per_task,
                              max_length=mode.encoder_max_length, seed=0)
        print(f"[udr] training the retriever on {len(seen_pool)} seen tasks with SmolLM2 feedback", flush=True)
        res["udr_history"] = train_udr(seen_pool, scorer, ucfg, output_dir=retriever_dir, progress=False).history
        print(f"[udr] history: {json.dumps(res['udr_history'])}", flush=True)
    res["timings"]["udr_train_s"] = round(time.time() - t0, 1)

    def save():  # after every row: a run cut short still leaves its finished rows
        (out / "udr_real.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        (out / "udr_real.md").write_text(markdown(res), encoding="utf-8")

    def run_block(tasks, pool_tasks, instances, ks, tag):
        rows = res.setdefault(tag, [])
        for k in ks:
            for name in SELECTORS:
                if name == "none" and k != ks[0]:
                    continue  # zero demonstrations do not depend on k
                r = evaluate_setting(model, tok, scorer, tasks, pool_tasks, instances, name, k, mode,
                                     out / "eval" / tag / f"{name}_k{k}", retriever_dir)
                print(f"[udr] {tag} {name} k={k}: EM {r['exact_match']:.1f} R-L {r['rougeL']:.1f} "
                      f"loglik {r['gold_loglik']:.3f} ({r['seconds']} s)", flush=True)
                rows.append(r)
                with_intervals(rows, mode)
                save()
        return rows

    t0 = time.time()
    held_insts = {t.name: list(t.instances)[:mode.eval_per_task] for t in held}
    res["held_out"] = run_block(held, held, held_insts, mode.ks, "held_out")
    res["timings"]["held_out_eval_s"] = round(time.time() - t0, 1)
    if mode.indomain_ks:
        t0 = time.time()
        by_name = {t.name: t for t in split.seen}
        in_insts = {t.name: list(by_name[t.name].instances)[-mode.holdback:] for t in seen_pool}
        res["in_domain"] = run_block(list(split.seen), seen_pool, in_insts, mode.indomain_ks, "in_domain")
        res["timings"]["in_domain_eval_s"] = round(time.time() - t0, 1)
    save()
    print(f"[udr] wrote {out / 'udr_real.md'}")
    head = next(r for r in res["held_out"] if r["selector"] == "udr" and r["k"] == mode.headline_k)
    d, lo, hi = head["rougeL_vs_bm25"]
    print(f"udr_minus_bm25_rougeL={d:.4f} ci_low={lo:.4f} ci_high={hi:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
