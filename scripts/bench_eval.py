"""Held-out evaluation throughput: our length-sorted batched generation against a naive per-example
`generate` loop and against the same batches without sorting.

    python scripts/bench_eval.py --quick        # CPU, tiny T5, about a minute on an idle 2-core CPU
    python scripts/bench_eval.py                # all held-out instances, 3 repeats

Same model (tiny T5, random init, built once), same prompts (the held-out tasks' instances rendered
with def+pos2 exactly as `instructmt.evaluation.runner.evaluate_tasks` does), greedy decoding with
the same `max_new_tokens`, torch on one thread:

  ours      instructmt.evaluation.generation.generate(..., sort_by_length=True)   (batches of 16)
  unsorted  the same function with sort_by_length=False                           (batches of 16)
  naive     for each prompt: model.generate(one prompt)

The three are interleaved in rotating order for `--repeats` rounds and the median time is kept;
with a single round (the default of `--quick --model`) the first system is timed again after the
others and its two times averaged, so a drift of the machine's speed during the round weighs on
both sides of each ratio.
Times are the process's CPU time (wall time on a CPU shared with other jobs mostly measures the
other jobs); wall times are printed beside them. A random-init model rarely emits EOS, so most
outputs run to max_new_tokens: the decoding work per prompt is about the same in all three.
The agreement of the batched predictions with the naive ones is printed as a correctness check.

The last line printed is exactly `eval_speedup_vs_naive=<naive time / ours time>`.

With `--model smollm2-135m` (the real causal LM, fp32, chat template on) the systems are

  ours        instructmt.evaluation.generation.generate: prompts grouped by their shared prefix
              (task definition + demonstrations; the system turn common to all tasks once), each
              prefix prefilled and kept once, prefills packed across tasks (no padding, <= 2048
              tokens per forward), rows of several tasks decoded together (up to 64) with
              attention over the single prefix copy, a row dropped once it emitted EOS
  hf_batched  model.generate on batches of 16 in input order (left padding, KV cache, EOS stop)
  naive       for each prompt: model.generate(one prompt)

and the last line is `eval_speedup_vs_naive=<x> eval_speedup_vs_hf_batched=<y>`. Greedy decoding
everywhere; the agreement of each batched system's predictions with the naive loop is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNI_DIR = REPO.parent / "shared" / "data" / "sni"
SYSTEMS = ("ours", "unsorted", "naive")
MODEL_SYSTEMS = ("ours", "hf_batched", "naive")


def held_out_split():
    """(task split, description): the shared SNI sample's test tasks when present, else the bundled ones."""
    from instructmt.config import DataConfig
    from instructmt.training.task_setup import resolve_tasks

    if (SNI_DIR / "tasks").is_dir():
        data = DataConfig(tasks=[str(SNI_DIR / "tasks")], split_dir=str(SNI_DIR / "splits"))
        return resolve_tasks(data), "SNI sample held-out (test) tasks, /work/shared/data/sni"
    return resolve_tasks(DataConfig(tasks=[str(REPO / "tasks" / "sample")])), "bundled tasks/sample held-out tasks"


def load_model_prompts(args):
    """The real model and its held-out prompts, encoded as `instructmt eval` encodes them."""
    from instructmt.data.tokenize import source_length_fn
    from instructmt.evaluation.runner import build_items, encode_items
    from instructmt.models.loading import load_pretrained
    from instructmt.prompts.render import PromptRenderer

    split, desc = held_out_split()
    model, tok, kind = load_pretrained(args.model)
    model.eval()
    renderer = PromptRenderer(args.encoding, length_fn=source_length_fn(tok), max_source_length=args.max_source_length)
    tasks = split.held_out[:args.max_tasks] if args.max_tasks else split.held_out
    items = build_items(tasks, renderer, max_instances=args.max_instances)
    ids = encode_items(items, tok, kind=kind, encoding=args.encoding, max_source_length=args.max_source_length,
                       max_new_tokens=args.max_new_tokens, use_chat_template=args.chat_template)
    return model, tok, kind, ids, desc + (", chat template" if args.chat_template else "")


def hf_batched_generate(model, tok, source_ids, batch_size: int, max_new_tokens: int) -> list[str]:
    """transformers' batched generate as a user would call it: batches in input order, left padding."""
    from instructmt.data.collator import pad_sequences as _pad
    out = []
    with torch.no_grad():
        for s in range(0, len(source_ids), batch_size):
            seqs = [list(x) for x in source_ids[s:s + batch_size]]
            x = _pad(seqs, tok.pad_token_id, left=True)
            mask = _pad([[1] * len(q) for q in seqs], 0, left=True)
            y = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                               num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out += [t.strip() for t in tok.batch_decode(y[:, x.shape[1]:], skip_special_tokens=True)]
    return out


