"""Where held-out generation spends its time: every model call of our generator on the quick
SmolLM2 eval prompts (those of `scripts/bench_eval.py --quick --model smollm2-135m`), split into
prefill and decode calls (with the cost per prompt position and per decoded row-step), against
the naive one-prompt-at-a-time loop on the first 10 prompts. CPU seconds, 1 torch thread.

    python scripts/profile_eval_calls.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_eval as be  # noqa: E402


def main() -> None:
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

    t = time.process_time()
    pg.generate_causal(model, tok, ids, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    report(f"ours, {len(ids)} prompts", time.process_time() - t)
    calls.clear()
    t = time.process_time()
    be.naive_generate(model, tok, ids[:10], args.max_new_tokens)
    report("naive, first 10 prompts", time.process_time() - t)


if __name__ == "__main__":
    main()
