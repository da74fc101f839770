"""Padding-free batches for causal LMs: a batch's examples laid end to end in one row.

Each example keeps its own positions (position ids restart at 0) and attends only inside itself,
so a packed batch computes the same loss and gradients as the padded one (tests/test_packing.py
checks 1e-5) with no padding positions at all. The rows carry the flash-attention "varlen" keys
(`cu_seq_lens_q/k`, `max_length_q/k`), which transformers passes down to the attention function (flash-attention kernels use them as they
are; elsewhere `instructmt.models.packed_attention` isolates the examples).

Which examples form a batch is unchanged (the trainer's length-grouped batches): packing changes
only the layout, so a run trains on exactly what the padded run would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .labels import IGNORE_INDEX



@dataclass
class PackedCausalCollator:
    """Rows (`source_ids`, `labels`) -> one packed row: prompt + target of every example in turn,
    prompt tokens masked out of the loss, positions restarting per example."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor | int]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        starts = [0]
        for r in rows:
            src, tgt = list(r["source_ids"]), list(r["labels"])
            seq = src + tgt
            lab = [IGNORE_INDEX] * len(src) + tgt
            lab[0] = IGNORE_INDEX  # nothing may predict an example's first token from the one before
            ids += seq
            labels += lab
            positions += range(len(seq))
            starts.append(starts[-1] + len(seq))
        cu = torch.tensor(starts, dtype=torch.int32)
        longest = int((cu[1:] - cu[:-1]).max()) if len(rows) else 0
        return {"input_ids": torch.tensor([ids], dtype=torch.long),
                "labels": torch.tensor([labels], dtype=torch.long),
                "position_ids": torch.tensor([positions], dtype=torch.long),
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def is_packed(batch: dict) -> bool:
    return "cu_seq_lens_q" in batch


def batch_to_device(batch: dict, device) -> dict:
    """Tensors to `device`; the integer varlen lengths stay Python ints."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def packing_supported(kind: str, routed: bool) -> bool:
    """Packing needs a causal LM and one row for the whole batch, so no per-row task routing."""
    return kind == "causal" and not routed
