#!/usr/bin/env python3
"""Benchmark the demonstration index: build time and single-query latency (p50/p99) at 10k and
100k candidates, against brute-force numpy (matrix-vector product + argpartition) in the same run.

Embeddings are SYNTHETIC (dim 384, like all-MiniLM-L6-v2): unit vectors drawn around random
cluster centres, so IVF sees clustered data as it would with real sentence embeddings. Ours is
`instructmt.retrieval.index.DemoIndex`: FAISS flat inner product at 10k, IVF (nlist = sqrt(N),
nprobe 16) at 100k (above its 50k threshold). Single queries run on one thread on both sides
(FAISS OpenMP inside DemoIndex; numpy BLAS via threadpoolctl). Recall@k of ours against the exact numpy top-k is
reported too, since IVF is approximate. Also timed: a search restricted to one task's range.

    python scripts/bench_retrieval.py [--queries 300] [--k 10] [--json out.json]

The last line printed is exactly `p50_ms_100k=<ours> brute_p50_ms_100k=<numpy>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # then numpy keeps its default BLAS threads (the table says which)
    from contextlib import nullcontext

    def threadpool_limits(_n):
        return nullcontext()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructmt.retrieval.index import DEFAULT_IVF_THRESHOLD, DemoIndex  # noqa: E402

DIM = 384


def synthetic_embeddings(n: int, rng: np.random.Generator, clusters: int = 256, noise: float = 0.6
                         ) -> np.ndarray:
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def brute_topk(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = emb @ q
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def percentiles(times_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(times_s) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench_size(n: int, n_queries: int, k: int, rng: np.random.Generator) -> dict:
    emb = synthetic_embeddings(n, rng)
    queries = synthetic_embeddings(n_queries, rng)

    t0 = time.perf_counter()
    index = DemoIndex.build(emb, ivf_threshold=DEFAULT_IVF_THRESHOLD)
    build_s = time.perf_counter() - t0

    ours_t, brute_t, range_t, recalls = [], [], [], []
    lo, hi = n // 2, n // 2 + 1000  # one task's slice of the pool
    for i in range(n_queries + 5):
        q = queries[i % n_queries]
        t = time.perf_counter()
        _, ids = index.search(q[None, :], k)
        dt_ours = time.perf_counter() - t
        with threadpool_limits(1):  # same footing as ours: one thread for a single query
            t = time.perf_counter()
            exact = brute_topk(emb, q, k)
            dt_brute = time.perf_counter() - t
        t = time.perf_counter()
        index.search(q[None, :], k, id_range=(lo, hi))
        dt_range = time.perf_counter() - t
        if i < 5:  # warm-up
            continue
        ours_t.append(dt_ours)
        brute_t.append(dt_brute)
        range_t.append(dt_range)
        recalls.append(len(set(ids[0].tolist()) & set(exact.tolist())) / k)
    p50, p99 = percentiles(ours_t)
    b50, b99 = percentiles(brute_t)
    r50, r99 = percentiles(range_t)
    return {"n": n, "index": index.kind, "build_s": round(build_s, 3), "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3), "brute_p50_ms": round(b50, 3), "brute_p99_ms": round(b99, 3),
            "task_range_p50_ms": round(r50, 3), "task_range_p99_ms": round(r99, 3),
            f"recall@{k}": round(float(np.mean(recalls)), 4), "queries": n_queries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    import faiss

    rng = np.random.default_rng(args.seed)
    machine = f"CPU, {os.cpu_count()} cores ({platform.machine()}), faiss {faiss.__version__}, " \
              f"{faiss.omp_get_max_threads()} OpenMP threads"
    rows = [bench_size(n, args.queries, args.k, rng) for n in args.sizes]
    print(f"# Retrieval index benchmark — {machine}; synthetic clustered embeddings, dim {DIM}, "
          f"k={args.k}, single-query latency over {args.queries} queries\n")
    print(f"| candidates | index | build s | p50 ms | p99 ms | numpy p50 ms | numpy p99 ms | "
          f"one-task p50 ms | recall@{args.k} |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['index']} | {r['build_s']:.2f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
              f"{r['brute_p50_ms']:.3f} | {r['brute_p99_ms']:.3f} | {r['task_range_p50_ms']:.3f} | "
              f"{r[f'recall@{args.k}']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "embeddings": "synthetic", "rows": rows}, indent=2))
    big = next((r for r in rows if r["n"] == 100_000), rows[-1])
    print(f"p50_ms_100k={big['p50_ms']:.3f} brute_p50_ms_100k={big['brute_p50_ms']:.3f}")


if __name__ == "__main__":
    main()
