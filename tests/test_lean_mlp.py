"""The lean SwiGLU forward: same outputs and gradients as the model's own MLP, fewer saved tensors."""

from __future__ import annotations

import copy

import torch

from instructmt.models.lean_mlp import enable_lean_swiglu, silu_mul


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).double()


def test_silu_mul_gradients_match_autograd():
    torch.manual_seed(1)
    g = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(silu_mul, (g, u))
    w = torch.randn(5, 7, dtype=torch.float64)
    ref = torch.autograd.grad((torch.nn.functional.silu(g) * u * w).sum(), (g, u))
    got = torch.autograd.grad((silu_mul(g, u) * w).sum(), (g, u))
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _loss_and_grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, ids) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    return total


def test_lora_model_is_unchanged_and_saves_less():
    from peft import LoraConfig, get_peft_model
    base = _tiny_llama()
    ref = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                                                        init_lora_weights=False))
    lean = copy.deepcopy(ref)
    assert enable_lean_swiglu(lean) == 2  # one MLP per layer
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(3))
    loss_ref, grads_ref = _loss_and_grads(ref, ids)
    loss_lean, grads_lean = _loss_and_grads(lean, ids)
    torch.testing.assert_close(loss_lean, loss_ref, rtol=0, atol=1e-12)
    assert grads_ref.keys() == grads_lean.keys() and grads_ref
    for n in grads_ref:
        torch.testing.assert_close(grads_lean[n], grads_ref[n], rtol=0, atol=1e-10, msg=n)
    for model in (ref, lean):  # only LoRA learns, as in training: frozen projections save nothing
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
    assert _saved_bytes(lean, ids) < _saved_bytes(ref, ids)
