"""Attention over a prompt prefix that many rows share, without copying it into every row.

Held-out prompts of one task share a long prefix (definition + demonstrations). Copying that
prefix's KV cache into every row (what a batched `generate` does, and what our first prefix-sharing
generator did) makes every decode step read the prefix once per row, and the cache's per-step
concatenation copy it again: on CPU that memory traffic cost as much as the weights. Here each
group's prefix keys/values are kept once (stacked over groups, padded to the longest prefix), each
row's cache holds only its own *tail* (its suffix, then its generated tokens), and attention
combines both under one softmax: scores of a row's queries against its group's prefix and against
its own tail are concatenated before the softmax, so the result is the attention over
prefix + tail, up to float summation order (this is the "cascade" / shared-prefix attention of
serving engines, written with plain torch matmuls; transformers has no such kernel for CPU).

It plugs into transformers' attention interface: `SHARED_PREFIX_ATTENTION` is registered with
`AttentionInterface`, the model's config is switched to it only inside `shared_prefix_attention_on`,
and the per-call layout travels in the forward's kwargs (`shared_prefix=SharedPrefixLayout`); a
call without it falls back to SDPA. Supported: decoder models whose attention is plain scaled
dot-product over (grouped) heads — no sliding window, no logit soft-capping, no ALiBi.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

SHARED_PREFIX_ATTENTION = "instructmt_shared_prefix"

# model types whose attention is the plain (GQA) softmax(QK^T * scaling) V this module computes
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "granite", "olmo", "olmo2", "smollm3"})


@dataclass
class SharedPrefixLayout:
    """What one forward call needs besides the rows' own (tail) cache.

    prefix_keys/values: per layer, (groups, kv_heads, prefix_len, head_dim): every group's prefix,
        padded on the right to the longest one.
    slot_of_row: (rows,) position of each row in the (groups x slots_per_group) grid, group-major:
        row r belongs to group slot_of_row[r] // slots_per_group.
    bias: (rows, 1, 1, queries, prefix_len + tail columns) additive mask (0 = visible, -inf =
        hidden), the same for every layer and head: padded prefix positions, left padding of the
        tails, and the causal / block-causal pattern among a row's own queries; columns past the
        tail's current length are ignored.
    tail_keys/tail_values: optional per-layer (rows, kv_heads, capacity, head_dim) buffers that hold
        the rows' tails (decode): the attention writes each call's new keys/values at column
        `tail_len` and attends to columns [0, tail_len + queries), so the model runs without a
        transformers cache and no step re-copies the tails (a `DynamicCache` concatenates them
        anew at every step). The caller advances `tail_len` after each forward.
    """

    prefix_keys: list[torch.Tensor]
    prefix_values: list[torch.Tensor]
    slot_of_row: torch.Tensor
    slots_per_group: int
    bias: torch.Tensor
    tail_keys: list[torch.Tensor] | None = None
    tail_values: list[torch.Tensor] | None = None
    tail_len: int = 0

    def __post_init__(self) -> None:
        self._index_slots()

    def _index_slots(self) -> None:
        # each grid slot's row (empty slots take row 0: computed, never read back), for gathers
        # with index_select, several times faster on CPU than scatter or advanced indexing
        grid = self.groups * self.slots_per_group
        self.row_of_slot = torch.zeros(grid, dtype=torch.long, device=self.slot_of_row.device)
        self.row_of_slot[self.slot_of_row] = torch.arange(len(self.slot_of_row), device=self.slot_of_row.device)

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Keep only these rows (finished rows leave the batch)."""
        self.slot_of_row = self.slot_of_row.index_select(0, keep)
        self.bias = self.bias.index_select(0, keep)
        if self.tail_keys is not None:
            self.tail_keys = [k.index_select(0, keep) for k in self.tail_keys]
            self.tail_values = [v.index_select(0, keep) for v in self.tail_values]
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
    """transformers attention function: query (rows, heads, q, d); key/value = the rows' tails
    (rows, kv_heads, tail, d). Returns (rows, q, heads, d) as every attention function does."""
    layout: SharedPrefixLayout | None = kwargs.get("shared_prefix")
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if layout.tail_keys is not None:  # the tails live in the layout's buffers: append, then attend
        end = layout.tail_len + q_len
        layout.tail_keys[module.layer_idx][:, :, layout.tail_len:end] = key
        layout.tail_values[module.layer_idx][:, :, layout.tail_len:end] = value
        key = layout.tail_keys[module.layer_idx][:, :, :end]
        value = layout.tail_values[module.layer_idx][:, :, :end]
    bias = layout.bias[..., :layout.prefix_len + key.shape[2]]
    per_kv = heads // kv_heads
    scale = scaling if scaling is not None else head_dim ** -0.5
    pk, pv = layout.prefix_keys[module.layer_idx], layout.prefix_values[module.layer_idx]
    if layout.groups == 1:  # one prefix (a prefill): plain SDPA over prefix + tail is faster here
        return _single_group_sdpa(query, key, value, pk, pv, bias, per_kv, scale)
    prefix_len, m = layout.prefix_len, per_kv * q_len
    # head h uses kv head h // per_kv (repeat_kv's layout): fold a kv head's queries into one matrix;
    # scale q rather than the scores (fewer values)
    q = query.reshape(rows, kv_heads, m, head_dim) * scale
    prefix_scores = _slots_to_rows(torch.matmul(_rows_to_slots(q, layout), pk.transpose(-1, -2)), layout, m)
    tail_scores = torch.matmul(q, key.transpose(-1, -2))
    scores = torch.cat([prefix_scores, tail_scores], dim=-1).view(rows, kv_heads, per_kv, q_len, -1)
    scores = scores + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32))
    probs = probs.to(query.dtype).view(rows, kv_heads, m, -1)
    out = _slots_to_rows(torch.matmul(_rows_to_slots(probs[..., :prefix_len], layout), pv), layout, m)
    out = out + torch.matmul(probs[..., prefix_len:], value)
    return out.view(rows, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def _single_group_sdpa(query, key, value, pk, pv, bias, per_kv: int, scale: float):
    rows, heads, q_len, head_dim = query.shape

    def full(prefix, tail):  # (rows, heads, prefix + tail, d), kv heads repeated as repeat_kv does
        kv = torch.cat([prefix.expand(rows, *prefix.shape[1:]), tail], dim=2)
        return kv[:, :, None].expand(rows, kv.shape[1], per_kv, *kv.shape[2:]).reshape(rows, heads, -1, head_dim)

    out = torch.nn.functional.scaled_dot_product_attention(query, full(pk, key), full(pv, value),
                                                           attn_mask=bias[:, 0].to(query.dtype), scale=scale)
    return out.transpose(1, 2).contiguous(), None


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
