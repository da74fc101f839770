"""Training the unified demonstration retriever (UDR) across tasks.

iteration 0: BM25 candidates (L per query, the query excluded) → LM feedback → train;
iteration t>0: the retriever's own top L, merged with the earlier candidates (scores cached) →
LM feedback for the new ones → train again. Each epoch samples a fresh ranked list of
`list_size` candidates per query; queries from all tasks share batches (one unified retriever).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..tasks.schema import Task
from .encoder import DEFAULT_ENCODER, BiEncoder
from .index import DEFAULT_IVF_THRESHOLD, DemoPool, Retriever
from .loss import udr_loss
from .mining import (ContextFn, MinedQuery, add_bm25_candidates, add_dense_candidates, sample_ranked,
                     score_pending, select_queries, udr_context)
from .scorer import PairScorer


@dataclass
class UDRTrainConfig:
    encoder: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "HF encoder id or path (MiniLM aliases use the bundled copy)"})
    num_candidates: int = field(default=50, metadata={"help": "L: candidates mined per query"})
    list_size: int = field(default=8, metadata={"help": "candidates per query in a ranked training list"})
    iterations: int = field(default=3, metadata={"help": "mining iterations (iter0 = BM25, then the retriever's own)"})
    epochs_per_iteration: int = 1
    batch_size: int = field(default=8, metadata={"help": "queries per step (each brings list_size candidates)"})
    lr: float = 2e-5
    weight_decay: float = 0.01
    rank_weight: float = field(default=4.0, metadata={"help": "weight of the list-wise loss (UDR: 4)"})
    max_queries_per_task: int | None = field(default=200, metadata={"help": "cap on training queries per task"})
    max_length: int = 256
    encoder_layers: int | None = field(default=None, metadata={"help": "keep only the encoder's first N layers"})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise embeddings (UDR: raw dot product)"})
    include_examples: bool = field(default=True, metadata={"help": "add tasks' positive examples to the pool"})
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class UDRTrainResult:
    retriever: Retriever
    history: list[dict] = field(default_factory=list)
    output_dir: str | None = None


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_epoch(encoder: BiEncoder, pool: DemoPool, queries: Sequence[MinedQuery], optimizer,
                cfg: UDRTrainConfig, rng: random.Random, progress: bool = False) -> list[dict]:
    """One pass over the queries with freshly sampled ranked lists; returns per-step losses."""
    usable = [q for q in queries if len(q.scores) >= 2]
    rng.shuffle(usable)
    steps = range(0, len(usable), cfg.batch_size)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="UDR train", unit="step")
    encoder.train()
    logs = []
    for s in steps:
        batch = usable[s:s + cfg.batch_size]
        lists = [sample_ranked(q.ranked(), cfg.list_size, rng) for q in batch]
        n = max(len(c) for c in lists)
        mask = torch.zeros(len(batch), n, dtype=torch.bool)
        texts = []
        for b, cands in enumerate(lists):
            mask[b, :len(cands)] = True
            padded = cands + [cands[-1]] * (n - len(cands))  # padding is masked out of both losses
            texts.extend(pool.items[c].candidate_text for c in padded)
        q_emb = encoder([pool.items[q.pos].query_text for q in batch])
        c_emb = encoder(texts).reshape(len(batch), n, -1)
        loss = udr_loss(q_emb, c_emb, mask.to(q_emb.device), cfg.rank_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
        optimizer.step()
        logs.append({"loss": loss.total.item(), "rank": loss.rank.item(), "in_batch": loss.in_batch.item()})
    return logs


def train_udr(tasks: Sequence[Task], scorer: PairScorer, cfg: UDRTrainConfig | None = None, *,
              encoder: BiEncoder | None = None, output_dir: str | Path | None = None,
              context_fn: ContextFn = udr_context, progress: bool = True) -> UDRTrainResult:
    """Train one retriever over all `tasks`; saves it (with its index over their pool) if asked.
    `context_fn(demo, query)` is the generator input the feedback is scored on (UDR's by default)."""
    cfg = cfg or UDRTrainConfig()
    _set_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    encoder = encoder or BiEncoder.from_pretrained(cfg.encoder, max_length=cfg.max_length, normalize=cfg.normalize,
                                                  num_layers=cfg.encoder_layers)
    pool = DemoPool.from_tasks(tasks, include_examples=cfg.include_examples)
    retriever = Retriever(encoder, pool)
    queries = select_queries(pool, max_per_task=cfg.max_queries_per_task, seed=cfg.seed)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        if it == 0:
            add_bm25_candidates(pool, queries, cfg.num_candidates)
        else:
            retriever.build_index(pool, ivf_threshold=cfg.ivf_threshold)
            add_dense_candidates(retriever, queries, cfg.num_candidates)
        scored = score_pending(pool, queries, scorer, context_fn)
        mine_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        step_logs: list[dict] = []
        for _ in range(cfg.epochs_per_iteration):
            step_logs += train_epoch(encoder, pool, queries, optimizer, cfg, rng, progress=progress)
        rec = {"iteration": it, "queries": len(queries), "lm_scored_pairs": scored,
               "mean_candidates": float(np.mean([len(q.scores) for q in queries])) if queries else 0.0,
               "steps": len(step_logs),
               "first_loss": step_logs[0]["loss"] if step_logs else None,
               "last_loss": step_logs[-1]["loss"] if step_logs else None,
               "mine_seconds": round(mine_s, 2), "train_seconds": round(time.perf_counter() - t1, 2)}
        history.append(rec)
        if progress:
            print(f"[udr] iter {it}: {json.dumps(rec)}")
    retriever.build_index(pool, ivf_threshold=cfg.ivf_threshold)
    retriever.meta["training"] = {"config": asdict(cfg), "history": history,
                                  "train_tasks": [t.name for t in tasks]}
    out = None
    if output_dir is not None:
        out = str(retriever.save(output_dir))
    return UDRTrainResult(retriever, history, out)
