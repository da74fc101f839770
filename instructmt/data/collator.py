"""Collators: seq2seq (labels = target) and causal LM (prompt tokens masked out of the loss).

Rows are dicts with `source_ids`, `labels` (the chosen target's ids) and `task`. Routed adapter
methods get `task_ids` (index of each row's task in `task_names`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .labels import IGNORE_INDEX
from .packing import PackedCausalCollator


def pad_sequences(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if left:
                out[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
            else:
                out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class Seq2SeqCollator:
    pad_token_id: int
    task_names: list[str] | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        src = [r["source_ids"] for r in rows]
        batch = {
            "input_ids": pad_sequences(src, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(s) for s in src], 0),
            "labels": pad_sequences([r["labels"] for r in rows], IGNORE_INDEX),
        }
        return _with_task_ids(batch, rows, self.task_names)


@dataclass
class CausalCollator:
    pad_token_id: int
    task_names: list[str] | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(r["source_ids"]) + list(r["labels"]) for r in rows]
        labels = [[IGNORE_INDEX] * len(r["source_ids"]) + list(r["labels"]) for r in rows]
        batch = {
            "input_ids": pad_sequences(ids, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0),
            "labels": pad_sequences(labels, IGNORE_INDEX),
        }
        return _with_task_ids(batch, rows, self.task_names)


def _with_task_ids(batch, rows, task_names):
    if task_names is not None:
        index = {n: i for i, n in enumerate(task_names)}
        batch["task_ids"] = torch.tensor([index[r["task"]] for r in rows], dtype=torch.long)
    return batch


def make_collator(kind: str, tokenizer, task_names: list[str] | None = None, packed: bool = False):
    """`packed`: causal LMs, one padding-free row per batch (see `instructmt.data.packing`)."""
    if packed:
        if kind != "causal" or task_names is not None:
            raise ValueError("packed batches need a causal LM and no per-row task ids")
        return PackedCausalCollator()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if kind == "seq2seq":
        return Seq2SeqCollator(pad, task_names)
    if kind == "causal":
        return CausalCollator(pad, task_names)
    raise ValueError(f"unknown model kind {kind!r}")


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens in a batch (source + target for seq2seq; the sequence for causal)."""
    if "attention_mask" not in batch:  # a packed row has no padding
        return int(batch["input_ids"].numel())
    n = int(batch["attention_mask"].sum())
    if "decoder_input_ids" not in batch and batch["labels"].shape != batch["input_ids"].shape:
        n += int((batch["labels"] != IGNORE_INDEX).sum())
    return n
