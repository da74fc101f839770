"""Scale: a corpus shaped like the full Super-NaturalInstructions release, loaded as training does.

    python scripts/bench_scale.py --quick      # 10%-size corpus (162 task files, ~300 MB)
    python scripts/bench_scale.py              # full size: 1,616 task files, ~3 GB, ~5M instances

The corpus is synthetic (generated here, under --workdir, never committed): SNI task JSON with the
release's shape: file sizes follow a log-normal fitted to the release (1,616 files, ~3 GB, the
largest ~125 MB; `--quick` keeps the distribution and takes every 10th file), instances of ~600
bytes, a definition, two positive and one negative example per task, and split files listing 757
English training tasks and 119 test tasks (76 / 12 with --quick). Each stage runs in a fresh
subprocess so its peak RSS is its own:

  validate        `instructmt tasks validate DIR` (every file, every instance)
  load_tokenize   resolve_tasks as `instructmt train` calls it (only the files the split lists name,
                  only the instances the run takes, through the parsed-task cache) + Mixture (<= 100
                  instances per task) + render and tokenize every training example with SmolLM2's
                  tokenizer, both caches emptied first (cold; the OS file cache stays warm)
  cached          the same again: parsed tasks and tokenized arrow files are reused

Times are wall seconds on this machine (2 cores, shared: see the load printed) and CPU seconds.
The last line is exactly `load_tokenize_s=<x> cached_s=<y> peak_mb=<z>` (z: the larger peak RSS of
the two load stages).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_TASKS, FULL_TRAIN, FULL_TEST = 1616, 757, 119
TOTAL_BYTES = 3.0e9
SIGMA = 1.8  # log-normal spread of file sizes: the largest file ~40x the mean, as in the release
WORDS = ("the a of to and in is was for on that with as by at from his her an which or be this are "
         "people city river music team government history water school film year study report "
         "question answer sentence passage review product story event number market energy").split()


def _inv_norm(p: float) -> float:
    """Standard normal quantile (Acklam's rational approximation; plenty for file sizes)."""
    a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00]
    b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - 0.02425:
        return -_inv_norm(1 - p)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def file_sizes(n: int = FULL_TASKS, total: float = TOTAL_BYTES) -> list[int]:
    """Deterministic log-normal quantiles scaled to `total` bytes, in a shuffled order."""
    raw = [math.exp(SIGMA * _inv_norm((i + 0.5) / n)) for i in range(n)]
    scale = total / sum(raw)
    sizes = [max(20_000, int(r * scale)) for r in raw]
    random.Random(0).shuffle(sizes)
    return sizes


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def write_task(path: Path, name: str, size: int, rng: random.Random) -> int:
    """One SNI task file of about `size` bytes; returns its number of instances."""
    pool = [_sentence(rng, rng.randint(8, 30)) for _ in range(200)]
    head = {"Contributors": ["synthetic"], "Source": ["synthetic"], "URL": ["-"],
            "Categories": [rng.choice(["Question Answering", "Sentiment Analysis", "Summarization",
                                       "Text Categorization", "Title Generation"])],
            "Reasoning": [], "Definition": [" ".join(rng.choice(pool) for _ in range(4))],
            "Input_language": ["English"], "Output_language": ["English"], "Instruction_language": ["English"],
            "Domains": ["Wikipedia"],
            "Positive Examples": [{"input": " ".join(rng.choice(pool) for _ in range(3)), "output": rng.choice(WORDS),
                                   "explanation": rng.choice(pool)} for _ in range(2)],
            "Negative Examples": [{"input": rng.choice(pool), "output": rng.choice(WORDS),
                                   "explanation": rng.choice(pool)}]}
    parts = [json.dumps(head, ensure_ascii=False)[:-1], ', "Instances": [']
    written, k = sum(len(p) for p in parts), 0
    while written < size or k == 0:
        inst = json.dumps({"id": f"{name}-{k:07d}", "input": " ".join(rng.choice(pool) for _ in range(5)),
                           "output": [rng.choice(WORDS)]})
        parts.append(("," if k else "") + inst)
        written += len(inst) + 1
        k += 1
    parts.append('], "Instance License": ["Unknown"]}')
    path.write_text("".join(parts), encoding="utf-8")
    return k


