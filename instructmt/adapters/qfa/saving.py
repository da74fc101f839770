"""Saving and loading a QFA supernet, and exporting / loading a single-configuration subnet (packed
quantized weights with their LoRAs, loadable without the base model)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Mapping

from safetensors.torch import load_model, save_model
from torch import nn

from ...errors import ConfigError
from ...io_safety import atomic_write_text
from ...rundir import RUN_META
from .layer import QFALinear
from .model import (HISTORY_FILE, SUBNET_FILE, SUBNET_META, SUPERNET_FILE, SUPERNET_META, QFAConfig, avg_bits,
                    finalize_rtn, lora_bytes_per_subnet, parse_configuration, qfa_layers, replace_module, state_of,
                    weight_bytes, wrap_model)


def _hf_config_save(model: nn.Module, out_dir: Path) -> None:
    if getattr(model, "config", None) is not None and hasattr(model.config, "save_pretrained"):
        model.config.save_pretrained(str(out_dir))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(str(out_dir))
        except Exception:  # noqa: BLE001 - a bad generation config must not block saving weights
            pass


def save_supernet(model: nn.Module, out_dir: str | Path) -> None:
    state = state_of(model)
    finalize_rtn(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / SUPERNET_FILE))
    atomic_write_text(out / SUPERNET_META, json.dumps(state.meta(), indent=2))
    if state.history:  # realised bit-widths per training step (the sampler's log)
        atomic_write_text(out / HISTORY_FILE, "\n".join(json.dumps(r) for r in state.history) + "\n")
    _hf_config_save(model, out)


def load_supernet(base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    d = Path(adapter_dir)
    meta_path = d / SUPERNET_META
    if not meta_path.is_file():
        raise ConfigError(f"{d}: not a QFA supernet directory ({SUPERNET_META} missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    cfg = QFAConfig(**meta["config"])
    wrap_model(base_model, cfg, r=meta["r"], alpha=meta["alpha"], dropout=meta["dropout"],
               linears=meta["linears"])
    state_of(base_model).quantized_with = meta.get("quantized_with", "")
    _load_weights(base_model, d / SUPERNET_FILE)
    return base_model


def _load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{path}: weights file missing")
    missing, unexpected = load_model(model, str(path), strict=False)
    missing = [m for m in missing if not m.endswith("fp_weight")]
    if missing or unexpected:
        raise ConfigError(f"{path}: weights do not match the model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


# ----------------------------------------------------------------------------- subnet export
def export_subnet(model: nn.Module, config: Mapping[str, int], out_dir: str | Path, tokenizer=None,
                  extra_meta: dict | None = None, run_meta: dict | None = None) -> dict:
    """Write a deployable single-configuration model: packed weights at the chosen bit-widths,
    their LoRAs, the unquantized rest of the model, the HF config (+ tokenizer). With `run_meta`
    (the source run's instructmt_run.json) the directory also loads with `load_run`, so
    `instructmt eval --model DIR` evaluates the subnet."""
    state = state_of(model)
    finalize_rtn(model)
    config = parse_configuration(model, dict(config))
    deploy = copy.deepcopy(model)
    for name, layer in qfa_layers(deploy).items():
        replace_module(deploy, name, layer.extract(config[state.linears[name]["unit"]]))
    deploy.qfa_state = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(deploy, str(out / SUBNET_FILE), metadata={"format": "pt"})
    layer_bits = {n: config[v["unit"]] for n, v in state.linears.items()}
    meta = {"configuration": config, "units": state.units, "layer_bits": layer_bits,
            "linears": state.linears, "group_size": state.config.group_size, "r": state.r,
            "alpha": state.alpha, "avg_bits": avg_bits(model, config),
            "weight_bytes": weight_bytes(model, config), "lora_bytes": lora_bytes_per_subnet(model),
            "file_bytes": (out / SUBNET_FILE).stat().st_size, **(extra_meta or {})}
    atomic_write_text(out / SUBNET_META, json.dumps(meta, indent=2))
    _hf_config_save(model, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if run_meta is not None:
        rm = {k: v for k, v in run_meta.items() if k != "base_saved"}
        rm.update({"method": "qfa_subnet", "base_saved": ".", "qfa_configuration": config,
                   "qfa_avg_bits": meta["avg_bits"]})
        atomic_write_text(out / RUN_META, json.dumps(rm, indent=2))
    return meta


def load_subnet(subnet_dir: str | Path):
    """(model, tokenizer or None, meta) from an `export_subnet` directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    d = Path(subnet_dir)
    meta_path = d / SUBNET_META
    if not meta_path.is_file():
        raise ConfigError(f"{d}: not an exported QFA subnet ({SUBNET_META} missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    hf_config = AutoConfig.from_pretrained(str(d))
    auto = AutoModelForSeq2SeqLM if getattr(hf_config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_config(hf_config)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, bits in meta["layer_bits"].items():
        lin = model.get_submodule(name)
        layer = QFALinear(lin.in_features, lin.out_features, (bits,), r=meta["r"], alpha=meta["alpha"],
                          group_size=meta["group_size"], bias=lin.bias)
        layer.active_bits = bits
        replace_module(model, name, layer)
    _load_weights(model, d / SUBNET_FILE)
    try:
        from transformers import GenerationConfig
        model.generation_config = GenerationConfig.from_pretrained(str(d))
    except OSError:
        pass
    tokenizer = None
    if any((d / f).exists() for f in ("tokenizer_config.json", "tokenizer.json", "spiece.model")):
        tokenizer = AutoTokenizer.from_pretrained(str(d))
    model.eval()
    return model, tokenizer, meta
