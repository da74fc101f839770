"""scripts/bench_scale.py writes a corpus of the SNI release's shape that our loaders read."""

from __future__ import annotations

import importlib.util
import random


def _bench(repo):
    spec = importlib.util.spec_from_file_location("_bench_scale", repo / "scripts" / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_file_sizes_have_the_release_shape(repo):
    sizes = _bench(repo).file_sizes()
    assert len(sizes) == 1616
    assert 2.9e9 < sum(sizes) < 3.1e9
    assert max(sizes) > 100e6 and sorted(sizes)[len(sizes) // 2] < 1e6


def test_written_task_loads(repo, tmp_path):
    from instructmt.tasks.registry import load_path
    bench = _bench(repo)
    n = bench.write_task(tmp_path / "task0007_synthetic_x.json", "task0007_synthetic_x", 30_000, random.Random(0))
    (task,) = load_path(tmp_path)
    assert task.name == "task0007_synthetic_x" and len(task.instances) == n > 10
    assert len(task.positive_examples) == 2 and task.definition
