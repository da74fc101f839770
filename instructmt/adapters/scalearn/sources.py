"""Reading frozen source LoRA adapters (PEFT format) into plain tensors per adapted module.

We read the files rather than stacking several adapters into one PeftModel because ScaLearn needs
all N deltas of a module at once (one fused matmul), and the base model must stay untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import InstructMTError

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class ScaLearnError(InstructMTError):
    """A source adapter or a saved ScaLearn model cannot be used."""


@dataclass
class SourceModule:
    lora_A: torch.Tensor  # (r, d_in)
    lora_B: torch.Tensor  # (d_out, r)
    scaling: float


@dataclass
class SourceAdapter:
    name: str
    path: Path  # the directory holding adapter_config.json
    modules: dict[str, SourceModule]
    fingerprint: str


def resolve_adapter_dir(path: str | Path) -> Path:
    """Accept the adapter directory itself or a run directory whose `model/` holds it."""
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise ScaLearnError(f"source adapter {str(p)!r}: no adapter_config.json there or in its model/ folder")


def fingerprint_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _alpha_for(module: str, config: dict) -> float:
    from peft.utils.other import get_pattern_key

    pattern = config.get("alpha_pattern") or {}
    key = get_pattern_key(list(pattern), module)
    return float(pattern.get(key, config.get("lora_alpha", 8)))


def load_source(path: str | Path, name: str) -> SourceAdapter:
    adapter_dir = resolve_adapter_dir(path)
    cfg_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ScaLearnError(f"source {name!r}: cannot read {cfg_path}: {e}") from None
    if config.get("peft_type") != "LORA":
        raise ScaLearnError(f"source {name!r} ({cfg_path}): field 'peft_type' is {config.get('peft_type')!r}; "
                            "ScaLearn combines LoRA adapters")
    for flag in ("use_dora", "lora_bias", "fan_in_fan_out"):
        if config.get(flag):
            raise ScaLearnError(f"source {name!r} ({cfg_path}): field {flag!r} is set; not supported by ScaLearn")
    weight_file = next((adapter_dir / f for f in WEIGHT_FILES if (adapter_dir / f).is_file()), None)
    if weight_file is None:
        raise ScaLearnError(f"source {name!r}: no adapter weights ({' or '.join(WEIGHT_FILES)}) in {adapter_dir}")
    if weight_file.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(weight_file))
    else:
        state = torch.load(str(weight_file), map_location="cpu", weights_only=True)

    halves: dict[str, dict[str, torch.Tensor]] = {}
    ignored = []
    for key, tensor in state.items():
        if ".lora_embedding_" in key or ".lora_magnitude_vector" in key:
            raise ScaLearnError(f"source {name!r} ({weight_file}): weight {key!r} is not a linear LoRA; "
                                "ScaLearn supports LoRA on linear layers only")
        m = _LORA_KEY.match(key)
        if m is None:
            ignored.append(key)
            continue
        halves.setdefault(m["module"], {})[m["which"]] = tensor
    if ignored:
        warnings.warn(f"ScaLearn source {name!r}: ignoring non-LoRA weights (e.g. {ignored[0]}); "
                      "they are not part of the scaled deltas", stacklevel=2)
    modules: dict[str, SourceModule] = {}
    for module, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise ScaLearnError(f"source {name!r} ({weight_file}): module {module!r} lacks lora_A or lora_B")
        a, b = pair["A"].float(), pair["B"].float()
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ScaLearnError(f"source {name!r}: module {module!r} has LoRA shapes {tuple(a.shape)} / "
                                f"{tuple(b.shape)}; only linear layers are supported")
        r = a.shape[0]
        alpha = _alpha_for(module, config)
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        modules[module] = SourceModule(lora_A=a, lora_B=b, scaling=scaling)
    if not modules:
        raise ScaLearnError(f"source {name!r}: {weight_file} holds no LoRA weights")
    return SourceAdapter(name=name, path=adapter_dir.resolve(), modules=modules,
                         fingerprint=fingerprint_file(weight_file))
