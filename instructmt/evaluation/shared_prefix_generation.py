"""Greedy decoding in which each task's shared prompt prefix exists once, not once per row.

Prompts are grouped by shared prefix (`prefix_generation.group_by_prefix`: one group per task).
Every forward packs as much work as fits `PREFILL_TOKENS`, with no padding (`PackedPrefill`):
- a root that all groups share (a chat template's system turn) is prefilled once;
- the groups' prefixes are prefilled packed on top of it, several tasks per forward;
- the rows' suffixes are prefilled packed, several tasks per forward, each seeing its own prefix.
Each row's own cache then holds only its suffix and its generated tokens, and
`shared_prefix_attention` attends to its group's single prefix copy: the prompt prefix is neither
copied per row nor re-read per row at each decode step. Up to `decode_batch_size` rows of all
groups decode together (on CPU a decode step costs nearly the same for 10 rows as for 40: it reads
every weight once), their tails bucketed by suffix length (`tail_buckets`).

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

from instructmt.evaluation.shared_prefix_attention import (PackedPrefill, Piece, SharedPrefixLayout, TailBucket,
                                                            shared_prefix_attention_on)

MIN_ROOT = 16  # tokens: a shorter prefix common to all groups is not worth its own prefill
# packed tokens per prefill forward: enough to fill the linear layers' matmuls (in ad-hoc timings
# on our 2-core CPU their rate was flat from a few hundred rows on), small enough to bound activations
PREFILL_TOKENS = 2048
# A decode tail bucket costs a few small ops per layer and step; a padded tail cell costs reading
# its keys/values. A new bucket pays once it saves this many padded cells (ad-hoc estimate from a
# profile of SmolLM2 on CPU, not tuned).
BUCKET_CELLS = 160


@dataclass
class _Prefix:
    """A prompt prefix's keys/values, kept once for all the rows that share it."""

    length: int
    keys: list[torch.Tensor]    # per layer (1, kv_heads, length, head_dim); [] when length == 0
    values: list[torch.Tensor]


NO_PREFIX = _Prefix(0, [], [])


@dataclass
class _Row:
    index: int                  # into the caller's prompt list
    prefix: _Prefix
    keys: list[torch.Tensor]    # per layer (kv_heads, suffix_len, head_dim): this row's own suffix
    values: list[torch.Tensor]
    last_position: int
    next_logits: torch.Tensor   # (vocab,)


def _prefill_packed(model, pieces: list[tuple[_Prefix, list[int]]], device, logits: bool):
    """One forward over these token runs packed into one sequence, each after its own prefix (its
    positions continue the prefix's): per run, its keys and values per layer (kv_heads, len,
    head_dim) and, with `logits`, the logits at its last token."""
    lengths = [len(ids) for _, ids in pieces]
    ids = torch.tensor([[t for _, x in pieces for t in x]], device=device)
    positions = torch.tensor([[p.length + j for p, x in pieces for j in range(len(x))]], device=device)
    ends = torch.tensor(lengths).cumsum(0)
    layout = PackedPrefill([Piece(int(e) - n, int(e), p.keys, p.values) for (p, _), n, e in zip(pieces, lengths, ends)])
    out = model(input_ids=ids, position_ids=positions, use_cache=False, shared_prefix=layout,
                logits_to_keep=(ends - 1).to(device) if logits else 1)
    return [([k[0, :, piece.start:piece.end] for k in layout.keys], [v[0, :, piece.start:piece.end] for v in layout.values],
             out.logits[0, r] if logits else None)
            for r, piece in enumerate(layout.pieces)]


def _packs(sizes: list[int], limit: int) -> list[range]:
    """Consecutive index ranges whose sizes sum to at most `limit` (at least one item each)."""
    packs, start, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and total + n > limit:
            packs.append(range(start, i))
            start, total = i, 0
        total += n
    if sizes:
        packs.append(range(start, len(sizes)))
    return packs


