"""Group-wise weight quantization (round-to-nearest and GPTQ) and real bit-packing.

Layout: a weight W[out, in] is split along `in` into groups of `group_size` columns; each
(row, group) has an fp16 scale and an fp16 zero point (an integer in [0, 2^b - 1], exactly
representable). Codes are packed into a flat uint8 bit-stream at exactly `bits` bits per value
(3-bit codes: 8 codes in 3 bytes), so a 3-bit layer really costs 3/8 byte per weight plus its
group parameters. Dequantization is `(code - zero) * scale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


# ----------------------------------------------------------------------------- bit packing
def _block_shape(bits: int) -> tuple[int, int]:
    """(codes per block, bytes per block): the smallest run of codes that fills whole bytes."""
    g = math.gcd(bits, 8)
    return 8 // g, bits // g


def packed_nbytes(n_codes: int, bits: int) -> int:
    codes_per_block, bytes_per_block = _block_shape(bits)
    return math.ceil(n_codes / codes_per_block) * bytes_per_block


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2^bits) into a uint8 bit-stream of `packed_nbytes` bytes."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes (supported: {SUPPORTED_BITS})")
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"codes out of range for {bits} bits")
    codes_per_block, bytes_per_block = _block_shape(bits)
    pad = (-flat.numel()) % codes_per_block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    blocks = flat.view(-1, codes_per_block)
    shifts = torch.arange(codes_per_block, dtype=torch.int64) * bits
    words = (blocks << shifts).sum(dim=1)  # at most 56 bits per block: fits int64
    byte_shifts = torch.arange(bytes_per_block, dtype=torch.int64) * 8
    return ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `n_codes` codes as int64 (vectorised, no Python loop)."""
    codes_per_block, bytes_per_block = _block_shape(bits)
    by = packed.to(torch.int64).view(-1, bytes_per_block)
    byte_shifts = torch.arange(bytes_per_block, dtype=torch.int64, device=packed.device) * 8
    words = (by << byte_shifts).sum(dim=1)
    shifts = torch.arange(codes_per_block, dtype=torch.int64, device=packed.device) * bits
    codes = (words[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n_codes]


# ----------------------------------------------------------------------------- quantized tensors
@dataclass
class QuantizedWeight:
    """Packed codes + fp16 group parameters for one weight matrix at one bit-width."""
    packed: torch.Tensor   # uint8 [packed_nbytes(out * padded_in, bits)]
    scales: torch.Tensor   # fp16 [out, n_groups]
    zeros: torch.Tensor    # fp16 [out, n_groups]
    bits: int
    group_size: int
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zeros))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.packed, self.scales, self.zeros, self.bits, self.group_size, self.shape, dtype)


def padded_in_features(in_features: int, group_size: int) -> int:
    return math.ceil(in_features / group_size) * group_size


def dequantize(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
               group_size: int, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out_f, in_f = shape
    in_pad = padded_in_features(in_f, group_size)
    codes = unpack_codes(packed, bits, out_f * in_pad).view(out_f, in_pad // group_size, group_size)
    w = (codes.to(dtype) - zeros.to(dtype)[..., None]) * scales.to(dtype)[..., None]
    return w.reshape(out_f, in_pad)[:, :in_f]


def _pad_columns(w: torch.Tensor, group_size: int) -> torch.Tensor:
    pad = padded_in_features(w.shape[1], group_size) - w.shape[1]
    return torch.nn.functional.pad(w, (0, pad)) if pad else w


def group_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max params per row of `w` [..., group]: (scale, zero), both rounded to fp16.

    The range always contains 0 (as in GPTQ), so the zero point is an integer in [0, 2^b - 1].
    The scale is rounded to fp16 *before* codes are computed, so the stored scale is the one the
    codes were chosen for and the RTN error bound |w - w_hat| <= scale / 2 holds exactly.
    """
    qmax = 2 ** bits - 1
    lo = torch.clamp(w.amin(dim=-1), max=0.0)
    hi = torch.clamp(w.amax(dim=-1), min=0.0)
    exact = (hi - lo) / qmax
    scale16 = exact.to(torch.float16)
    # round the scale *up* to fp16, so qmax * scale still covers the whole range
    scale16 = torch.where(scale16.to(torch.float32) < exact,
                          torch.nextafter(scale16, torch.full_like(scale16, float("inf"))), scale16)
    scale = scale16.to(torch.float32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale + zero), 0, 2 ** bits - 1)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = 32) -> QuantizedWeight:
    """Round-to-nearest group-wise quantization: the simple baseline."""
    w = weight.detach().to(torch.float32)
    out_f, in_f = w.shape
    wg = _pad_columns(w, group_size).view(out_f, -1, group_size)
    scale, zero = group_params(wg, bits)
    codes = quantize_with(wg, scale[..., None], zero[..., None], bits).to(torch.int64)
    return QuantizedWeight(pack_codes(codes, bits), scale.to(torch.float16), zero.to(torch.float16),
                           bits, group_size, (out_f, in_f))


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 32,
                  damp: float = 0.01, block_size: int = 128) -> QuantizedWeight:
    """GPTQ (Frantar et al. 2023): column-by-column quantization with error feedback.

    `hessian` is X^T X (any positive multiple) over calibration inputs X [n, in]. Each column is
    quantized with its group's parameters (computed from the error-updated weights when the group
    starts), and its error, weighted by the inverse-Hessian Cholesky factor, is pushed onto the
    columns not yet quantized. Columns are processed in natural order (no act-order), so groups
    stay contiguous and share the RTN storage layout.
    """
    w = _pad_columns(weight.detach().to(torch.float32).clone(), group_size)
    out_f, in_f = weight.shape
    n = w.shape[1]
    h = torch.eye(n, dtype=torch.float64)
    h[:in_f, :in_f] = hessian.detach().to(torch.float64)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n, dtype=torch.float64)
    # Upper Cholesky factor of H^-1; add more damping if H is numerically indefinite.
    for extra in (0.0, 0.1, 1.0):
        try:
            hd = h + extra * torch.mean(torch.diag(h)) * torch.eye(n, dtype=torch.float64)
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)
            break
        except torch.linalg.LinAlgError:
            continue
    else:
        raise ValueError("GPTQ: calibration Hessian is not positive definite even after damping")
    hinv = hinv.to(torch.float32)

    block_size = max(group_size, (block_size // group_size) * group_size)
    n_groups = n // group_size
    codes = torch.zeros(out_f, n, dtype=torch.int64)
    scales = torch.zeros(out_f, n_groups)
    zeros = torch.zeros(out_f, n_groups)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                g = col // group_size
                scales[:, g], zeros[:, g] = group_params(w1[:, i:i + group_size], bits)
                scale, zero = scales[:, g], zeros[:, g]
            q = quantize_with(w1[:, i], scale, zero, bits)
            codes[:, col] = q.to(torch.int64)
            err = (w1[:, i] - (q - zero) * scale) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return QuantizedWeight(pack_codes(codes, bits), scales.to(torch.float16), zeros.to(torch.float16),
                           bits, group_size, (out_f, in_f))


def quantize(weight: torch.Tensor, bits: int, group_size: int = 32, method: str = "rtn",
             hessian: torch.Tensor | None = None, damp: float = 0.01) -> QuantizedWeight:
    if method == "rtn" or (method == "gptq" and hessian is None):
        return rtn_quantize(weight, bits, group_size)
    if method == "gptq":
        return gptq_quantize(weight, hessian, bits, group_size, damp=damp)
    raise ValueError(f"unknown quantizer {method!r} (rtn | gptq)")
