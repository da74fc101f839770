"""Tokenization cache: time of the first `tokenize_pairs` call (render every prompt, tokenize, save
arrow files) against a second call with the same inputs (hash the inputs, `load_from_disk`).

    python scripts/bench_tokenize_cache.py --quick
    python scripts/bench_tokenize_cache.py

Data: every instance of every task of the SNI sample (/work/shared/data/sni, when present) and of
the bundled tasks/sample and tasks/families, rendered with def+pos2 (max source 1024), tokenized by
a locally trained sentencepiece tokenizer (vocab 1000). Each round uses a fresh cache directory:
miss, then hit. Times are wall time and process CPU time, medians over the rounds.

The last line printed is exactly `tokenize_cache_speedup=<first call / second call (cpu time)>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNI_TASKS = REPO.parent / "shared" / "data" / "sni" / "tasks"


def load_pairs(quick: bool):
    from instructmt.tasks.registry import load_path

    sources = [REPO / "tasks" / "sample", REPO / "tasks" / "families"]
    if SNI_TASKS.is_dir():
        sources.insert(0, SNI_TASKS)
    tasks = [t for src in sources for t in load_path(str(src))]
    per_task = 5 if quick else None
    pairs = [(t, i) for t in tasks for i in (t.instances[:per_task] if per_task else t.instances)]
    return tasks, pairs, [str(s.relative_to(REPO.parent)) if s.is_relative_to(REPO.parent) else str(s)
                          for s in sources]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5 instances per task, 2 rounds")
    p.add_argument("--rounds", type=int, default=None, help="default 2 quick / 3")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)

    from instructmt.data.tokenize import EncodeSpec, tokenize_pairs
    from instructmt.models.tiny import build_tokenizer

    tasks, pairs, sources = load_pairs(args.quick)
    texts = [t.definition for t in tasks] + [i.input for _, i in pairs] + [o for _, i in pairs for o in i.outputs]
    tok = build_tokenizer(texts, vocab_size=1000)
    spec = EncodeSpec("seq2seq", "def+pos2", 1024, 128)
    print(f"[bench_tokenize_cache] {len(pairs)} instances of {len(tasks)} tasks ({', '.join(sources)}); "
          f"{rounds} rounds", flush=True)
    rows = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory(prefix="instructmt-tokcache-") as cache:
            first, w1, c1 = timed(lambda: tokenize_pairs(pairs, tok, spec, cache_dir=cache))
            second, w2, c2 = timed(lambda: tokenize_pairs(pairs, tok, spec, cache_dir=cache))
            same = first["source_ids"] == second["source_ids"] and first["target_ids"] == second["target_ids"]
            n_tokens = sum(len(x) for x in first["source_ids"])
        rows.append({"miss_wall_s": w1, "miss_cpu_s": c1, "hit_wall_s": w2, "hit_cpu_s": c2, "identical": same})
        print(f"[bench_tokenize_cache] round {r + 1}: first call {w1:.2f} s wall / {c1:.2f} s cpu, "
              f"second {w2:.2f} s / {c2:.2f} s, identical={same}", flush=True)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0] if k != "identical"}
    speedup = med["miss_cpu_s"] / med["hit_cpu_s"]
    print("\n| call | wall (s) | cpu (s) |\n|---|---|---|")
    print(f"| first (render + tokenize + save) | {med['miss_wall_s']:.2f} | {med['miss_cpu_s']:.2f} |")
    print(f"| second (hash + load_from_disk) | {med['hit_wall_s']:.2f} | {med['hit_cpu_s']:.2f} |")
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "instances": len(pairs),
              "tasks": len(tasks), "source_tokens": n_tokens, "sources": sources, "rounds": rows,
              "median": med, "speedup_cpu": speedup, "speedup_wall": med["miss_wall_s"] / med["hit_wall_s"],
              "all_identical": all(r["identical"] for r in rows)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\n[bench_tokenize_cache] {n_tokens} source tokens; results identical: {report['all_identical']}")
    print(f"tokenize_cache_speedup={speedup:.2f}")
    return report


if __name__ == "__main__":
    main()
