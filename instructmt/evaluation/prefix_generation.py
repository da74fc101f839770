"""Greedy decoding for causal LMs that shares each task's prompt prefix and drops finished rows.

Instruction prompts of one task repeat the same long prefix (definition + demonstrations; the
chat template's system turn) and differ only in the instance at the end. `model.generate` prefills
the whole prompt of every instance. Here prompts are grouped by their common token prefix, the
prefix's KV cache is computed once per group and repeated over the batch, and only each
instance's own suffix is prefilled. Decoding keeps one KV cache row per unfinished prompt: a row
that emits EOS (or, with `stop_at_newline`, a token containing a newline) is removed at once, so
no step is spent on prompts that have stopped, and the loop ends when none is left. Prefilled
prompts of several groups (tasks) are merged into one decode batch of up to `batch_size` rows: on
CPU a decode step costs about the same for 1 or 16 rows (it reads every weight once), so decoding
each task's few instances on their own would spend most of the time on near-empty steps.

Suffixes of different lengths are left-padded *between* the prefix and the suffix; the attention
mask hides the padding and position ids skip it, so each row sees exactly its own prompt.
Greedy outputs equal `model.generate` one prompt at a time up to floating-point ties
(tests/test_prefix_generation.py; `scripts/bench_eval.py` prints the agreement).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from .shared_prefix_attention import supports_shared_prefix_attention
from .shared_prefix_generation import generate_shared_prefix, greedy_loop

MIN_SHARED_PREFIX = 16  # tokens; shorter common prefixes are not worth a separate prefill


def output_cache(out):
    """The KV cache a forward returned (transformers 5 names it `cache`, earlier `past_key_values`)."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


@dataclass
class PrefixGroup:
    prefix: list[int]
    members: list[int]  # indices into the caller's prompt list


def group_by_prefix(source_ids: Sequence[Sequence[int]], min_prefix: int = MIN_SHARED_PREFIX) -> list[PrefixGroup]:
    """Group prompts whose common token prefix is at least `min_prefix` long and at least half
    of the group's prefix so far (sorted order puts prompts with long common prefixes next to each
    other). Each prompt keeps >= 1 suffix token."""
    order = sorted(range(len(source_ids)), key=lambda i: tuple(source_ids[i]))
    groups: list[PrefixGroup] = []
    for i in order:
        ids = list(source_ids[i])
        if groups:
            g = groups[-1]
            n = _common_prefix_len(g.prefix, ids)
            # join only if the group keeps most of its prefix: prompts of different tasks share a
            # chat template's system turn, which must not shrink a task's prefix down to it
            if n >= min_prefix and n >= len(g.prefix) // 2:
                g.prefix = g.prefix[:n]
                g.members.append(i)
                continue
        groups.append(PrefixGroup(ids, [i]))
    for g in groups:  # every member needs at least one token after the prefix (its logits)
        shortest = min(len(source_ids[i]) for i in g.members)
        g.prefix = g.prefix[:shortest - 1] if len(g.members) > 1 else []
    return groups


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@lru_cache(maxsize=8)
def _newline_token_ids(tokenizer) -> frozenset[int]:
    ids = []
    for tok, i in tokenizer.get_vocab().items():
        if "\n" in tokenizer.convert_tokens_to_string([tok]):
            ids.append(i)
    return frozenset(ids)


def newline_token_ids(tokenizer) -> frozenset[int]:
    """Tokens whose text contains a newline (computed once per tokenizer)."""
    return _newline_token_ids(tokenizer)


@dataclass
class PrefilledRows:
    """Prompts whose whole prompt is in the KV cache: what the decode loop continues from."""

    rows: list[int]          # indices into the caller's prompt list
    cache: object            # transformers DynamicCache, one row per prompt
    mask: torch.Tensor       # (rows, cache length): 1 = a real token of that row's prompt
    last_pos: torch.Tensor   # (rows,): position id of each row's last prompt token
    next_logits: torch.Tensor  # (rows, vocab): logits for each row's first generated token


@torch.no_grad()
def _prefill(model, prefix_cache, prefix_len: int, rows: list[int], suffixes: list[list[int]], pad_id: int,
             device) -> PrefilledRows:
    """Prefill prefix + each suffix (the prefix's cache is copied, not changed)."""
    from transformers import DynamicCache

    b = len(suffixes)
    width = max(len(s) for s in suffixes)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for r, s in enumerate(suffixes):
        ids[r, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
        mask[r, prefix_len + width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
    cache = DynamicCache()
    if prefix_cache is not None:
        for layer, (k, v) in enumerate(cache_layers(prefix_cache)):
            cache.update(k.expand(b, *k.shape[1:]).contiguous(), v.expand(b, *v.shape[1:]).contiguous(), layer)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    cache = output_cache(out)
    return PrefilledRows(rows, cache, mask, positions[:, -1], out.logits[:, -1])


def _merge(parts: list[PrefilledRows]) -> PrefilledRows:
    """One decode batch from prefilled batches of different groups: each cache is left-padded to the
    longest (the mask hides the padding, position ids are per row), so prompts of several tasks
    decode together and a decode step (memory-bound on CPU: it reads every weight once) serves all."""
    if len(parts) == 1:
        return parts[0]
    from transformers import DynamicCache

    length = max(p.mask.shape[1] for p in parts)
    cache = DynamicCache()
    layers = [cache_layers(p.cache) for p in parts]
    for layer in range(len(layers[0])):
        keys, values = [], []
        for p, kv in zip(parts, layers):
            k, v = kv[layer]
            pad = length - k.shape[2]
            keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)) if pad else k)
            values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)) if pad else v)
        cache.update(torch.cat(keys), torch.cat(values), layer)
    mask = torch.cat([torch.nn.functional.pad(p.mask, (length - p.mask.shape[1], 0)) for p in parts])
    return PrefilledRows([r for p in parts for r in p.rows], cache, mask, torch.cat([p.last_pos for p in parts]),
                         torch.cat([p.next_logits for p in parts]))


