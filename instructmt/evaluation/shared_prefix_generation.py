"""Greedy decoding in which each task's shared prompt prefix exists once, not once per row.

For every prefix group (`prefix_generation.group_by_prefix`): the prefix is prefilled once (on top
of a root that all groups share, such as a chat template's system turn, itself prefilled once);
the group's suffixes are prefilled *packed* into one sequence after it (no padding; each suffix
sees the prefix and, causally, only itself; position ids restart after the prefix). Each row's own
cache then holds only its suffix and its generated tokens, and `shared_prefix_attention` attends
to the group's single prefix copy (one batched product per group): the prompt prefix is neither
copied per row nor re-read per row at each decode step. Rows of several groups decode together, up
to `decode_batch_size` rows: on CPU a decode step costs nearly the same for 10 rows as for 40 (it
reads every weight once).

(Tried and measured slower on CPU: keeping each group's packed suffixes inside one shared block
and attending over it with a per-row mask; the block grid, padded to the longest group, cost more
than the short per-row tails. `scripts/profile_eval_calls.py` prints where the time goes.)

Greedy outputs equal `model.generate` one prompt at a time up to floating-point ties
(tests/test_prefix_generation.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from instructmt.evaluation.shared_prefix_attention import (SharedPrefixLayout, shared_prefix_attention_on,
                                                            text_config)

MIN_ROOT = 16  # tokens: a shorter prefix common to all groups is not worth its own prefill
PREFILL_TOKENS = 2048  # packed suffix tokens per prefill call: bounds the (tokens x tokens) scores


@dataclass
class _Prefix:
    """A prompt prefix's keys/values, kept once for all the rows that share it."""

    length: int
    keys: list[torch.Tensor]    # per layer (1, kv_heads, length, head_dim); [] when length == 0
    values: list[torch.Tensor]


@dataclass
class _Row:
    index: int                  # into the caller's prompt list
    prefix: _Prefix
    keys: list[torch.Tensor]    # per layer (kv_heads, suffix_len, head_dim): this row's own suffix
    values: list[torch.Tensor]
    last_position: int
    next_logits: torch.Tensor   # (vocab,)


