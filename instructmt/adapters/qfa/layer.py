"""QFALinear: a linear layer whose frozen weight exists only as packed b-bit codes, one copy per
bit-width, each with its own LoRA (decoupled LoRA): `y = dequant_b(W) x + bias + s * B_b A_b x`.

The full-precision weight is dropped once quantized (the memory saving is real); the weight is
dequantized on the fly in every forward, never cached. `active_bits` picks the subnet path.
With `shared_lora=True` all bit-widths use a single LoRA (the ablation baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .quant import QuantizedWeight, dequantize, packed_nbytes, padded_in_features, quantize

SHARED = "shared"


class QFALinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bits: tuple[int, ...], *, r: int = 8,
                 alpha: int = 16, dropout: float = 0.0, group_size: int = 32, shared_lora: bool = False,
                 bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                 lora_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits = tuple(sorted(bits))
        self.group_size = group_size
        self.shared_lora = shared_lora
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.active_bits = self.bits[-1]
        self.cache_dequantized = False  # see weight_for; set by model.cache_dequantized_weights
        self._dequant_cache: tuple[int, torch.Tensor] | None = None
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        # Full-precision weight kept only until quantized (GPTQ needs calibration first).
        self.register_buffer("fp_weight", weight.detach() if weight is not None else None, persistent=False)
        # Models read `layer.weight.dtype` to pick the compute dtype (T5's wo): an empty marker
        # that follows `model.to(dtype)` answers that without holding any weight.
        self.register_buffer("dtype_marker", torch.empty(0, dtype=lora_dtype), persistent=False)
        n_groups = padded_in_features(in_features, group_size) // group_size
        n_codes = out_features * padded_in_features(in_features, group_size)
        for b in self.bits:
            self.register_buffer(f"qweight_{b}", torch.zeros(packed_nbytes(n_codes, b), dtype=torch.uint8))
            self.register_buffer(f"scales_{b}", torch.ones(out_features, n_groups, dtype=torch.float16))
            self.register_buffer(f"zeros_{b}", torch.zeros(out_features, n_groups, dtype=torch.float16))
        keys = [SHARED] if shared_lora else [str(b) for b in self.bits]
        self.lora_A = nn.ParameterDict({k: nn.Parameter(torch.empty(r, in_features, dtype=lora_dtype))
                                        for k in keys})
        self.lora_B = nn.ParameterDict({k: nn.Parameter(torch.zeros(out_features, r, dtype=lora_dtype))
                                        for k in keys})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's default: B = 0, so start = base

    @property
    def weight(self) -> torch.Tensor:
        return self.dtype_marker

    # -- quantization ---------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self.fp_weight is not None

    def quantize_from(self, weight: torch.Tensor, method: str = "rtn", hessian: torch.Tensor | None = None,
                      damp: float = 0.01) -> None:
        for b in self.bits:
            q = quantize(weight, b, self.group_size, method=method, hessian=hessian, damp=damp)
            self.set_quantized(q)
        self.fp_weight = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._dequant_cache = None
        # quantized codes loaded (checkpoint resume, supernet load): nothing left to calibrate
        if any(k.startswith(prefix + "qweight_") for k in state_dict):
            self.fp_weight = None

    def set_quantized(self, q: QuantizedWeight) -> None:
        getattr(self, f"qweight_{q.bits}").copy_(q.packed)
        getattr(self, f"scales_{q.bits}").copy_(q.scales)
        getattr(self, f"zeros_{q.bits}").copy_(q.zeros)
        self._dequant_cache = None

    def quantized(self, bits: int) -> QuantizedWeight:
        return QuantizedWeight(getattr(self, f"qweight_{bits}"), getattr(self, f"scales_{bits}"),
                               getattr(self, f"zeros_{bits}"), bits, self.group_size,
                               (self.out_features, self.in_features))

    def quant_nbytes(self, bits: int) -> int:
        return self.quantized(bits).nbytes

    def lora_key(self, bits: int) -> str:
        return SHARED if self.shared_lora else str(bits)

    def weight_for(self, bits: int, dtype: torch.dtype) -> torch.Tensor:
        if self.pending:
            raise RuntimeError("QFALinear used before quantization (call QFAMethod.calibrate or finalize)")
        if self.cache_dequantized:
            # Opt-in (evaluation / generation): unpacking a 135M model costs seconds per forward on
            # CPU, i.e. per generated token; keep the active bit-width's dense weight instead.
            cached = getattr(self, "_dequant_cache", None)
            if cached is not None and cached[0] == bits and cached[1].dtype == dtype:
                return cached[1]
            w = self._dequantize(bits, dtype)
            self._dequant_cache = (bits, w)
            return w
        self._dequant_cache = None
        return self._dequantize(bits, dtype)

    def _dequantize(self, bits: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(getattr(self, f"qweight_{bits}"), getattr(self, f"scales_{bits}"),
                          getattr(self, f"zeros_{bits}"), bits, self.group_size,
                          (self.out_features, self.in_features), dtype)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.active_bits
        if self.pending:  # calibration pass of GPTQ: run the full-precision layer
            return F.linear(x, self.fp_weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        w = self.weight_for(bits, x.dtype)
        y = F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        key = self.lora_key(bits)
        a, b = self.lora_A[key], self.lora_B[key]
        return y + (self.lora_dropout(x).to(a.dtype) @ a.t() @ b.t()).to(y.dtype) * self.scaling

    def extract(self, bits: int) -> "QFALinear":
        """A single-bit-width copy (the deployed layer) with this bit-width's LoRA."""
        out = QFALinear(self.in_features, self.out_features, (bits,), r=self.r, alpha=self.alpha,
                        group_size=self.group_size, shared_lora=False, bias=self.bias,
                        lora_dtype=next(iter(self.lora_A.values())).dtype)
        out.set_quantized(self.quantized(bits))
        key = self.lora_key(bits)
        with torch.no_grad():
            out.lora_A[str(bits)].copy_(self.lora_A[key])
            out.lora_B[str(bits)].copy_(self.lora_B[key])
        out.active_bits = bits
        return out

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, active={self.active_bits}, "
                f"group={self.group_size}, r={self.r}, shared_lora={self.shared_lora}")
