"""Quantized once-for-all LoRA (LLM-QFA, Yi et al. 2024): one training run, any per-layer
2/3/4-bit deployment. See docs/methods_qfa.md.

Trainer hooks (optional methods of the AdapterMethod, called if present):
- `calibrate(model, batches)` once after `apply` and before the optimizer's first step, with
  `cfg.adapter.options["calib_batches"]` training batches (GPTQ needs calibration activations;
  RTN ignores it);
- `on_step(model, step) -> dict` before each training forward: samples and activates a bit-width
  per layer; the returned dict (target / realised mean bits) belongs in that step's log record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from torch import nn

from ...errors import ConfigError
from ..base import AdapterConfig, AdapterMethod
from .layer import QFALinear
from .model import (QFAConfig, avg_bits, cache_dequantized_weights, calibrate, load_quantized_base, on_step,
                    parse_configuration, qfa_layers, set_configuration, state_of, uniform_configuration,
                    weight_bytes, wrap_model)
from .quant import QuantizedWeight, gptq_quantize, pack_codes, rtn_quantize, unpack_codes
from .sampler import BitSampler, TriangularSchedule, max_entropy_probs
from .saving import export_subnet, load_subnet, load_supernet, save_supernet
from .publishing import qfa_hub_extras

__all__ = ["QFAMethod", "QFAConfig", "QFALinear", "QuantizedWeight", "BitSampler", "TriangularSchedule",
           "max_entropy_probs", "rtn_quantize", "gptq_quantize", "pack_codes", "unpack_codes",
           "avg_bits", "weight_bytes", "calibrate", "on_step", "set_configuration", "parse_configuration",
           "uniform_configuration", "export_subnet", "load_subnet", "save_supernet", "load_supernet",
           "qfa_layers", "state_of", "wrap_model", "cache_dequantized_weights", "load_quantized_base"]


class QFAMethod(AdapterMethod):
    name = "qfa"
    routed = False

    def apply(self, model: nn.Module, cfg: AdapterConfig, task_names: list[str]) -> nn.Module:
        qcfg = QFAConfig.from_options(cfg.options or {})
        model = wrap_model(model, qcfg, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                           target_modules=cfg.target_modules,
                           quantize_now=qcfg.quantizer == "rtn" and not qcfg.quantized_base)
        if qcfg.quantized_base:
            load_quantized_base(model, qcfg.quantized_base)
        return model

    def calibrate(self, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> int:
        return calibrate(model, batches, max_batches=state_of(model).config.calib_batches)

    def on_step(self, model: nn.Module, step: int) -> dict:
        return on_step(model, step)

    def save(self, model: nn.Module, out_dir: str | Path) -> None:
        save_supernet(model, out_dir)

    def load(self, base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
        return load_supernet(base_model, adapter_dir)

    def hub_extras(self, run):  # a supernet is refused: only an exported subnet is published
        return qfa_hub_extras(run)


class QFASubnetMethod(AdapterMethod):
    """An exported single-configuration subnet (`instructmt qfa export`): load-only, so that
    `load_run` / `instructmt eval` work on the deployed model."""
    name = "qfa_subnet"
    self_contained = True  # load_run calls load(None, dir): the export holds the whole model

    def apply(self, model, cfg, task_names):
        raise ConfigError("qfa_subnet is a deployment format: train with method 'qfa', then `instructmt qfa export`")

    def save(self, model, out_dir):
        raise ConfigError("qfa_subnet models are written by `instructmt qfa export`")

    def load(self, base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
        model, _, _ = load_subnet(adapter_dir)
        return model

    def hub_extras(self, run):
        return qfa_hub_extras(run)
