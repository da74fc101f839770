"""Attention over prompt prefixes that many rows share, without copying them into every row.

Held-out prompts of one task share a long prefix (definition + demonstrations). Copying that
prefix's KV cache into every row (what a batched `generate` does, and what our first prefix-sharing
generator did) makes every decode step read the prefix once per row, and the cache's per-step
concatenation copy it again: on CPU that memory traffic cost as much as the weights. Here each
group's prefix keys/values are kept once, each row holds only its own *tail* (its suffix, then its
generated tokens), and attention combines both under one softmax (the "cascade" / shared-prefix
attention of serving engines, written with plain torch ops; transformers has no such kernel for
CPU). Two layouts, one per phase:

- `PackedPrefill`: many pieces (the suffixes of several tasks, or several tasks' prefixes over a
  common root) packed into one sequence with no padding. Each piece attends to its own prefix and,
  causally, to itself: one SDPA call per piece, so no work is spent on the (pieces x pieces) scores
  a block-diagonal mask would hide. The packed sequence fills the linear layers' matmuls (one
  forward instead of one per task); the keys/values are captured here, no transformers cache.
- `SharedPrefixLayout` (decode): prefixes stacked over groups (one batched product per group for
  all its rows); each row's tail lives in a preallocated buffer written in place. Rows are
  bucketed by suffix length (`TailBucket`) so a short row does not pay for the longest row's
  left padding at every step.

It plugs into transformers' attention interface: `SHARED_PREFIX_ATTENTION` is registered with
`AttentionInterface`, the model's config is switched to it only inside `shared_prefix_attention_on`,
and the per-call layout travels in the forward's kwargs (`shared_prefix=...`); a call without it
falls back to SDPA. Supported: decoder models whose attention is plain scaled dot-product over
(grouped) heads — no sliding window, no logit soft-capping, no ALiBi.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

SHARED_PREFIX_ATTENTION = "instructmt_shared_prefix"

# model types whose attention is the plain (GQA) softmax(QK^T * scaling) V this module computes
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "granite", "olmo", "olmo2", "smollm3"})


@dataclass
class Piece:
    """Positions [start, end) of a packed prefill, attending to `prefix` (per layer (1, kv, P, d)
    keys and values; empty lists for no prefix) and causally to themselves."""

    start: int
    end: int
    prefix_keys: list[torch.Tensor]
    prefix_values: list[torch.Tensor]

    @property
    def prefix_len(self) -> int:
        return self.prefix_keys[0].shape[2] if self.prefix_keys else 0


@dataclass
class PackedPrefill:
    """A prefill forward over pieces packed into one sequence (batch 1). The attention stores each
    layer's keys/values (1, kv, tokens, d) in `keys`/`values`, so the forward needs no cache."""

    pieces: list[Piece]
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    _masks: list[torch.Tensor | None] = field(default_factory=list)

    def masks(self, dtype, device) -> list[torch.Tensor | None]:
        """Per piece the additive mask (n, P + n): its prefix visible, itself causal (None where there
        is no prefix: plain causal). Built once per forward, shared by every layer."""
        if not self._masks:
            for p in self.pieces:
                n = p.end - p.start
                if p.prefix_len == 0:
                    self._masks.append(None)
                    continue
                own = torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)
                self._masks.append(torch.cat([torch.zeros((n, p.prefix_len), dtype=dtype, device=device), own], 1))
        return self._masks


@dataclass
class TailBucket:
    """Decode rows [start, end) whose tails share one buffer: per layer (rows, kv, width + capacity,
    d), each row's suffix left-padded to `width`, then its generated tokens. `bias` (rows, 1, 1, 1,
    width + capacity) hides the left padding."""

    start: int
    end: int
    width: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    bias: torch.Tensor


@dataclass
class SharedPrefixLayout:
    """What a decode forward needs besides the new tokens.

    prefix_keys/values: per layer, (groups, kv_heads, prefix_len, head_dim): every group's prefix,
        padded on the right to the longest one; `prefix_bias` (rows, 1, 1, 1, prefix_len) hides a
        row's padded prefix positions.
    slot_of_row: (rows,) position of each row in the (groups x slots_per_group) grid, group-major:
        row r belongs to group slot_of_row[r] // slots_per_group.
    buckets: the rows' tails, in row order (see `TailBucket`); the attention writes each step's
        keys/values at column `width + generated` of its bucket. The caller advances `generated`
        after each forward.
    """

    prefix_keys: list[torch.Tensor]
    prefix_values: list[torch.Tensor]
    slot_of_row: torch.Tensor
    slots_per_group: int
    prefix_bias: torch.Tensor
    buckets: list[TailBucket]
    generated: int = 0

    def __post_init__(self) -> None:
        self._index_slots()

    def _index_slots(self) -> None:
        # each grid slot's row (empty slots take row 0: computed, never read back), for gathers
        # with index_select, several times faster on CPU than scatter or advanced indexing
        grid = self.groups * self.slots_per_group
        self.row_of_slot = torch.zeros(grid, dtype=torch.long, device=self.slot_of_row.device)
        self.row_of_slot[self.slot_of_row] = torch.arange(len(self.slot_of_row), device=self.slot_of_row.device)

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Keep only these rows (ascending indices; finished rows leave the batch)."""
        self.slot_of_row = self.slot_of_row.index_select(0, keep)
        self.prefix_bias = self.prefix_bias.index_select(0, keep)
        buckets, start = [], 0
        for b in self.buckets:
            inside = keep[(keep >= b.start) & (keep < b.end)] - b.start
            if len(inside) == 0:
                continue
            if len(inside) < b.end - b.start:
                b.keys = [k.index_select(0, inside) for k in b.keys]
                b.values = [v.index_select(0, inside) for v in b.values]
                b.bias = b.bias.index_select(0, inside)
            b.start, b.end = start, start + len(inside)
            start = b.end
            buckets.append(b)
        self.buckets = buckets
        self._index_slots()

    @property
    def groups(self) -> int:
        return self.prefix_keys[0].shape[0]

    @property
    def prefix_len(self) -> int:
        return self.prefix_keys[0].shape[2]


def text_config(model):
    """The config of the model's language part (the config itself for text-only models)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def supports_shared_prefix_attention(model) -> bool:
    """True when this module's attention computes exactly what the model's own attention does."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    text = text_config(model)
    if getattr(text, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return not getattr(text, "attn_logit_softcapping", None)


def _rows_to_slots(x: torch.Tensor, layout: SharedPrefixLayout) -> torch.Tensor:
    """(rows, kv, m, d) -> (groups, kv, slots*m, d): each group's rows side by side, so one batched
    matmul per group multiplies all of them against that group's single prefix copy."""
    _, kv, m, d = x.shape
    grid = x.index_select(0, layout.row_of_slot)
    return (grid.view(layout.groups, layout.slots_per_group, kv, m, d).transpose(1, 2)
            .reshape(layout.groups, kv, layout.slots_per_group * m, d))


