"""Length-grouped batches: little padding, still shuffled, deterministic per (seed, epoch)."""

from __future__ import annotations

import random
from typing import Sequence


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                           group_by_length: bool = True, mega_factor: int = 50) -> list[list[int]]:
    rng = random.Random(f"{seed}-batches-{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    mega = batch_size * mega_factor
    batches: list[list[int]] = []
    for s in range(0, len(idx), mega):
        chunk = sorted(idx[s:s + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