def _prefill_prefixes(model, root: _Prefix, prefixes: list[list[int]], device) -> list[_Prefix]:
    """Each prefix's keys/values, computed on top of the root they all start with (a chat template's
    system turn, a common instruction; `NO_PREFIX` for none), several per forward."""
    result: list[_Prefix | None] = [root if len(p) == root.length else None for p in prefixes]
    todo = [i for i, r in enumerate(result) if r is None]
    for pack in _packs([len(prefixes[i]) - root.length for i in todo], PREFILL_TOKENS):
        members = [todo[j] for j in pack]
        runs = _prefill_packed(model, [(root, prefixes[i][root.length:]) for i in members], device, logits=False)
        for i, (keys, values, _) in zip(members, runs):
            if root.length:
                keys = [torch.cat([rk, k[None]], dim=2) for rk, k in zip(root.keys, keys)]
                values = [torch.cat([rv, v[None]], dim=2) for rv, v in zip(root.values, values)]
            else:
                keys, values = [k[None] for k in keys], [v[None] for v in values]
            result[i] = _Prefix(len(prefixes[i]), keys, values)
    return result


def _prefill_rows(model, work: list[tuple[int, _Prefix]], source_ids, device, progress) -> list[_Row]:
    """The rows (prompt index, its group's prefix) prefilled: suffixes packed, several groups per forward."""
    suffixes = [list(source_ids[i])[p.length:] for i, p in work]
    rows: list[_Row] = []
    for pack in _packs([len(s) for s in suffixes], PREFILL_TOKENS):
        runs = _prefill_packed(model, [(work[j][1], suffixes[j]) for j in pack], device, logits=True)
        for j, (keys, values, logits) in zip(pack, runs):
            index, prefix = work[j]
            rows.append(_Row(index, prefix, keys, values, prefix.length + len(suffixes[j]) - 1, logits))
        if progress is not None:
            progress(len(pack))
    return rows


