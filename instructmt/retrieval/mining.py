"""Candidate mining for UDR training: BM25 (iteration 0) or the retriever's own top L (later
iterations), LM-feedback scores (cached, so merged candidates are scored once), and the sampling
of ranked lists (1–2 from the top 5, 1 from the bottom 5, the rest from the middle, in LM order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .bm25 import BM25Index
from .index import DemoPool, PoolItem, Retriever
from .scorer import PairScorer, demo_context


def same_item(a: PoolItem, b: PoolItem) -> bool:
    """A candidate is the query itself when it has the same id or the identical input."""
    return a.id == b.id or a.input.strip() == b.input.strip()


@dataclass
class MinedQuery:
    """One training query (a pool position) and its candidates' LM scores (pool position -> score)."""

    pos: int
    scores: dict[int, float] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)  # candidates still to be scored

    def ranked(self) -> list[int]:
        """Candidates by LM score, best first (ties by pool position, so it is deterministic)."""
        return sorted(self.scores, key=lambda c: (-self.scores[c], c))


def select_queries(pool: DemoPool, tasks: Sequence[str] | None = None, max_per_task: int | None = None,
                   seed: int = 0) -> list[MinedQuery]:
    rng = random.Random(seed)
    out: list[MinedQuery] = []
    for name, (lo, hi) in pool.ranges.items():
        if tasks is not None and name not in tasks:
            continue
        positions = list(range(lo, hi))
        if max_per_task is not None and len(positions) > max_per_task:
            positions = sorted(rng.sample(positions, max_per_task))
        out.extend(MinedQuery(p) for p in positions)
    return out


def add_bm25_candidates(pool: DemoPool, queries: Sequence[MinedQuery], num_candidates: int = 50) -> None:
    """Iteration 0: the query's task pool ranked by BM25 on the inputs, the query excluded."""
    by_task: dict[str, list[MinedQuery]] = {}
    for q in queries:
        by_task.setdefault(pool.items[q.pos].task, []).append(q)
    for name, qs in by_task.items():
        lo, hi = pool.task_range(name)
        bm25 = BM25Index([it.input for it in pool.items[lo:hi]])
        for q in qs:
            item = pool.items[q.pos]
            exclude = [i for i in range(hi - lo) if same_item(item, pool.items[lo + i])]
            for i in bm25.top_k(item.input, num_candidates, exclude=exclude):
                _add(q, lo + i)


def add_dense_candidates(retriever: Retriever, queries: Sequence[MinedQuery], num_candidates: int = 50,
                         batch_size: int = 64) -> None:
    """Later iterations: the retriever's own top L in the query's task pool, merged with the old ones."""
    pool = retriever.pool
    texts = [pool.items[q.pos].query_text for q in queries]
    emb = retriever.encoder.encode(texts, batch_size=batch_size)
    for q, e in zip(queries, emb):
        item = pool.items[q.pos]
        hits = retriever.search(item.task, item.query_text, num_candidates,
                                exclude=lambda c, item=item: same_item(item, c), query_emb=e)
        for pos, _ in hits:
            _add(q, pos)


def _add(q: MinedQuery, pos: int) -> None:
    if pos not in q.scores and pos not in q.pending:
        q.pending.append(pos)


ContextFn = Callable[[PoolItem, PoolItem], str]


def udr_context(demo: PoolItem, query: PoolItem) -> str:
    """The UDR feedback input: `"{z_q}\t{z_a}\n{x}\t"` with task-prefixed inputs."""
    return demo_context(demo.query_text, demo.output, query.query_text)


def score_pending(pool: DemoPool, queries: Sequence[MinedQuery], scorer: PairScorer,
                  context_fn: ContextFn = udr_context) -> int:
    """LM feedback for every not-yet-scored candidate, in one batched call; returns how many.
    `context_fn(demo, query)` builds the generator input (e.g. the generator's own prompt format)."""
    pairs, where = [], []
    for q in queries:
        item = pool.items[q.pos]
        for c in q.pending:
            pairs.append((context_fn(pool.items[c], item), item.output))
            where.append((q, c))
    values = scorer.score(pairs) if pairs else []
    for (q, c), v in zip(where, values):
        q.scores[c] = float(v)
    for q in queries:
        q.pending.clear()
    return len(pairs)


def sample_ranked(ranked: Sequence[int], list_size: int = 8, rng: random.Random | None = None) -> list[int]:
    """Pick `list_size` of the LM-ranked candidates: 1–2 from the top 5, 1 from the bottom 5, the
    rest from the middle (shortfalls filled from what is left); returned in LM order."""
    rng = rng or random.Random(0)
    n = len(ranked)
    if n <= list_size:
        return list(ranked)
    top = list(range(0, min(5, n)))
    bottom = list(range(max(len(top), n - 5), n))
    middle = list(range(len(top), bottom[0] if bottom else n))
    chosen = set(rng.sample(top, min(len(top), rng.choice((1, 2)))))
    if bottom:
        chosen.add(rng.choice(bottom))
    need = list_size - len(chosen)
    chosen.update(rng.sample(middle, min(need, len(middle))))
    rest = [i for i in range(n) if i not in chosen]
    chosen.update(rng.sample(rest, list_size - len(chosen)))
    return [ranked[i] for i in sorted(chosen)]
