"""The demonstration pool, its FAISS index, and the saved retriever (encoder + pool + index).

The pool keeps each task's items contiguous, so restricting a search to one task is a FAISS
`IDSelectorRange` on [lo, hi) — one index serves every task. Flat inner product up to
`ivf_threshold` items, IVF (inner product) above it.

Saved layout (`Retriever.save(dir)`):
    dir/encoder/          encoder weights (safetensors), tokenizer, encoder_config.json
    dir/pool.jsonl        one {task, id, input, output, prefix} per line, in index order
    dir/index.faiss       the FAISS index over the pool's candidate embeddings
    dir/retriever.json    format version, index kind, tasks, training record
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..io_safety import atomic_write_text
from ..errors import ConfigError
from ..tasks.schema import Task
from .encoder import BiEncoder, format_candidate, format_query, task_prefix

RETRIEVER_META = "retriever.json"
FORMAT_VERSION = 1
DEFAULT_IVF_THRESHOLD = 50_000


@dataclass
class PoolItem:
    task: str
    id: str
    input: str
    output: str
    prefix: str = ""

    @property
    def query_text(self) -> str:
        return format_query(self.prefix, self.input)

    @property
    def candidate_text(self) -> str:
        return format_candidate(self.prefix, self.input, self.output)


def task_pool_items(task: Task, *, include_examples: bool = True, prefix: str | None = None,
                    max_items: int | None = None) -> list[PoolItem]:
    """A task's demonstration pool: its instances (first reference as the output) and, optionally,
    its positive examples (ids `TASK/pos{i}`)."""
    pre = task_prefix(task) if prefix is None else prefix
    items = [PoolItem(task.name, inst.id, inst.input, inst.outputs[0] if inst.outputs else "", pre)
             for inst in task.instances]
    if max_items is not None:
        items = items[:max_items]
    if include_examples:
        items += [PoolItem(task.name, f"{task.name}/pos{i}", ex.input, ex.output, pre)
                  for i, ex in enumerate(task.positive_examples, 1)]
    return items


@dataclass
class DemoPool:
    items: list[PoolItem] = field(default_factory=list)
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_task_items(self, items: Sequence[PoolItem]) -> tuple[int, int]:
        if not items:
            raise ConfigError("cannot add an empty task pool")
        name = items[0].task
        if name in self.ranges:
            raise ConfigError(f"task {name!r} is already in the demonstration pool")
        lo = len(self.items)
        self.items.extend(items)
        self.ranges[name] = (lo, len(self.items))
        return self.ranges[name]

    @classmethod
    def from_tasks(cls, tasks: Iterable[Task], **kw) -> "DemoPool":
        pool = cls()
        for t in tasks:
            items = task_pool_items(t, **kw)
            if items:
                pool.add_task_items(items)
        return pool

    def task_range(self, name: str) -> tuple[int, int]:
        try:
            return self.ranges[name]
        except KeyError:
            raise ConfigError(f"task {name!r} is not in the demonstration pool "
                              f"({len(self.ranges)} tasks)") from None

    def __len__(self) -> int:
        return len(self.items)

    def save_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for it in self.items:
                f.write(json.dumps(asdict(it), ensure_ascii=False) + "\n")

    @classmethod
    def load_jsonl(cls, path: Path) -> "DemoPool":
        pool = cls()
        current: list[PoolItem] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    it = PoolItem(**json.loads(line))
                except (json.JSONDecodeError, TypeError) as e:
                    raise ConfigError(f"{path} line {n}: bad pool record ({e})") from None
                if current and it.task != current[0].task:
                    pool.add_task_items(current)
                    current = []
                current.append(it)
        if current:
            pool.add_task_items(current)
        return pool


class DemoIndex:
    """Inner-product FAISS index; `search(..., id_range=(lo, hi))` restricts to one task."""

    def __init__(self, index, nprobe: int = 16):
        self.index = index
        self.nprobe = nprobe

    @property
    def kind(self) -> str:
        return "ivf" if self._ivf() is not None else "flat"

    def _ivf(self):
        import faiss
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    @classmethod
    def build(cls, embeddings: np.ndarray, *, ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
              nlist: int | None = None, nprobe: int = 16, seed: int = 0) -> "DemoIndex":
        import faiss
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, d = emb.shape
        if n > ivf_threshold:
            # sqrt(N) lists keeps k-means quick on a CPU (seconds at 100k) with good recall at nprobe 16.
            nlist = nlist or max(1, int(math.sqrt(n)))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            # k-means on a sample is plenty (FAISS itself subsamples at 256 points per list).
            rng = np.random.default_rng(seed)
            sample = emb[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
            index.train(sample)
            index.add(emb)
        else:
            index = faiss.IndexFlatIP(d)
            index.add(emb)
        return cls(index, nprobe=nprobe)

    def add(self, embeddings: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, id_range: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (m, k); missing hits have id -1."""
        import faiss
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self)))
        if len(q) >= 32:
            return self._search(q, k, id_range)
        # A handful of queries: one OpenMP thread. Extra threads only spin, and on a busy CPU
        # that made a 10k flat search ~50x slower (scripts/bench_retrieval.py).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._search(q, k, id_range)
        finally:
            faiss.omp_set_num_threads(threads)

    def _search(self, q: np.ndarray, k: int, id_range: tuple[int, int] | None):
        import faiss
        ivf = self._ivf()
        sel = faiss.IDSelectorRange(int(id_range[0]), int(id_range[1])) if id_range else None
        if ivf is None:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
            return self.index.search(q, k, params=params)
        scores, ids = self.index.search(q, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe))
        want = k if id_range is None else min(k, id_range[1] - id_range[0])
        if (ids[:, :want] < 0).any():
            # A small task may not be in the probed lists: fall back to probing every list.
            scores, ids = self.index.search(q, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nlist))
        return scores, ids

    def save(self, path: Path) -> None:
        import faiss
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, nprobe: int = 16) -> "DemoIndex":
        import faiss
        if not Path(path).exists():
            raise ConfigError(f"no FAISS index at {path}")
        return cls(faiss.read_index(str(path)), nprobe=nprobe)