def output_cache(out):
    """The KV cache a forward returned (transformers 5 names it `cache`, earlier `past_key_values`)."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _prefill_prefix(model, ids: list[int], device) -> _Prefix:
    if not ids:
        return _Prefix(0, [], [])
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
    layers = cache_layers(output_cache(out))
    return _Prefix(len(ids), [k for k, _ in layers], [v for _, v in layers])


def _empty_kv(model, device, dtype) -> torch.Tensor:
    text = text_config(model)
    kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return torch.zeros((1, kv, 0, head_dim), device=device, dtype=dtype)


def _layout(prefixes: list[_Prefix], group_of_row: list[int], tail_pad: list[int], q_len: int, tail_len: int,
            causal_lengths: list[int] | None, n_layers: int, empty, device, dtype) -> SharedPrefixLayout:
    """Stack the prefixes (right-padded to the longest) and build every row's additive mask: row r
    sees its own prefix, and of its own tail (the cache passed to the model, left-padded by
    `tail_pad[r]`) either everything (decode) or, with `causal_lengths` (a packed prefill), each
    packed piece causally and no other."""
    longest = max(p.length for p in prefixes)
    keys, values = [], []
    for layer in range(n_layers):
        ks, vs = [], []
        for p in prefixes:
            k, v = (p.keys[layer], p.values[layer]) if p.length else (empty, empty)
            pad = longest - k.shape[2]
            ks.append(torch.nn.functional.pad(k, (0, 0, 0, pad)) if pad else k)
            vs.append(torch.nn.functional.pad(v, (0, 0, 0, pad)) if pad else v)
        keys.append(ks[0] if len(ks) == 1 else torch.cat(ks))  # one prefix (a prefill): no copy
        values.append(vs[0] if len(vs) == 1 else torch.cat(vs))
    slots = max(group_of_row.count(g) for g in set(group_of_row))
    seen = [0] * len(prefixes)
    slot_of_row = []
    for g in group_of_row:
        slot_of_row.append(g * slots + seen[g])
        seen[g] += 1
    visible = torch.zeros((len(group_of_row), q_len, longest + tail_len), dtype=torch.bool)
    for r, g in enumerate(group_of_row):
        visible[r, :, :prefixes[g].length] = True
        visible[r, :, longest + tail_pad[r]:] = True
    if causal_lengths is not None:
        block, start = torch.zeros((q_len, q_len), dtype=torch.bool), 0
        for n in causal_lengths:
            block[start:start + n, start:start + n] = torch.ones((n, n), dtype=torch.bool).tril()
            start += n
        visible[:, :, longest:] &= block
    bias = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, float("-inf"))
    return SharedPrefixLayout(keys, values, torch.tensor(slot_of_row, device=device), slots,
                              bias.to(device)[:, None, None])


def _prefill_packed(model, prefix: _Prefix, suffixes: list[list[int]], n_layers: int, empty, device, dtype):
    """One forward over these suffixes packed into one sequence, each after the shared prefix:
    per suffix, its own keys and values per layer (kv_heads, len, head_dim) and the logits at its
    last token."""
    p = prefix.length
    lengths = [len(x) for x in suffixes]
    ids = torch.tensor([[t for x in suffixes for t in x]], device=device)
    positions = torch.tensor([[p + j for n in lengths for j in range(n)]], device=device)
    ends = torch.tensor(lengths).cumsum(0) - 1
    layout = _layout([prefix], [0], [0], ids.shape[1], ids.shape[1], lengths, n_layers, empty, device, dtype)
    out = model(input_ids=ids, position_ids=positions, cache=_new_cache(), use_cache=True,
                logits_to_keep=ends.to(device), shared_prefix=layout)
    layers = cache_layers(output_cache(out))
    result, start = [], 0
    for r, n in enumerate(lengths):
        result.append(([k[0, :, start:start + n] for k, _ in layers], [v[0, :, start:start + n] for _, v in layers],
                       out.logits[0, r]))
        start += n
    return result


def _prefill_suffixes(model, prefix: _Prefix, members: list[int], source_ids, n_layers: int, empty,
                      device, dtype) -> list[_Row]:
    p = prefix.length
    suffixes = [list(source_ids[i])[p:] for i in members]
    packed = _prefill_packed(model, prefix, suffixes, n_layers, empty, device, dtype)
    return [_Row(i, prefix, keys, values, p + len(x) - 1, logits)
            for i, x, (keys, values, logits) in zip(members, suffixes, packed)]


def _extend_prefix(model, root: _Prefix, ids: list[int], n_layers: int, empty, device, dtype) -> _Prefix:
    """A group's prefix computed on top of the root all groups share (a chat template's system turn,
    a common instruction), so that root is prefilled once per call, not once per task."""
    if len(ids) == root.length:
        return root
    (keys, values, _), = _prefill_packed(model, root, [ids[root.length:]], n_layers, empty, device, dtype)
    return _Prefix(len(ids), [torch.cat([rk, k[None]], dim=2) for rk, k in zip(root.keys, keys)],
                   [torch.cat([rv, v[None]], dim=2) for rv, v in zip(root.values, values)])


def common_root(prefixes: list[list[int]], min_len: int) -> list[int]:
    """The longest token prefix every one of these (>= 2) prefixes starts with, if >= min_len."""
    if len(prefixes) < 2:
        return []
    n = min(len(p) for p in prefixes)
    first = prefixes[0]
    for p in prefixes[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return first[:n] if n >= min_len else []


# A finished row stays in the batch (its tokens ignored) until dropping it saves more than the
# drop costs: removing rows copies every layer's cache. Rows are dropped once (finished rows x
# steps left) >= this many row-steps. A rough estimate, not tuned: in an ad-hoc profile of SmolLM2
# on CPU a drop of the transformers cache cost ~50 ms and a decode row-step ~11 ms.
DROP_AFTER_ROW_STEPS = 5


def greedy_loop(logits: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor],
                drop: Callable[[torch.Tensor], None], stops: set[int], newline_ids: frozenset[int],
                max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens per row. `step(tokens)` feeds one token per row in the batch and returns the
    next logits; `drop(keep)` keeps only those batch rows. A row's output ends at its stop token;
    finished rows leave the batch as soon as that is cheaper than carrying them (see
    DROP_AFTER_ROW_STEPS); they never change the other rows' outputs."""
    device = logits.device
    generated: list[list[int]] = [[] for _ in range(logits.shape[0])]
    batch = torch.arange(logits.shape[0], device=device)     # caller's row of each batch row
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    newline_tensor = torch.tensor(sorted(newline_ids), dtype=torch.long, device=device)
    for n in range(max_new_tokens):
        nxt = logits.argmax(-1)
        live = ~finished[batch]
        for r, t in zip(batch[live].tolist(), nxt[live].tolist()):
            generated[r].append(t)
        done = torch.isin(nxt, stop_tensor)
        if newline_ids and n > 0:  # a newline ends the answer, once it has begun
            done |= torch.isin(nxt, newline_tensor)
        finished[batch[done & live]] = True
        live = ~finished[batch]
        steps_left = max_new_tokens - 1 - n
        if steps_left == 0 or not live.any():
            break
        if int((~live).sum()) * steps_left >= DROP_AFTER_ROW_STEPS:
            keep = live.nonzero().flatten()
            drop(keep)
            batch, nxt = batch[keep], nxt[keep]
        logits = step(nxt)
    return generated