def build_corpus(root: Path, quick: bool) -> dict:
    """Write the corpus (once; reused while its manifest matches)."""
    sizes = file_sizes()
    keep = range(0, FULL_TASKS, 10) if quick else range(FULL_TASKS)
    manifest = root / "manifest.json"
    want = {"quick": quick, "files": len(keep), "version": 1}
    if manifest.exists() and json.loads(manifest.read_text()).get("spec") == want:
        return json.loads(manifest.read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "tasks").mkdir(parents=True)
    (root / "splits").mkdir()
    names, total_inst, total_bytes = [], 0, 0
    t = time.time()
    for i in keep:
        name = f"task{i:04d}_synthetic_{WORDS[i % len(WORDS)]}"
        n = write_task(root / "tasks" / f"{name}.json", name, sizes[i], random.Random(i))
        names.append(name)
        total_inst += n
        total_bytes += (root / "tasks" / f"{name}.json").stat().st_size
    rng = random.Random(1)
    order = names[:]
    rng.shuffle(order)
    n_train = round(FULL_TRAIN * len(names) / FULL_TASKS)
    n_test = round(FULL_TEST * len(names) / FULL_TASKS)
    (root / "splits" / "train_tasks.txt").write_text("\n".join(sorted(order[:n_train])) + "\n")
    (root / "splits" / "test_tasks.txt").write_text("\n".join(sorted(order[n_train:n_train + n_test])) + "\n")
    info = {"spec": want, "task_files": len(names), "train_tasks": n_train, "test_tasks": n_test,
            "instances": total_inst, "bytes": total_bytes,
            "largest_mb": max(sizes[i] for i in keep) / 1e6, "write_s": time.time() - t}
    manifest.write_text(json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------- stages (child side)

def stage_load_tokenize(root: Path, cache: Path, max_instances: int) -> dict:
    from instructmt.config import DataConfig
    from instructmt.data.mixture import Mixture
    from instructmt.data.tokenize import EncodeSpec, tokenize_pairs
    from instructmt.models.loading import load_pretrained
    from instructmt.models.presets import resolve_model_reference
    from instructmt.training.task_setup import resolve_tasks, training_scope

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(resolve_model_reference("smollm2-135m").path)
    del load_pretrained
    out = {}
    t = time.perf_counter()
    data = DataConfig(tasks=[str(root / "tasks")], split_dir=str(root / "splits"), max_instances_per_task=max_instances,
                      max_source_length=1024, max_target_length=128)
    split = resolve_tasks(data, training_scope(data, cache_dir=cache))  # what `instructmt train` reads
    out["load_s"] = time.perf_counter() - t
    out["rss_after_load_mb"] = _rss_mb()
    t = time.perf_counter()
    mixture = Mixture.from_tasks(split.seen, max_instances=max_instances, seed=42)
    by_name = {x.name: x for x in split.seen}
    pairs = [(by_name[n], inst) for n, insts in mixture.instances.items() for inst in insts]
    out["mixture_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ds = tokenize_pairs(pairs, tok, EncodeSpec("causal", "def+pos2", 1024, 128), cache_dir=cache)
    out["tokenize_s"] = time.perf_counter() - t
    out.update(seen_tasks=len(split.seen), examples=len(ds), held_out_tasks=len(split.held_out))
    return out


def stage_validate(root: Path) -> dict:
    from instructmt.cli import main as cli_main
    t = time.perf_counter()
    try:
        rc = cli_main(["tasks", "validate", str(root / "tasks")])
    except SystemExit as e:
        rc = e.code
    return {"validate_s": time.perf_counter() - t, "exit": rc}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_stage(stage: str, args) -> dict:
    """Run one stage in a fresh process: wall, CPU and peak RSS of that process alone."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--workdir", str(args.workdir),
           "--max-instances", str(args.max_instances)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
               PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO))
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10%%-size corpus (every 10th task file)")
    p.add_argument("--max-instances", type=int, default=100, help="training instances per task")
    p.add_argument("--workdir", default=None,
                   help="where the corpus and caches live (default $INSTRUCTMT_CACHE/bench_scale)")
    p.add_argument("--skip-validate", action="store_true", help="do not time `tasks validate`")
    p.add_argument("--stage", choices=["validate", "cold", "cached"], help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)
    base = Path(os.environ.get("INSTRUCTMT_CACHE", Path.home() / ".cache" / "instructmt"))
    args.workdir = Path(args.workdir) if args.workdir else base / "bench_scale"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    root = args.workdir / ("corpus-quick" if args.quick else "corpus-full")
    cache = args.workdir / ("cache-quick" if args.quick else "cache-full")
    if args.stage:  # child
        c0 = time.process_time()
        if args.stage == "validate":
            res = stage_validate(root)
        else:
            if args.stage == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            res = stage_load_tokenize(root, cache, args.max_instances)
        res["cpu_s"] = time.process_time() - c0
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return res
    t0 = time.time()
    print(f"[bench_scale] load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    info = build_corpus(root, args.quick)
    print(f"[bench_scale] corpus {root}: {info['task_files']} task files, {info['bytes'] / 1e9:.2f} GB, "
          f"{info['instances']:,} instances, largest {info['largest_mb']:.0f} MB; {info['train_tasks']} training "
          f"/ {info['test_tasks']} test tasks", flush=True)
    results = {}
    for stage in ([] if args.skip_validate else ["validate"]) + ["cold", "cached"]:
        results[stage] = r = run_stage(stage, args)
        print(f"[bench_scale] {stage:8s}: wall {r['wall_s']:6.1f} s, cpu {r['cpu_s']:6.1f} s, peak RSS "
              f"{r['peak_rss_mb']:6.0f} MB  " + json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                                           for k, v in r.items()
                                                           if k not in ("wall_s", "cpu_s", "peak_rss_mb")}),
              flush=True)
    peak = max(results[s]["peak_rss_mb"] for s in ("cold", "cached"))
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "corpus": info,
              "results": results, "load_average_end": os.getloadavg()[0], "elapsed_s": time.time() - t0}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"[bench_scale] done in {time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"load_tokenize_s={results['cold']['wall_s']:.1f} cached_s={results['cached']['wall_s']:.1f} "
          f"peak_mb={peak:.0f}")
    return report


if __name__ == "__main__":
    main()
