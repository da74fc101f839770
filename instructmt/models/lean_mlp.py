"""SwiGLU MLPs that keep two activations for backward instead of three.

`down(silu(gate(x)) * up(x))` as autograd records it saves gate(x) (for SiLU), silu(gate(x)) and
up(x) (for the product): three (tokens × intermediate) tensors per layer, the largest part of a
LoRA step's activation memory on Llama-style models (the frozen projections save nothing). The
fused product below saves gate(x) and up(x) and recomputes silu(gate(x)) in backward, an
elementwise op: same values, same gradients, a third less MLP activation memory. transformers has
no such option for its MLPs, so the model's MLP modules get this forward (per instance, the class
is untouched).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = grad * up * (sig * (1 + gate * (1 - sig)))  # d silu / d gate
        if ctx.needs_input_grad[1]:
            grad_up = grad * silu
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, saving only its two inputs for backward."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _SiluMul.apply(gate, up)
    return F.silu(gate) * up


def _is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _lean_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def enable_lean_swiglu(model: nn.Module) -> int:
    """Give every SwiGLU MLP of `model` (gate_proj / up_proj / down_proj with a SiLU act_fn, as in
    Llama, Mistral, Qwen2, SmolLM2) the lean forward. Returns how many modules changed; other MLPs
    are left alone."""
    n = 0
    for module in model.modules():
        if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")) and _is_silu(module.act_fn):
            module.forward = types.MethodType(_lean_forward, module)
            n += 1
    return n