def _decode(model, rows: list[_Row], stops, newline_ids, max_new_tokens: int, n_layers: int, empty, device,
            dtype) -> tuple[list[list[int]], list[int]]:
    """Decode rows of several groups together: the prefixes are shared through the layout, each row's
    own cache (its left-padded suffix, then its generated tokens) is a preallocated buffer in it."""
    prefixes: list[_Prefix] = []
    group_of_row = []
    for row in rows:
        if not any(row.prefix is p for p in prefixes):
            prefixes.append(row.prefix)
        group_of_row.append(next(g for g, p in enumerate(prefixes) if p is row.prefix))
    tail = max(row.keys[0].shape[1] for row in rows)
    pads = [tail - row.keys[0].shape[1] for row in rows]
    layout = _layout(prefixes, group_of_row, pads, 1, tail + max_new_tokens, None, n_layers, empty, device, dtype)
    layout.tail_keys, layout.tail_values, layout.tail_len = [], [], tail
    for layer in range(n_layers):  # left-padded suffixes, then room for the generated tokens
        first = rows[0].keys[layer]
        # columns past `tail` are written before they are read; padding must be finite (masked)
        keys = first.new_empty((len(rows), first.shape[0], tail + max_new_tokens, first.shape[2]))
        values = torch.empty_like(keys)
        for i, (r, pad) in enumerate(zip(rows, pads)):
            keys[i, :, :pad] = 0
            values[i, :, :pad] = 0
            keys[i, :, pad:tail] = r.keys[layer]
            values[i, :, pad:tail] = r.values[layer]
        layout.tail_keys.append(keys)
        layout.tail_values.append(values)
    state = {"positions": torch.tensor([r.last_position for r in rows], device=device)}

    def step(tokens):
        state["positions"] = state["positions"] + 1
        out = model(input_ids=tokens[:, None], position_ids=state["positions"][:, None], use_cache=False,
                    shared_prefix=layout)
        layout.tail_len += 1
        return out.logits[:, -1]

    def drop(keep):
        layout.keep_rows(keep)
        state["positions"] = state["positions"].index_select(0, keep)

    tokens = greedy_loop(torch.stack([r.next_logits for r in rows]), step, drop, stops, newline_ids, max_new_tokens)
    return tokens, [r.index for r in rows]


@torch.no_grad()
def generate_shared_prefix(model, source_ids: Sequence[Sequence[int]], groups, *, stop_ids: set[int],
                           newline_ids: frozenset[int], batch_size: int, decode_batch_size: int,
                           max_new_tokens: int, progress=None) -> list[list[int]]:
    """Generated ids per prompt (input order) for `groups` (`PrefixGroup`s covering every prompt)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n_layers = text_config(model).num_hidden_layers
    empty = _empty_kv(model, device, dtype)
    preds: list[list[int]] = [[] for _ in source_ids]
    pending: list[_Row] = []

    def decode_pending():
        tokens, indices = _decode(model, pending, stop_ids, newline_ids, max_new_tokens, n_layers, empty, device,
                                  dtype)
        for i, toks in zip(indices, tokens):
            preds[i] = toks
        pending.clear()

    with shared_prefix_attention_on(model):
        root_ids = common_root([list(g.prefix) for g in groups if g.prefix], MIN_ROOT)
        root = _prefill_prefix(model, root_ids, device) if root_ids else None
        for g in groups:
            prefix = _extend_prefix(model, root, list(g.prefix), n_layers, empty, device, dtype) \
                if root is not None and g.prefix else _prefill_prefix(model, list(g.prefix), device)
            members = sorted(g.members, key=lambda i: len(source_ids[i]), reverse=True)
            chunk: list[int] = []
            for i in members + [None]:
                size = sum(len(source_ids[j]) - len(g.prefix) for j in chunk)
                if chunk and (i is None or len(chunk) == batch_size or len(pending) + len(chunk) == decode_batch_size
                              or size + len(source_ids[i]) - len(g.prefix) > PREFILL_TOKENS):
                    pending.extend(_prefill_suffixes(model, prefix, chunk, source_ids, n_layers, empty, device,
                                                     dtype))
                    if progress is not None:
                        progress(len(chunk))
                    chunk = []
                    if len(pending) >= decode_batch_size:
                        decode_pending()
                if i is not None:
                    chunk.append(i)
        if pending:
            decode_pending()
    return preds
