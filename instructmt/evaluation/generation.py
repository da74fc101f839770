"""Batched greedy generation in length-sorted batches (little padding, biggest batches first)."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..data.collator import pad_sequences
from .prefix_generation import generate_causal


@torch.no_grad()
def generate(model, tokenizer, kind: str, source_ids: Sequence[Sequence[int]], *, batch_size: int = 16,
             max_new_tokens: int = 128, task_ids: Sequence[int] | None = None, sort_by_length: bool = True,
             desc: str = "generate", show_progress: bool = True, stop_at_newline: bool = False) -> list[str]:
    """Greedy predictions in input order. Causal LMs without per-row routing go through
    `prefix_generation.generate_causal` (shared task prefixes prefilled once, finished rows dropped);
    seq2seq and routed models through `model.generate` on length-sorted batches."""
    if kind == "causal" and task_ids is None:
        return generate_causal(model, tokenizer, source_ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               stop_at_newline=stop_at_newline, share_prefix=sort_by_length,
                               show_progress=show_progress, desc=desc)
    order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]), reverse=True) \
        if sort_by_length else list(range(len(source_ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    preds: list[str | None] = [None] * len(source_ids)
    was_training = model.training
    model.eval()
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress, leave=False):
        idx = order[s:s + batch_size]
        seqs = [source_ids[i] for i in idx]
        left = kind == "causal"
        input_ids = pad_sequences(seqs, pad, left=left).to(device)
        attn = pad_sequences([[1] * len(x) for x in seqs], 0, left=left).to(device)
        kwargs = dict(input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                      do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        if task_ids is not None:
            kwargs["task_ids"] = torch.tensor([task_ids[i] for i in idx], dtype=torch.long, device=device)
        out = model.generate(**kwargs)
        if kind == "causal":
            out = out[:, input_ids.shape[1]:]
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        for i, t in zip(idx, texts):
            preds[i] = t.strip()
    if was_training:
        model.train()
    return [p or "" for p in preds]