def load_prompts(args):
    """(model, tokenizer, kind, prompt token ids, data description)."""
    from instructmt.data.tokenize import EncodeSpec, encode_sources, source_length_fn
    from instructmt.evaluation.runner import build_items
    from instructmt.models.tiny import build_tiny
    from instructmt.prompts.render import PromptRenderer
    from instructmt.training.task_setup import tokenizer_corpus

    split, desc = held_out_split()
    model, tok = build_tiny("seq2seq", tokenizer_corpus(split), vocab_size=args.vocab_size,
                            d_model=args.d_model, layers=args.layers, seed=args.seed)
    renderer = PromptRenderer(args.encoding, length_fn=source_length_fn(tok),
                              max_source_length=args.max_source_length)
    items = build_items(split.held_out, renderer, max_instances=args.max_instances)
    spec = EncodeSpec("seq2seq", args.encoding, args.max_source_length, args.max_new_tokens)
    return model, tok, "seq2seq", encode_sources([it.prompt for it in items], tok, spec), desc


def naive_generate(model, tok, source_ids, max_new_tokens: int) -> list[str]:
    out = []
    model.eval()
    with torch.no_grad():
        for ids in source_ids:
            x = torch.tensor([list(ids)], dtype=torch.long)
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id)
            y = y[0, x.shape[1]:] if not model.config.is_encoder_decoder else y[0]
            out.append(tok.decode(y, skip_special_tokens=True).strip())
    return out


def run_system(name: str, model, tok, kind, source_ids, args) -> tuple[list[str], float, float]:
    from instructmt.evaluation.generation import generate

    w0, c0 = time.perf_counter(), time.process_time()
    if name == "naive":
        preds = naive_generate(model, tok, source_ids, args.max_new_tokens)
    elif name == "hf_batched":
        preds = hf_batched_generate(model, tok, source_ids, args.batch_size, args.max_new_tokens)
    else:
        preds = generate(model, tok, kind, source_ids, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, sort_by_length=name == "ours",
                         show_progress=False)
    return preds, time.process_time() - c0, time.perf_counter() - w0


