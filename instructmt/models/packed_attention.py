"""Attention that keeps packed examples apart (see `instructmt.data.packing`).

With `flash_attention_2` (GPU) transformers reads the varlen keys of a packed row itself. Elsewhere
`enable_packed_attention` switches the model to `instructmt_packed_sdpa`: plain SDPA run once per
example, causal, with no mask. transformers' own fallback for packed position ids under SDPA is
exact too, but builds a block-diagonal (T x T) mask and computes attention over the whole packed
row; one SDPA call per example does only each example's own causal square. transformers has no
varlen SDPA for CPU, hence this small function.
"""

from __future__ import annotations

import torch

PACKED_ATTENTION = "instructmt_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs):
    """Attention for packed rows: one causal SDPA call per example (segment boundaries from
    `cu_seq_lens_q`). Without them (ordinary padded batches, generation) it is transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    bounds = cu.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True,
            enable_gqa=groups > 1))
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    # padded batches and generation still need SDPA's masks
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def enable_packed_attention(model) -> str:
    """Make `model` (a transformers causal LM, possibly wrapped by peft) isolate packed examples.
    Returns the attention implementation in use. flash-attention kernels already handle varlen rows;
    eager / sdpa are switched to the per-example SDPA above."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = getattr(base.config, "_attn_implementation", None) or "eager"
    if impl.startswith("flash_attention") or impl == PACKED_ATTENTION:
        return impl
    _register()
    base.set_attn_implementation(PACKED_ATTENTION)
    return PACKED_ATTENTION