def _slots_to_rows(x: torch.Tensor, layout: SharedPrefixLayout, m: int) -> torch.Tensor:
    """Inverse of `_rows_to_slots` for a (groups, kv, slots*m, n) result."""
    groups, kv, _, n = x.shape
    grid = (x.view(groups, kv, layout.slots_per_group, m, n).transpose(1, 2)
            .reshape(groups * layout.slots_per_group, kv, m, n))
    return grid.index_select(0, layout.slot_of_row)


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            **kwargs):
    """transformers attention function: query (rows, heads, q, d), key/value (rows, kv_heads, q, d)
    of this call's tokens. Returns (rows, q, heads, d) as every attention function does."""
    layout = kwargs.get("shared_prefix")
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if isinstance(layout, PackedPrefill):
        return _packed_prefill_attention(module.layer_idx, query, key, value, layout, scale), None
    return _decode_attention(module.layer_idx, query, key, value, layout, scale), None


def _packed_prefill_attention(layer: int, query, key, value, layout: PackedPrefill, scale: float):
    while len(layout.keys) <= layer:
        layout.keys.append(None)
        layout.values.append(None)
    layout.keys[layer], layout.values[layer] = key, value
    out = torch.empty_like(query)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for piece, mask in zip(layout.pieces, layout.masks(query.dtype, query.device)):
        s, e = piece.start, piece.end
        k, v = key[:, :, s:e], value[:, :, s:e]
        if mask is None:
            out[:, :, s:e] = sdpa(query[:, :, s:e], k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            k = torch.cat([piece.prefix_keys[layer], k], dim=2)
            v = torch.cat([piece.prefix_values[layer], v], dim=2)
            out[:, :, s:e] = sdpa(query[:, :, s:e], k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(1, 2).contiguous()


def _decode_attention(layer: int, query, key, value, layout: SharedPrefixLayout, scale: float):
    rows, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    per_kv, prefix_len = heads // kv_heads, layout.prefix_len
    m = per_kv * q_len
    # head h uses kv head h // per_kv (repeat_kv's layout): fold a kv head's queries into one matrix;
    # scale q rather than the scores (fewer values)
    q = query.reshape(rows, kv_heads, m, head_dim) * scale
    pk, pv = layout.prefix_keys[layer], layout.prefix_values[layer]
    prefix_scores = _slots_to_rows(torch.matmul(_rows_to_slots(q, layout), pk.transpose(-1, -2)), layout, m)
    prefix_scores = prefix_scores.view(rows, kv_heads, per_kv, q_len, prefix_len) + layout.prefix_bias
    dtype = torch.promote_types(query.dtype, torch.float32)
    prefix_probs, tail_out = [], []
    for b in layout.buckets:  # one softmax per bucket over [prefix | this bucket's tails]
        col = b.width + layout.generated
        b.keys[layer][:, :, col:col + q_len] = key[b.start:b.end]
        b.values[layer][:, :, col:col + q_len] = value[b.start:b.end]
        tk, tv = b.keys[layer][:, :, :col + q_len], b.values[layer][:, :, :col + q_len]
        tail_scores = torch.matmul(q[b.start:b.end], tk.transpose(-1, -2))
        tail_scores = tail_scores.view(b.end - b.start, kv_heads, per_kv, q_len, -1) + b.bias[..., :col + q_len]
        probs = torch.softmax(torch.cat([prefix_scores[b.start:b.end], tail_scores], dim=-1), dim=-1, dtype=dtype)
        probs = probs.to(query.dtype).view(b.end - b.start, kv_heads, m, -1)
        prefix_probs.append(probs[..., :prefix_len])
        tail_out.append(torch.matmul(probs[..., prefix_len:], tv))
    probs = prefix_probs[0] if len(prefix_probs) == 1 else torch.cat(prefix_probs)
    out = _slots_to_rows(torch.matmul(_rows_to_slots(probs, layout), pv), layout, m)
    out = out + (tail_out[0] if len(tail_out) == 1 else torch.cat(tail_out))
    return out.view(rows, heads, q_len, head_dim).transpose(1, 2).contiguous()


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)


@contextmanager
def shared_prefix_attention_on(model):
    """Switch the model's attention to `shared_prefix_attention` for the duration (restored after,
    also on error). Calls inside that pass no `shared_prefix` layout run SDPA as usual."""
    _register()
    configs = {id(c): c for c in (model.config, getattr(model.config, "get_text_config", lambda: None)()) if c}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = SHARED_PREFIX_ATTENTION
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
