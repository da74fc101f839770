"""Causal-LM loss that never builds the (batch x length x vocab) logits.

A model's own loss projects every position through the LM head and keeps the fp32 logits, their
log-softmax and their gradient: for SmolLM2 (49,152 words) a batch of 4 x 400 tokens holds ~1 GB
of them, although only the target tokens (~10% of positions in SNI prompts) have a label. Here
the model runs with its LM head fed an empty slice (a forward pre-hook captures the final hidden
states instead), and the loss is computed on the labelled positions only, in chunks of
`chunk_size` tokens whose logits are recomputed in the backward pass. Memory for the head is then
O(chunk_size x vocab) and its FLOPs scale with the number of target tokens, not of all tokens.
Loss and gradients equal the plain `CrossEntropyLoss` ones (tests/test_loss.py).

cut-cross-entropy (Apple) does the same with Triton kernels; it has no CPU path, so this is the
plain-torch version. Models whose LM head is not a plain `nn.Linear` (a LoRA on `lm_head`, FSDP
flat parameters, soft-capped logits) fall back to the model's own loss.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..data.labels import IGNORE_INDEX


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Sum over tokens of -log softmax(h W^T + b)[target], chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int):
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[0], chunk_size):
            logits = _logits(hidden[s:s + chunk_size], weight, bias)
            tgt = targets[s:s + chunk_size]
            total += (torch.logsumexp(logits, dim=-1) - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk_size = chunk_size
        return total

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            h = hidden[s:s + ctx.chunk_size]
            g = torch.softmax(_logits(h, weight, bias), dim=-1)  # d(loss)/d(logits) = softmax - onehot
            g[torch.arange(g.shape[0], device=g.device), targets[s:s + ctx.chunk_size]] -= 1
            g *= grad_out
            if need_h:
                grad_h[s:s + ctx.chunk_size] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += g.t() @ h.float()
            if need_b:
                grad_b += g.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None)


def _logits(h, weight, bias):
    out = h @ weight.t().to(h.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.float()


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          bias: torch.Tensor | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """Summed cross-entropy of `targets` (N,) under logits `hidden (N, d) @ weight (V, d)^T + bias`,
    never holding more than `chunk_size` rows of logits."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    return _ChunkedCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


def chunked_head_supported(model) -> bool:
    """True when the output head is a plain linear layer we can read the full weight of."""
    head = _unwrap(model).get_output_embeddings()
    cfg = getattr(_unwrap(model), "config", None)
    return (type(head) is torch.nn.Linear and head.weight.dim() == 2
            and getattr(cfg, "final_logit_softcapping", None) is None
            and getattr(cfg, "logit_scale", None) in (None, 1.0))


def _unwrap(model):
    """The transformers model under DDP / peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def _captured_head_input(head: torch.nn.Module):
    """While active, the head is fed an empty slice of its input (so it computes nothing) and the
    full input is kept in `store['hidden']`."""
    store: dict = {}

    def pre_hook(_module, args):
        store["hidden"] = args[0]
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield store
    finally:
        handle.remove()


def causal_lm_loss(model, batch: dict, chunk_size: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of `batch` (the value a
    transformers causal LM returns as `.loss`), without materializing the logits.
    `model` is what the trainer calls (accelerate / DDP / peft wrappers are fine)."""
    head = _unwrap(model).get_output_embeddings()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with _captured_head_input(head) as store:
        model(**inputs, use_cache=False)
    hidden = store["hidden"]
    labels = batch["labels"].to(hidden.device)
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    h = hidden[:, :-1][keep]
    n = keep.sum()
    return chunked_cross_entropy(h, head.weight, shifted[keep], head.bias, chunk_size) / n.clamp(min=1)