@torch.no_grad()
def _greedy_decode(model, state: PrefilledRows, stops: set[int], newline_ids: frozenset[int], max_new_tokens: int,
                   device) -> list[list[int]]:
    """Greedy continuations of prefilled rows; a row leaves the batch (and the cache) when it stops."""
    s = {"cache": state.cache, "mask": state.mask, "last_pos": state.last_pos}

    def step(tokens):
        s["mask"] = torch.cat([s["mask"], s["mask"].new_ones((s["mask"].shape[0], 1))], dim=1)
        s["last_pos"] = s["last_pos"] + 1
        out = model(input_ids=tokens[:, None], attention_mask=s["mask"], position_ids=s["last_pos"][:, None],
                    cache=s["cache"], use_cache=True)
        s["cache"] = output_cache(out)
        return out.logits[:, -1]

    def drop(keep):
        s["cache"].batch_select_indices(keep)
        s["mask"], s["last_pos"] = s["mask"][keep], s["last_pos"][keep]

    return greedy_loop(state.next_logits, step, drop, stops, newline_ids, max_new_tokens)


def generate_causal(model, tokenizer, source_ids: Sequence[Sequence[int]], *, batch_size: int = 16,
                    max_new_tokens: int = 128, stop_at_newline: bool = False, share_prefix: bool = True,
                    show_progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy predictions (decoded, stripped) for causal-LM prompts, in input order. Decoding stops
    at the tokenizer's EOS and, with `stop_at_newline`, at the first newline after the answer began
    (off by default: the official SNI evaluation scores the whole generated text)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    toks = generate_token_ids(model, source_ids, pad_id=pad, stop_ids={tokenizer.eos_token_id},
                              newline_ids=newline_token_ids(tokenizer) if stop_at_newline else frozenset(),
                              batch_size=batch_size, max_new_tokens=max_new_tokens, share_prefix=share_prefix,
                              show_progress=show_progress, desc=desc)
    return [clean_prediction(tokenizer, t, stop_at_newline) for t in toks]


@torch.no_grad()
def generate_token_ids(model, source_ids: Sequence[Sequence[int]], *, pad_id: int, stop_ids: set[int],
                       newline_ids: frozenset[int] = frozenset(), batch_size: int = 16, max_new_tokens: int = 128,
                       share_prefix: bool = True, show_progress: bool = False, desc: str = "generate",
                       decode_batch_size: int | None = None) -> list[list[int]]:
    """Generated token ids per prompt (stop token included, as `generate` returns it), in input order.

    Models whose attention `shared_prefix_attention` reproduces keep one copy of each prefix and
    decode up to `decode_batch_size` rows together (default max(batch_size, 64): a row then costs only
    its own suffix's cache); their prefills pack prompts of several tasks into one forward of at most
    `shared_prefix_generation.PREFILL_TOKENS` tokens. Other models copy the prefix cache into each
    row and prefill and decode `batch_size` rows at a time."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    groups = group_by_prefix(source_ids) if share_prefix else [PrefixGroup([], list(range(len(source_ids))))]
    # prompts without a shared prefix are decoded together, longest first
    loose = [i for g in groups if not g.prefix for i in g.members]
    shared = [g for g in groups if g.prefix]
    work = shared + ([PrefixGroup([], loose)] if loose else [])
    preds: list[list[int]] = [[] for _ in source_ids]
    was_training = model.training
    model.eval()
    if share_prefix and supports_shared_prefix_attention(model):
        try:
            with tqdm(total=len(source_ids), desc=desc, disable=not show_progress, leave=False) as bar:
                return generate_shared_prefix(model, source_ids, work, stop_ids=stop_ids, newline_ids=newline_ids,
                                              decode_batch_size=decode_batch_size or max(batch_size, 64),
                                              max_new_tokens=max_new_tokens, progress=bar.update)
        finally:
            if was_training:
                model.train()
    n_batches = sum((len(g.members) + batch_size - 1) // batch_size for g in work)
    bar = tqdm(total=n_batches, desc=desc, disable=not show_progress, leave=False)
    pending: list[PrefilledRows] = []  # prefilled, waiting to decode together (up to batch_size rows)

    def decode_pending():
        state = _merge(pending)
        for i, toks in zip(state.rows, _greedy_decode(model, state, stop_ids, newline_ids, max_new_tokens, device)):
            preds[i] = toks
        pending.clear()

    for g in work:
        prefix_cache = None
        if g.prefix:
            prefix_cache = model(input_ids=torch.tensor([g.prefix], device=device), use_cache=True,
                                 logits_to_keep=1)
            prefix_cache = output_cache(prefix_cache)
        members = sorted(g.members, key=lambda i: len(source_ids[i]), reverse=True)
        for s in range(0, len(members), batch_size):
            idx = members[s:s + batch_size]
            if pending and sum(len(p.rows) for p in pending) + len(idx) > batch_size:
                decode_pending()
            pending.append(_prefill(model, prefix_cache, len(g.prefix), idx,
                                    [list(source_ids[i])[len(g.prefix):] for i in idx], pad_id, device))
            bar.update(1)
    if pending:
        decode_pending()
    bar.close()
    if was_training:
        model.train()
    return preds


def clean_prediction(tokenizer, token_ids: Sequence[int], stop_at_newline: bool = False) -> str:
    """Decoded text without special tokens; with `stop_at_newline`, only its first line."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    if stop_at_newline:
        text = text.lstrip("\n").split("\n", 1)[0]
    return text.strip()