def padding_fraction(source_ids, batch_size: int, sort: bool) -> float:
    order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]), reverse=True) if sort \
        else list(range(len(source_ids)))
    real = padded = 0
    for s in range(0, len(order), batch_size):
        lens = [len(source_ids[i]) for i in order[s:s + batch_size]]
        real += sum(lens)
        padded += max(lens) * len(lens)
    return 1 - real / padded


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 instances per held-out task, 2 repeats (1 with --model)")
    p.add_argument("--model", default=None,
                   help="a real causal LM (e.g. smollm2-135m): ours vs HF batched generate vs a naive loop")
    p.add_argument("--max-tasks", type=int, default=None,
                   help="first N held-out tasks only (default: all; 8 with --quick --model)")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the tokenizer's chat template (default: on with --model)")
    p.add_argument("--max-instances", type=int, default=None, help="per held-out task (default 5 quick / 15)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 2 quick / 3)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-source-length", type=int, default=512)
    p.add_argument("--encoding", default="def+pos2")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)
    args.max_instances = args.max_instances or (5 if args.quick else 15)
    args.repeats = args.repeats or (2 if args.quick and not args.model else 1 if args.quick else 3)
    args.chat_template = bool(args.model) if args.chat_template is None else args.chat_template
    if args.model and args.quick and args.max_tasks is None:
        args.max_tasks = 8  # 40 prompts: a few CPU minutes for the three systems
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    model, tok, kind, source_ids, desc = load_model_prompts(args) if args.model else load_prompts(args)
    systems = MODEL_SYSTEMS if args.model else SYSTEMS
    other = systems[1]
    lens = [len(x) for x in source_ids]
    print(f"[bench_eval] {desc}: {len(source_ids)} prompts, length min {min(lens)} median "
          f"{statistics.median(lens):.0f} max {max(lens)}; batch {args.batch_size}, greedy, "
          f"max_new_tokens {args.max_new_tokens}; {args.repeats} rounds", flush=True)
    times: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    preds: dict[str, list[str]] = {}
    if args.model:  # untimed warm-up: the first call of each path pays imports and first-kernel costs
        warm = argparse.Namespace(**{**vars(args), "max_new_tokens": 2})
        for name in systems:
            run_system(name, model, tok, kind, source_ids[:2], warm)
    for rep in range(args.repeats):
        order = systems[rep % 3:] + systems[:rep % 3]  # rotate: nobody always runs first
        for name in order:
            p, cpu, wall = run_system(name, model, tok, kind, source_ids, args)
            preds[name] = p
            times[name].append((cpu, wall))
            print(f"[bench_eval] round {rep + 1} {name:10s}: cpu {cpu:6.1f} s  wall {wall:6.1f} s", flush=True)
    if args.repeats == 1:
        # one round runs the first system first: time it once more at the end, so that a drift of
        # the machine's speed during the round (on this shared VM the CPU time of the same work
        # moved by up to ~55% between runs, docs/benchmarks.md) weighs on both sides of each
        # ratio; its median is then the mean of the two
        p, c, w = run_system(systems[0], model, tok, kind, source_ids, args)
        assert p == preds[systems[0]], "the same system gave different outputs twice"
        times[systems[0]].append((c, w))
        print(f"[bench_eval] closing {systems[0]:8s}: cpu {c:6.1f} s  wall {w:6.1f} s", flush=True)
    cpu = {s: statistics.median(c for c, _ in times[s]) for s in systems}
    wall = {s: statistics.median(w for _, w in times[s]) for s in systems}
    n = len(source_ids)
    agree = {s: sum(a == b for a, b in zip(preds[s], preds["naive"])) / n for s in systems if s != "naive"}
    pad = {"ours": padding_fraction(source_ids, args.batch_size, True),
           other: padding_fraction(source_ids, args.batch_size, False), "naive": 0.0}
    if args.model:  # ours prefills only the suffix after each task's shared prefix
        from instructmt.evaluation.prefix_generation import group_by_prefix
        from instructmt.evaluation.shared_prefix_attention import supports_shared_prefix_attention
        from instructmt.evaluation.shared_prefix_generation import MIN_ROOT, common_root
        groups = group_by_prefix(source_ids)
        prefilled = sum(len(g.prefix) + sum(len(source_ids[i]) - len(g.prefix) for i in g.members) for g in groups)
        if supports_shared_prefix_attention(model):
            pad["ours"] = 0.0  # prompts are packed into one sequence per forward, not padded
            with_prefix = [list(g.prefix) for g in groups if g.prefix]  # their common root is prefilled once
            prefilled -= len(common_root(with_prefix, MIN_ROOT)) * (len(with_prefix) - 1)
        print(f"[bench_eval] prompt tokens prefilled: ours {prefilled}, the others {sum(lens)} "
              f"({prefilled / sum(lens):.0%})")
    print("\n| system | prompts/s (cpu time) | prompts/s (wall) | source padding | speed-up vs naive (cpu) "
          "| same output as naive |\n|---|---|---|---|---|---|")
    for s in systems:
        print(f"| {s} | {n / cpu[s]:.2f} | {n / wall[s]:.2f} | {100 * pad[s]:.1f}% | {cpu['naive'] / cpu[s]:.2f}x "
              f"| {'-' if s == 'naive' else f'{100 * agree[s]:.0f}%'} |")
    speedup = cpu["naive"] / cpu["ours"]
    differ = [i for i in range(n) if preds["ours"][i] != preds["naive"][i]]
    for i in differ[:5]:
        print(f"[bench_eval] differs from naive at prompt {i}: ours {preds['ours'][i]!r} naive {preds['naive'][i]!r}")
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "data": desc, "n_prompts": n,
              "args": vars(args), "times_cpu_wall": times, "median_cpu_s": cpu, "median_wall_s": wall,
              "source_padding": pad, "agreement_with_naive": agree,
              "speedup_vs_naive": speedup, f"speedup_vs_{other}": cpu[other] / cpu["ours"],
              "elapsed_s": time.time() - t_start}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\n[bench_eval] ours vs {other}: {cpu[other] / cpu['ours']:.2f}x (cpu time); "
          f"done in {time.time() - t_start:.0f} s")
    if args.model:
        print(f"eval_speedup_vs_naive={speedup:.3f} eval_speedup_vs_hf_batched={cpu[other] / cpu['ours']:.3f}")
    else:
        print(f"eval_speedup_vs_naive={speedup:.3f}")
    return report


if __name__ == "__main__":
    main()
