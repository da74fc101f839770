"""The ScaLearn linear layer: a frozen base linear plus N frozen LoRA deltas scaled by a learned ω.

    y = W x + Σ_i ω_i ⊙ (B_i A_i x) · s_i

Computed as one rank-(N·r) LoRA whose B is scaled by ω: `h = A_cat x` (N·r features) then
`y += B_ω h` with `B_ω[:, i·r:(i+1)·r] = diag(ω_i) B_i s_i`. Gradients reach ω only; the same
expression folds into W for inference (`merge`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ScaLearnLinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor,
                 scaling: torch.Tensor, omega_bank: nn.ParameterDict, omega_key: str, omega_dropout: float):
        """lora_A: (N, r, d_in); lora_B: (N, d_out, r); scaling: (N,). This layer's ω is
        `omega_bank[omega_key]`, shaped (N, d_out) or (N,): the bank belongs to the model because
        ScaLearn++ shares one ω across layers (held in a list so it is not registered twice)."""
        super().__init__()
        n, r, d_in = lora_A.shape
        if lora_B.shape != (n, base_layer.out_features, r) or d_in != base_layer.in_features:
            raise ValueError(f"ScaLearn shapes A{tuple(lora_A.shape)} B{tuple(lora_B.shape)} do not fit "
                             f"linear {base_layer.in_features}->{base_layer.out_features}")
        self.base_layer = base_layer
        self.num_sources, self.rank = n, r
        # Frozen source weights: non-persistent buffers, so they move with .to() but never train
        # and never enter the base model's state dict (they are saved by reference).
        dtype = torch.float32
        self.register_buffer("lora_A", lora_A.to(dtype).reshape(n * r, d_in).contiguous(), persistent=False)
        self.register_buffer("lora_B", lora_B.to(dtype).contiguous(), persistent=False)
        self.register_buffer("scaling", scaling.to(dtype), persistent=False)
        self._omega_bank = [omega_bank]
        self.omega_key = omega_key
        self.omega_dropout = float(omega_dropout)
        self.merged = False

    @property
    def omega(self) -> torch.Tensor:
        """(N, d_out) or (N, 1)."""
        w = self._omega_bank[0][self.omega_key]
        return w if w.dim() == 2 else w.unsqueeze(-1)

    def scaled_B(self, omega: torch.Tensor) -> torch.Tensor:
        """(d_out, N·r): source B's scaled per source (and per output dim) by ω and LoRA scaling."""
        weights = omega.to(self.lora_B.dtype) * self.scaling[:, None]  # (N, d_out) or (N, 1)
        b = self.lora_B * weights[:, :, None]                         # (N, d_out, r)
        return b.permute(1, 0, 2).reshape(b.shape[1], -1)

    def delta_weight(self) -> torch.Tensor:
        """Σ_i diag(ω_i) B_i A_i s_i — the whole update as one (d_out, d_in) matrix."""
        return self.scaled_B(self.omega) @ self.lora_A

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return out
        omega = F.dropout(self.omega, p=self.omega_dropout, training=self.training)
        b = self.scaled_B(omega)
        h = F.linear(x.to(self.lora_A.dtype), self.lora_A)
        return out + F.linear(h, b).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.base_layer.weight
            w.add_(self.delta_weight().to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base_layer.weight
            w.sub_(self.delta_weight().to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return (f"sources={self.num_sources}, rank={self.rank}, omega={tuple(self.omega.shape)}, "
                f"omega_dropout={self.omega_dropout}")