def common_root(prefixes: list[list[int]], min_len: int) -> list[int]:
    """The longest token prefix every one of these (>= 2) prefixes starts with, if >= min_len."""
    if len(prefixes) < 2:
        return []
    n = min(len(p) for p in prefixes)
    first = prefixes[0]
    for p in prefixes[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return first[:n] if n >= min_len else []


def tail_buckets(widths: list[int], extra: int, bucket_cells: int) -> list[range]:
    """Split rows sorted by suffix width (longest first) into consecutive buckets, each padded to its
    first row's width + `extra`, minimising padded cells + `bucket_cells` per bucket (exact, by
    dynamic programming over the split points)."""
    n = len(widths)
    best, cut = [0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + (end - start) * (widths[start] + extra) + bucket_cells
            if cost < best[end]:
                best[end], cut[end] = cost, start
    buckets, end = [], n
    while end:
        buckets.append(range(cut[end], end))
        end = cut[end]
    return buckets[::-1]


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


def _decode_layout(rows: list[_Row], max_new_tokens: int, device, dtype) -> SharedPrefixLayout:
    """Prefixes stacked once (padded to the longest), rows' suffixes in tail buckets (`rows` sorted
    longest suffix first), each with room for the generated tokens."""
    prefixes: list[_Prefix] = []
    group_of_row = []
    for row in rows:
        if not any(row.prefix is p for p in prefixes):
            prefixes.append(row.prefix)
        group_of_row.append(next(g for g, p in enumerate(prefixes) if p is row.prefix))
    longest = max(p.length for p in prefixes)
    first = rows[0].keys[0]
    keys, values = [], []
    for layer in range(len(rows[0].keys)):
        k = first.new_zeros((len(prefixes), first.shape[0], longest, first.shape[2]))
        v = torch.zeros_like(k)
        for g, p in enumerate(prefixes):
            if p.length:
                k[g, :, :p.length] = p.keys[layer][0]
                v[g, :, :p.length] = p.values[layer][0]
        keys.append(k)
        values.append(v)
    slots = max(group_of_row.count(g) for g in set(group_of_row))
    seen = [0] * len(prefixes)
    slot_of_row = []
    for g in group_of_row:
        slot_of_row.append(g * slots + seen[g])
        seen[g] += 1
    lengths = torch.tensor([prefixes[g].length for g in group_of_row], device=device)
    hidden = torch.arange(longest, device=device)[None] >= lengths[:, None]
    prefix_bias = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill(hidden, float("-inf"))
    widths = [row.keys[0].shape[1] for row in rows]
    buckets = []
    for bucket in tail_buckets(widths, max_new_tokens, BUCKET_CELLS):
        width, n = widths[bucket.start], len(bucket)
        bk, bv = [], []
        for layer in range(len(rows[0].keys)):
            # columns past the suffix are written before they are read; left padding must be finite (masked)
            k = first.new_zeros((n, first.shape[0], width + max_new_tokens, first.shape[2]))
            v = torch.zeros_like(k)
            for i, r in enumerate(bucket):
                k[i, :, width - widths[r]:width] = rows[r].keys[layer]
                v[i, :, width - widths[r]:width] = rows[r].values[layer]
            bk.append(k)
            bv.append(v)
        pads = torch.tensor([width - widths[r] for r in bucket], device=device)
        pad = torch.arange(width + max_new_tokens, device=device)[None] < pads[:, None]
        bias = torch.zeros(pad.shape, dtype=dtype, device=device).masked_fill(pad, float("-inf"))
        buckets.append(TailBucket(bucket.start, bucket.stop, width, bk, bv, bias[:, None, None, None]))
    return SharedPrefixLayout(keys, values, torch.tensor(slot_of_row, device=device), slots,
                              prefix_bias[:, None, None, None], buckets)


def _decode(model, rows: list[_Row], stops, newline_ids, max_new_tokens: int, device,
            dtype) -> tuple[list[list[int]], list[int]]:
    """Decode rows of several groups together; no transformers cache: the layout holds every row's
    keys/values."""
    rows = sorted(rows, key=lambda r: r.keys[0].shape[1], reverse=True)
    layout = _decode_layout(rows, max_new_tokens, device, dtype)
    state = {"positions": torch.tensor([r.last_position for r in rows], device=device)}

    def step(tokens):
        state["positions"] = state["positions"] + 1
        out = model(input_ids=tokens[:, None], position_ids=state["positions"][:, None], use_cache=False,
                    shared_prefix=layout)
        layout.generated += 1
        return out.logits[:, -1]

    def drop(keep):
        layout.keep_rows(keep)
        state["positions"] = state["positions"].index_select(0, keep)

    tokens = greedy_loop(torch.stack([r.next_logits for r in rows]), step, drop, stops, newline_ids, max_new_tokens)
    return tokens, [r.index for r in rows]


@torch.no_grad()
def generate_shared_prefix(model, source_ids: Sequence[Sequence[int]], groups, *, stop_ids: set[int],
                           newline_ids: frozenset[int], decode_batch_size: int, max_new_tokens: int,
                           progress=None) -> list[list[int]]:
    """Generated ids per prompt (input order) for `groups` (`PrefixGroup`s covering every prompt)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    preds: list[list[int]] = [[] for _ in source_ids]
    # (group, prompt) in decode order: group by group, longest prompt first
    work = [(g, i) for g, group in enumerate(groups)
            for i in sorted(group.members, key=lambda i: len(source_ids[i]), reverse=True)]
    with shared_prefix_attention_on(model):
        root_ids = common_root([list(g.prefix) for g in groups if g.prefix], MIN_ROOT)
        root = _prefill_prefixes(model, NO_PREFIX, [root_ids], device)[0] if root_ids else NO_PREFIX
        prefixes: dict[int, _Prefix] = {}
        for start in range(0, len(work), decode_batch_size):
            batch = work[start:start + decode_batch_size]
            new = [g for g in dict.fromkeys(g for g, _ in batch) if g not in prefixes]
            shared = [g for g in new if groups[g].prefix]
            prefixes.update(zip(shared, _prefill_prefixes(model, root, [list(groups[g].prefix) for g in shared],
                                                          device)))
            prefixes.update((g, NO_PREFIX) for g in new if not groups[g].prefix)
            rows = _prefill_rows(model, [(i, prefixes[g]) for g, i in batch], source_ids, device, progress)
            tokens, indices = _decode(model, rows, stop_ids, newline_ids, max_new_tokens, device, dtype)
            for i, toks in zip(indices, tokens):
                preds[i] = toks
            # work is in group order: only the batch's last group can continue in the next batch
            prefixes = {g: p for g, p in prefixes.items() if g == batch[-1][0]}
    return preds
