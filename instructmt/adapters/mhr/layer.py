"""An MHR-adapted linear layer: peft's Poly layer (same parameters, same checkpoint) with a fast forward.

Parameters per adapted linear (d_in -> d_out), exactly peft's Poly layout:
  poly_lora_A[adapter]                 (h, K, d_in/h, r)   Kaiming-uniform
  poly_lora_B[adapter]                 (h, K, r, d_out/h)  zeros
  poly_router[adapter].module_logits   (T, h*K)            U(-1e-3, 1e-3), viewed as Z (T, h, K)

Forward: y = W x + x Â B̂ / r with Â, B̂ mixed in parameter space from the task's routing weights.

Why it is fast: peft mixes one (Â, B̂) per *example* and syncs the host in every layer
(`task_ids.max().item()`). Here the routing plan (distinct task ids, and each example's index into
them) is computed once per model forward and shared by all layers; each layer mixes once per
*distinct* task; a batch of one task runs two plain matmuls, exactly like LoRA; a mixed batch
gathers per-example mixed matrices for one pair of batched matmuls. The 1/r scale is folded into
B̂ (a small matrix) instead of the (tokens x d_out) output. No host sync happens inside a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.poly.layer import Linear as PolyLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import ConfigError, InstructMTError

EPS = 1e-12


class RoutingError(InstructMTError, ValueError):
    """task_ids missing, out of range, or not matching the batch."""


@dataclass
class RoutingPlan:
    """The distinct tasks of a batch and each example's index into them (computed once per forward)."""

    unique: torch.Tensor          # (U,) sorted distinct task ids
    inverse: torch.Tensor | None  # (N,) index of each example's task in `unique`; None: every row is unique[0]
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_task_ids(cls, task_ids: Any, n_tasks: int) -> "RoutingPlan":
        ids = torch.as_tensor(task_ids).long().reshape(-1)
        if ids.numel() == 0:
            raise RoutingError("task_ids is empty")
        # One host sync per model forward (none when ids live on the CPU, as from a collator).
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n_tasks:
            raise RoutingError(f"task id {hi if hi >= n_tasks else lo} out of range: the router has "
                               f"{n_tasks} task rows (add a row with add_task for a new task)")
        if lo == hi:
            return cls(unique=ids[:1].clone(), inverse=None)
        unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        return cls(unique=unique, inverse=inverse)

    @classmethod
    def single(cls, task_id: int = 0) -> "RoutingPlan":
        return cls(unique=torch.tensor([task_id], dtype=torch.long), inverse=None)

    @property
    def n_unique(self) -> int:
        return int(self.unique.numel())

    def unique_on(self, device: torch.device) -> torch.Tensor:
        key = ("u", device)
        if key not in self._cache:
            self._cache[key] = self.unique.to(device, non_blocking=True)
        return self._cache[key]

    def inverse_for(self, rows: int, device: torch.device) -> torch.Tensor:
        """Per-row index into `unique`; repeats each example's entry when generation expands the batch
        (beam search / num_return_sequences use repeat_interleave on the batch dimension)."""
        key = ("i", rows, device)
        if key not in self._cache:
            inv = self.inverse
            n = inv.numel()
            if rows != n:
                if rows % n:
                    raise RoutingError(f"batch has {rows} rows but {n} task ids were given")
                inv = inv.repeat_interleave(rows // n)
            self._cache[key] = inv.to(device, non_blocking=True)
        return self._cache[key]


class RoutingState:
    """Shared by all MHR layers of one model: the plan of the current forward / generate call."""

    def __init__(self) -> None:
        self.plan: RoutingPlan | None = None


def routing_probabilities(logits: torch.Tensor, sample: bool) -> torch.Tensor:
    """α = ẑ / (Σ_k ẑ + 1e-12) over the last (skill) axis.

    sample=True draws ẑ ~ RelaxedBernoulli(temperature=1, logits).rsample(), written out
    (logistic noise, then sigmoid) to avoid building a distribution object in every layer;
    it consumes the same uniform draws as torch's RelaxedBernoulli. sample=False: ẑ = sigmoid(logits).
    """
    if sample:
        tiny = torch.finfo(logits.dtype).eps
        u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(tiny, 1 - tiny)
        z = torch.sigmoid(logits + u.log() - (-u).log1p())
    else:
        z = torch.sigmoid(logits)
    return z / (z.sum(dim=-1, keepdim=True) + EPS)


def check_divisible(in_features: int, out_features: int, n_splits: int, where: str = "") -> None:
    bad = [f"{name}={v}" for name, v in (("d_in", in_features), ("d_out", out_features)) if v % n_splits]
    if bad:
        at = f" at module {where!r}" if where else ""
        raise ConfigError(f"MHR n_splits={n_splits} must divide d_in and d_out of every adapted linear, "
                          f"but {' and '.join(bad)}{at}; choose n_splits dividing both (or n_splits=1: Poly)")


def mix_stacked(alpha: torch.Tensor, A: torch.Tensor, B: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-space mixing for G layers of one shape at once.

    alpha (G, U, h, K), A (G, h, K, d_in/h, r), B (G, h, K, r, d_out/h) ->
    Â (G, U, d_in, r) with heads concatenated along d_in, B̂/r (G, U, r, d_out) with heads along d_out.
    """
    g, u, h, k = alpha.shape
    dh_in, dh_out = A.shape[3], B.shape[4]
    w = alpha.permute(0, 2, 1, 3).reshape(g * h, u, k)                          # (G·h, U, K)
    a = torch.bmm(w, A.reshape(g * h, k, dh_in * r))                            # (G·h, U, d_in/h·r)
    a_hat = a.view(g, h, u, dh_in, r).transpose(1, 2).reshape(g, u, h * dh_in, r)
    b = torch.bmm(w * (1.0 / r), B.reshape(g * h, k, r * dh_out))               # (G·h, U, r·d_out/h)
    b_hat = b.view(g, h, u, r, dh_out).permute(0, 2, 3, 1, 4).reshape(g, u, r, h * dh_out)
    return a_hat, b_hat


def mix_group(layers: list["MHRLinear"], adapter: str, plan: RoutingPlan, sample: bool) -> None:
    """Mix Â, B̂ for many same-shaped layers with a handful of batched ops (instead of ~15 per layer),
    and hand each layer its slice for the current plan."""
    first = layers[0]
    h, k = first.n_splits[adapter], first.n_skills[adapter]
    device = first.poly_lora_A[adapter].device
    logits = torch.stack([layer.poly_router[adapter].module_logits for layer in layers])  # (G, T, h·K)
    sel = logits.index_select(1, plan.unique_on(device))
    alpha = routing_probabilities(sel.view(len(layers), -1, h, k), sample=sample)
    params = [layer.poly_lora_A[adapter] for layer in layers] + [layer.poly_lora_B[adapter] for layer in layers]
    r, n = first.r[adapter], len(layers)

    def stack_and_mix(alpha_, *p):
        return mix_stacked(alpha_, torch.stack(p[:n]), torch.stack(p[n:]), r)

    if torch.is_grad_enabled() and (alpha.requires_grad or any(p.requires_grad for p in params)):
        # recompute the stacking in backward instead of keeping a copy of every skill for it
        a_hat, b_hat = checkpoint(stack_and_mix, alpha, *params, use_reentrant=False)
    else:
        a_hat, b_hat = stack_and_mix(alpha, *params)
    if plan.n_unique == 1:  # one task: hand out plain (d_in, r), (r, d_out) matrices
        a_hat, b_hat = a_hat.squeeze(1), b_hat.squeeze(1)
    # unbind, not a_hat[i]: one backward node for all slices (indexing would allocate a full-size
    # zero gradient per layer, quadratic in the number of layers)
    for layer, a, b in zip(layers, a_hat.unbind(0), b_hat.unbind(0)):
        layer.__dict__["_mhr_mixed"] = (plan, adapter, a, b)


class MHRLinear(PolyLinear):
    """peft's Poly `Linear` (inherits parameters, init and save/load) with the fast MHR forward."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, poly_config, *,
                 state: RoutingState | None = None, dropout: float = 0.0, gumbel: bool = True,
                 where: str = "", **kwargs: Any) -> None:
        base = base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer
        if isinstance(base, nn.Linear):
            check_divisible(base.in_features, base.out_features, poly_config.n_splits, where)
        super().__init__(base_layer, adapter_name, poly_config, **kwargs)
        self.mhr_state = state if state is not None else RoutingState()
        self.mhr_gumbel = gumbel
        self.mhr_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def update_layer(self, adapter_name, config, inference_mode: bool = False, **kwargs):
        check_divisible(self.in_features, self.out_features, config.n_splits)
        super().update_layer(adapter_name, config, inference_mode=inference_mode, **kwargs)

    # -- routing -----------------------------------------------------------------------------
    def _plan(self, task_ids: Any, adapter: str) -> RoutingPlan:
        if isinstance(task_ids, RoutingPlan):
            return task_ids
        if task_ids is not None:  # called directly or via peft's per-layer hooks
            return RoutingPlan.from_task_ids(task_ids, self.n_tasks[adapter])
        if self.mhr_state.plan is None:
            raise RoutingError("MHR layer got no task_ids: pass task_ids=<LongTensor, one per example> "
                               "to the model's forward / generate")
        return self.mhr_state.plan

    def mixing_weights(self, adapter: str, task_ids: torch.Tensor) -> torch.Tensor:
        """α for the given task ids: (len(task_ids), h, K); sampled in training when Gumbel is on."""
        h, k = self.n_splits[adapter], self.n_skills[adapter]
        logits = self.poly_router[adapter].module_logits[task_ids].view(-1, h, k)
        return routing_probabilities(logits, sample=self.training and self.mhr_gumbel)

    def mixed_matrices(self, adapter: str, plan: RoutingPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """(Â, B̂/r) per distinct task: (U, d_in, r) and (U, r, d_out); (d_in, r) and (r, d_out) when U = 1.

        Uses what the tuner mixed for all layers at once at the start of the forward when present
        (`mix_group`), else mixes this layer alone.
        """
        pre = self.__dict__.get("_mhr_mixed")
        if pre is not None and pre[0] is plan and pre[1] == adapter:
            return pre[2], pre[3]
        A, B = self.poly_lora_A[adapter], self.poly_lora_B[adapter]
        alpha = self.mixing_weights(adapter, plan.unique_on(A.device))
        a_hat, b_hat = mix_stacked(alpha[None], A[None], B[None], self.r[adapter])
        if plan.n_unique == 1:
            return a_hat.view(self.in_features, -1), b_hat.view(-1, self.out_features)
        return a_hat[0], b_hat[0]

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, task_ids: Any = None, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        plan = None
        for adapter in self.active_adapters:
            if adapter not in self.poly_lora_A:
                continue
            plan = plan or self._plan(task_ids, adapter)
            a_hat, b_hat = self.mixed_matrices(adapter, plan)
            xa = self.mhr_dropout(x)
            if xa.dtype != a_hat.dtype and not torch.is_autocast_enabled(xa.device.type):
                xa = xa.to(a_hat.dtype)  # under autocast the matmuls pick the dtype; no extra copy
            if plan.n_unique == 1:
                delta = (xa @ a_hat) @ b_hat  # LoRA's cost: two GEMMs over all tokens
            else:
                rows = x.shape[0]
                inv = plan.inverse_for(rows, a_hat.device)
                flat = xa.reshape(rows, -1, self.in_features)
                delta = torch.bmm(torch.bmm(flat, a_hat.index_select(0, inv)), b_hat.index_select(0, inv))
                delta = delta.reshape(*x.shape[:-1], self.out_features)
            result = result + delta.to(result.dtype)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "mhr." + super().__repr__()
