"""The chunked cross-entropy gives the loss and gradients of the model's own loss."""

from __future__ import annotations

import pytest
import torch

from instructmt.data.collator import CausalCollator
from instructmt.data.packing import PackedCausalCollator
from instructmt.models.packed_attention import enable_packed_attention
from instructmt.training.loss import causal_lm_loss, chunked_cross_entropy, chunked_head_supported

from test_packing import _loss_and_grads, _rows, _tiny_llama


@pytest.mark.parametrize("chunk", [1, 3, 1024])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_ce_matches_cross_entropy(chunk, with_bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    t = torch.randint(0, 11, (7,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.t() + (b if b is not None else 0), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref, [x for x in (h, w, b) if x is not None])
    out = chunked_cross_entropy(h, w, t, bias=b, chunk_size=chunk)
    grads = torch.autograd.grad(out, [x for x in (h, w, b) if x is not None])
    assert torch.allclose(out, ref.float(), rtol=1e-6)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-10)


def test_chunked_ce_gradcheck():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0, 5, 2, 2])
    # forward accumulates in fp32; compare the analytic backward with finite differences loosely
    assert torch.autograd.gradcheck(lambda a, b: chunked_cross_entropy(a, b, t, chunk_size=2).double(),
                                    (h, w), eps=1e-3, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("packed", [False, True])
def test_causal_lm_loss_matches_model_loss(packed):
    rows = _rows(seed=5)
    model = _tiny_llama()
    assert chunked_head_supported(model)
    padded = CausalCollator(pad_token_id=0)(rows)
    ref_loss, ref_grads = _loss_and_grads(model, padded)
    batch = padded
    if packed:
        enable_packed_attention(model)
        batch = PackedCausalCollator()(rows)
    model.zero_grad()
    loss = causal_lm_loss(model, batch, chunk_size=3)
    loss.backward()
    assert abs(float(loss) - float(ref_loss)) < 1e-6
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_grads[name], atol=1e-6, rtol=1e-5), name
    # the hook is gone afterwards: the model's own forward gives logits again
    assert model(**padded).logits.shape[-1] == 97