class Retriever:
    """A dense retriever over a demonstration pool: encoder + pool + FAISS index."""

    def __init__(self, encoder: BiEncoder, pool: DemoPool | None = None, index: DemoIndex | None = None,
                 meta: dict[str, Any] | None = None):
        self.encoder = encoder
        self.pool = pool or DemoPool()
        self.index = index
        self.meta = meta or {}

    # --- building -------------------------------------------------------------------------
    def build_index(self, pool: DemoPool, *, ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
                    progress: bool = False) -> float:
        """Embed every candidate and (re)build the index; returns seconds taken."""
        t0 = time.perf_counter()
        self.pool = pool
        emb = self.encoder.encode([it.candidate_text for it in pool.items], progress=progress)
        self.index = DemoIndex.build(emb, ivf_threshold=ivf_threshold) if len(pool) else None
        self.meta["index_build_seconds"] = round(time.perf_counter() - t0, 3)
        return time.perf_counter() - t0

    def add_task(self, task: Task, **kw) -> tuple[int, int]:
        """Append a task's pool (e.g. a held-out task seen only at evaluation) to the index."""
        items = task_pool_items(task, **kw)
        if not items:
            raise ConfigError(f"task {task.name!r} has no instances to use as demonstrations")
        emb = self.encoder.encode([it.candidate_text for it in items])
        rng = self.pool.add_task_items(items)
        if self.index is None:
            self.index = DemoIndex.build(emb)
        else:
            self.index.add(emb)
        return rng

    def has_task(self, name: str) -> bool:
        return name in self.pool.ranges

    # --- querying -------------------------------------------------------------------------
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(texts)

    def search(self, task: str, query_text: str, k: int,
               exclude: Callable[[PoolItem], bool] | None = None,
               query_emb: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top-k (pool position, score) within `task`'s pool, best first, skipping `exclude`d items."""
        lo, hi = self.pool.task_range(task)
        if self.index is None or hi <= lo:
            return []
        q = self.embed_queries([query_text]) if query_emb is None else np.atleast_2d(query_emb)
        want = k + 8
        while True:
            scores, ids = self.index.search(q, min(want, hi - lo), id_range=(lo, hi))
            hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0])
                    if i >= 0 and not (exclude and exclude(self.pool.items[int(i)]))]
            if len(hits) >= k or want >= hi - lo:
                return hits[:k]
            want *= 4

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.encoder.save(d / "encoder")
        self.pool.save_jsonl(d / "pool.jsonl")
        if self.index is not None:
            self.index.save(d / "index.faiss")
        meta = dict(self.meta, format_version=FORMAT_VERSION, pool_size=len(self.pool),
                    tasks=list(self.pool.ranges), index_kind=self.index.kind if self.index else None,
                    encoder_source=self.encoder.config.source)
        atomic_write_text(d / RETRIEVER_META, json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Retriever":
        d = Path(directory)
        if not (d / RETRIEVER_META).exists():
            raise ConfigError(f"{d} is not a saved retriever (no {RETRIEVER_META}); "
                              "create one with `instructmt retrieve train` or `retrieve build-index`")
        meta = json.loads((d / RETRIEVER_META).read_text())
        encoder = BiEncoder.load(d / "encoder")
        pool = DemoPool.load_jsonl(d / "pool.jsonl") if (d / "pool.jsonl").exists() else DemoPool()
        index = DemoIndex.load(d / "index.faiss") if (d / "index.faiss").exists() else None
        if index is not None and len(index) != len(pool):
            raise ConfigError(f"{d}: index holds {len(index)} vectors but pool.jsonl {len(pool)} items")
        return cls(encoder, pool, index, meta)
