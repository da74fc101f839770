"""Where held-out generation spends its time: every model call of our generator on the quick
SmolLM2 eval prompts (those of `scripts/bench_eval.py --quick --model smollm2-135m`), split into
prefill and decode calls (with the cost per prompt position and per decoded row-step), against
the naive one-prompt-at-a-time loop on the first 10 prompts. CPU seconds, 1 torch thread.

With `--ops`, our generator runs once more under the torch profiler and the torch ops that took
the most time inside prefill and inside decode calls are printed (self CPU seconds): how much is
matrix products of the linear layers (`mm`), attention (`_scaled_dot_product_*`, `bmm`) and
Python between ops (the phase's own row).

    python scripts/profile_eval_calls.py [--ops]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_eval as be  # noqa: E402

PREFILL, DECODE = "prefill calls", "decode calls"


def op_breakdown(model, forward, generate) -> None:
    """Run `generate()` under the profiler, each call of `model` labelled by phase (through its
    original `forward`); print each phase's top ops by self CPU time."""
    from torch.profiler import profile, record_function

    def labelled(*a, **k):
        with record_function(PREFILL if k["input_ids"].shape[1] > 1 else DECODE):
            return forward(*a, **k)
    saved, model.forward = model.forward, labelled
    try:
        with profile() as prof:
            generate()
    finally:
        model.forward = saved
    by_phase: dict[str, collections.Counter] = {PREFILL: collections.Counter(), DECODE: collections.Counter()}
    for event in prof.events():
        parent = event
        while parent is not None and parent.name not in by_phase:
            parent = parent.cpu_parent
        if parent is not None:
            by_phase[parent.name][event.name.replace("aten::", "")] += event.self_cpu_time_total / 1e6
    for phase, ops in by_phase.items():
        top = ", ".join(f"{name} {s:.2f}" for name, s in ops.most_common(8))
        print(f"ops in {phase} ({sum(ops.values()):.1f} s; the phase's own row is Python between ops): {top}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", action="store_true", help="also print each phase's top torch ops (profiler)")
    cli = p.parse_args()
    torch.set_num_threads(1)
    args = be.parse_args(["--quick", "--model", "smollm2-135m"])
    model, tok, _, ids, _ = be.load_model_prompts(args)
    from instructmt.evaluation import prefix_generation as pg
    calls: list[tuple[tuple[int, ...], float]] = []
    forward = model.forward

    def timed(*a, **k):
        t = time.process_time()
        out = forward(*a, **k)
        calls.append((tuple(k["input_ids"].shape), time.process_time() - t))
        return out
    model.forward = timed

    def report(name: str, total: float) -> None:
        pre = [c for c in calls if c[0][1] > 1]
        dec = [c for c in calls if c[0][1] == 1]
        pre_s, dec_s = sum(d for _, d in pre), sum(d for _, d in dec)
        positions, row_steps = sum(s[0] * s[1] for s, _ in pre), sum(s[0] for s, _ in dec)
        print(f"{name}: {total:.1f} cpu s; prefill {len(pre)} calls {pre_s:.1f} s ({positions} positions, "
              f"{1000 * pre_s / max(positions, 1):.1f} ms each); decode {len(dec)} calls {dec_s:.1f} s "
              f"({row_steps} row-steps, {1000 * dec_s / max(row_steps, 1):.1f} ms each)")

    def ours():
        return pg.generate_causal(model, tok, ids, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)

    t = time.process_time()
    ours()
    report(f"ours, {len(ids)} prompts", time.process_time() - t)
    calls.clear()
    t = time.process_time()
    be.naive_generate(model, tok, ids[:10], args.max_new_tokens)
    report("naive, first 10 prompts", time.process_time() - t)
    if cli.ops:
        op_breakdown(model, forward, ours)


if __name__ == "__main__":
    main()
