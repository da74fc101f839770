"""The QFA supernet: wrap a transformers model's linear layers in QFALinear, pick bit-widths per
layer (unit), save/load the supernet, and export/load a single-configuration subnet.

The model is modified in place (so `generate`, `config` and the HF forward signature keep
working); the supernet's bookkeeping lives in `model.qfa_state` (a plain object, not a module).
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ...io_safety import atomic_write_text
from ...errors import ConfigError
from .layer import QFALinear
from .sampler import BitSampler

SUPERNET_FILE = "qfa_supernet.safetensors"
SUPERNET_META = "qfa_config.json"
SUBNET_FILE = "model.safetensors"
SUBNET_META = "qfa_subnet.json"
HISTORY_FILE = "qfa_bit_history.jsonl"
_BLOCK_RE = re.compile(r"^(.*?\.(?:block|blocks|layers|layer|h)\.\d+)\.")
_SKIP = ("lm_head", "embed_out", "output_projection", "score", "classifier")


@dataclass
class QFAConfig:
    bits: list[int] = field(default_factory=lambda: [2, 3, 4], metadata={"help": "bit-widths of the supernet"})
    group_size: int = field(default=32, metadata={"help": "columns per quantization group"})
    quantizer: str = field(default="rtn", metadata={"help": "rtn | gptq (gptq needs calibrate())"})
    gptq_damp: float = field(default=0.01, metadata={"help": "GPTQ damping, fraction of mean Hessian diagonal"})
    calib_batches: int = field(default=8, metadata={"help": "training batches the trainer passes to calibrate()"})
    sampling: str = field(default="balanced", metadata={
        "help": "balanced (triangular-wave target mean) | uniform (ablation) | fixed"})
    period: int = field(default=8000, metadata={"help": "steps per period of the triangular target wave"})
    fixed_bits: int | None = field(default=None, metadata={"help": "bit-width for sampling=fixed"})
    shared_lora: bool = field(default=False, metadata={"help": "one LoRA shared by all bit-widths (ablation)"})
    quantized_base: str | None = field(default=None, metadata={
        "help": "reuse the packed codes of an earlier supernet (dir or qfa_supernet.safetensors) "
                "instead of quantizing again (one GPTQ calibration for several runs)"})
    granularity: str = field(default="block", metadata={
        "help": "block: one bit-width per transformer block | linear: per linear layer"})
    seed: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "QFAConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"adapter.options: unknown QFA option {unknown[0]!r} (known: {', '.join(sorted(names))})")
        cfg = cls(**dict(options))
        cfg.bits = sorted(int(b) for b in cfg.bits)
        if not cfg.bits or any(b < 1 or b > 8 for b in cfg.bits):
            raise ConfigError(f"adapter.options.bits: bit-widths must be in 1..8, got {cfg.bits}")
        if cfg.quantizer not in ("rtn", "gptq"):
            raise ConfigError(f"adapter.options.quantizer: expected rtn | gptq, got {cfg.quantizer!r}")
        if cfg.granularity not in ("block", "linear"):
            raise ConfigError(f"adapter.options.granularity: expected block | linear, got {cfg.granularity!r}")
        if len(cfg.bits) == 1:
            cfg.sampling, cfg.fixed_bits = "fixed", cfg.bits[0]
        return cfg


@dataclass
class QFAState:
    config: QFAConfig
    r: int
    alpha: int
    dropout: float
    linears: dict[str, dict]           # name -> {"in", "out", "bias", "unit"}
    units: list[str]
    sampler: BitSampler
    history: list[dict] = field(default_factory=list)
    current: dict[str, int] = field(default_factory=dict)
    calibrating: bool = False
    quantized_with: str = ""

    def meta(self) -> dict:
        return {"config": asdict(self.config), "quantized_with": self.quantized_with, "r": self.r,
                "alpha": self.alpha, "dropout": self.dropout, "linears": self.linears, "units": self.units}


# ----------------------------------------------------------------------------- wrapping
def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def target_linears(model: nn.Module, target_modules: Sequence[str] | None) -> list[str]:
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if target_modules:
            if leaf in target_modules or name in target_modules:
                out.append(name)
        elif leaf not in _SKIP:
            out.append(name)
    if not out:
        raise ConfigError(f"adapter.target_modules: no linear layer matches {target_modules!r}")
    return out


def unit_of(name: str, granularity: str) -> str:
    if granularity == "block":
        m = _BLOCK_RE.match(name)
        if m:
            return m.group(1)
    return name


def wrap_model(model: nn.Module, cfg: QFAConfig, *, r: int, alpha: int, dropout: float,
               target_modules: Sequence[str] | None = None, quantize_now: bool = True,
               linears: dict[str, dict] | None = None) -> nn.Module:
    """Replace target linears by QFALinear (in place); freeze everything else.

    quantize_now: RTN-quantize at once; False keeps the fp weight pending (GPTQ calibration), and
    `linears` given (loading) allocates empty buffers to be filled from a file.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = list(linears) if linears is not None else target_linears(model, target_modules)
    info: dict[str, dict] = {}
    lora_dtype = torch.float32
    for name in names:
        lin = model.get_submodule(name)
        if isinstance(lin, QFALinear):
            raise ConfigError(f"model already holds QFA layers ({name}); wrap a fresh base model")
        loading = linears is not None
        q = QFALinear(lin.in_features, lin.out_features, tuple(cfg.bits), r=r, alpha=alpha, dropout=dropout,
                      group_size=cfg.group_size, shared_lora=cfg.shared_lora, bias=lin.bias,
                      weight=None if loading else lin.weight, lora_dtype=lora_dtype).to(lin.weight.device)
        if not loading and quantize_now:
            q.quantize_from(lin.weight.detach().cpu(), "rtn")
        _set_module(model, name, q)
        info[name] = {"in": lin.in_features, "out": lin.out_features, "bias": lin.bias is not None,
                      "unit": unit_of(name, cfg.granularity)}
    units = list(dict.fromkeys(v["unit"] for v in info.values()))
    sampler = BitSampler(units, cfg.bits, mode=cfg.sampling, period=cfg.period, seed=cfg.seed,
                         fixed_bits=cfg.fixed_bits)
    model.qfa_state = QFAState(cfg, r, alpha, dropout, info, units, sampler,
                               quantized_with="rtn" if (quantize_now and linears is None) else "")
    set_configuration(model, {u: max(cfg.bits) for u in units})
    if any(layer.pending for layer in qfa_layers(model).values()):
        model.register_forward_pre_hook(_calibrate_on_first_forward, with_kwargs=True)
    return model


def _calibrate_on_first_forward(module: nn.Module, args: tuple, kwargs: dict):
    """GPTQ needs calibration inputs; if nobody called `calibrate` before the first forward
    (e.g. a trainer without the hook), calibrate on that first batch, then run it quantized."""
    state = getattr(module, "qfa_state", None)
    if state is None or state.calibrating or not any(m.pending for m in qfa_layers(module).values()):
        return None
    batch = dict(kwargs)
    if args and torch.is_tensor(args[0]):
        batch["input_ids"] = args[0]
    calibrate(module, [batch])
    return None


def qfa_layers(model: nn.Module) -> dict[str, QFALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QFALinear)}


def state_of(model: nn.Module) -> QFAState:
    state = getattr(model, "qfa_state", None)
    if state is None:
        raise ConfigError("model is not a QFA supernet (no qfa_state); train or load it with method 'qfa'")
    return state


# ----------------------------------------------------------------------------- configurations
def parse_configuration(model: nn.Module, spec: Any) -> dict[str, int]:
    """A configuration from a dict {unit: bits}, a list in unit order, a single int (uniform),
    a comma list "4,3,2,4", or a JSON file / JSON text holding any of those (or {"config": ...})."""
    state = state_of(model)
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        path = Path(text)
        if text.endswith(".json") or (len(text) < 4096 and path.is_file()):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read QFA configuration {path}: {e.strerror}") from None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError:
            try:
                spec = [int(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"QFA configuration {text!r}: expected JSON, an int or a comma list of bits") from None
    if isinstance(spec, dict) and "config" in spec:
        spec = spec["config"]
    if isinstance(spec, int):
        spec = [spec] * len(state.units)
    if isinstance(spec, list) and len(spec) == 1 and len(state.units) > 1:
        spec = spec * len(state.units)
    if isinstance(spec, list):
        if len(spec) != len(state.units):
            raise ConfigError(f"QFA configuration has {len(spec)} bit-widths but the supernet has "
                              f"{len(state.units)} layers ({', '.join(state.units)})")
        spec = dict(zip(state.units, spec))
    if not isinstance(spec, dict):
        raise ConfigError(f"QFA configuration: unsupported value {spec!r}")
    unknown = sorted(set(spec) - set(state.units))
    if unknown or set(spec) != set(state.units):
        bad = unknown[0] if unknown else sorted(set(state.units) - set(spec))[0]
        raise ConfigError(f"QFA configuration: layer {bad!r} unknown or missing")
    out = {u: int(spec[u]) for u in state.units}
    bad_bits = sorted({b for b in out.values() if b not in state.config.bits})
    if bad_bits:
        raise ConfigError(f"QFA configuration: bit-width {bad_bits[0]} not in the supernet's {state.config.bits}")
    return out


def set_configuration(model: nn.Module, config: Mapping[str, int]) -> None:
    state = state_of(model)
    for name, layer in qfa_layers(model).items():
        layer.active_bits = int(config[state.linears[name]["unit"]])
    state.current = dict(config)


def avg_bits(model: nn.Module, config: Mapping[str, int]) -> float:
    """Parameter-weighted mean bit-width of the quantized weights."""
    state = state_of(model)
    num = sum(v["in"] * v["out"] * config[v["unit"]] for v in state.linears.values())
    den = sum(v["in"] * v["out"] for v in state.linears.values())
    return num / den


def weight_bytes(model: nn.Module, config: Mapping[str, int]) -> int:
    """Bytes of the quantized linear weights under `config`: packed codes + fp16 scales/zeros."""
    state = state_of(model)
    layers = qfa_layers(model)
    return sum(layers[n].quant_nbytes(config[v["unit"]]) for n, v in state.linears.items())


def lora_bytes_per_subnet(model: nn.Module) -> int:
    total = 0
    for layer in qfa_layers(model).values():
        a = next(iter(layer.lora_A.values()))
        b = next(iter(layer.lora_B.values()))
        total += a.numel() * a.element_size() + b.numel() * b.element_size()
    return total


def cache_dequantized_weights(model: nn.Module, enabled: bool = True) -> None:
    """Keep each layer's dequantized weight for its active bit-width (memory: one dense copy of
    the quantized layers) instead of unpacking it in every forward — for evaluation/generation,
    where the same configuration runs many forwards. Disabling drops the copies."""
    for layer in qfa_layers(model).values():
        layer.cache_dequantized = enabled
        if not enabled:
            layer._dequant_cache = None


def load_quantized_base(model: nn.Module, path: str | Path) -> int:
    """Fill the pending layers' packed codes from an earlier supernet's file (its `qweight_b`,
    `scales_b`, `zeros_b` buffers), so one GPTQ calibration serves many runs. Returns the number
    of layers filled; bit-widths the file lacks raise (LoRA weights in the file are ignored)."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / SUPERNET_FILE
    if not p.is_file():
        raise ConfigError(f"adapter.options.quantized_base: {p} not found (a {SUPERNET_FILE} or its directory)")
    state = state_of(model)
    meta_path = p.parent / SUPERNET_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if int(meta.get("config", {}).get("group_size", state.config.group_size)) != state.config.group_size:
            raise ConfigError(f"adapter.options.quantized_base: {p} uses another group_size")
        state.quantized_with = meta.get("quantized_with", "") or "loaded"
    filled = 0
    with safe_open(str(p), framework="pt") as f:
        keys = set(f.keys())
        for name, layer in qfa_layers(model).items():
            for b in layer.bits:
                need = [f"{name}.{kind}_{b}" for kind in ("qweight", "scales", "zeros")]
                missing = [k for k in need if k not in keys]
                if missing:
                    raise ConfigError(f"adapter.options.quantized_base: {p} has no {missing[0]}")
                for k in need:
                    getattr(layer, k.rsplit(".", 1)[1]).copy_(f.get_tensor(k))
            layer.fp_weight = None
            layer._dequant_cache = None
            filled += 1
    return filled


def uniform_configuration(model: nn.Module, bits: int) -> dict[str, int]:
    return {u: bits for u in state_of(model).units}


# ----------------------------------------------------------------------------- training hooks
def on_step(model: nn.Module, step: int) -> dict[str, float]:
    """Sample a bit-width per layer for this step, activate it, and log the realised mean."""
    state = state_of(model)
    config = state.sampler.sample(step)
    set_configuration(model, config)
    record = {"step": step, "qfa_target_bits": round(state.sampler.target(step), 4),
              "qfa_mean_bits": sum(config.values()) / len(config),
              "qfa_avg_bits": round(avg_bits(model, config), 4)}
    state.history.append(record)
    return record


def finalize_rtn(model: nn.Module) -> None:
    """Quantize layers still waiting for GPTQ calibration with RTN (e.g. saved before any forward)."""
    pending = [layer for layer in qfa_layers(model).values() if layer.pending]
    if pending:
        warnings.warn(f"QFA: {len(pending)} layer(s) were never calibrated; using RTN quantization for them")
    for layer in pending:
        layer.quantize_from(layer.fp_weight.detach().cpu(), "rtn")
    if pending:
        state_of(model).quantized_with = "rtn"


def _model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict:
    keep = ("input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask")
    return {k: v.to(device) for k, v in batch.items() if k in keep and torch.is_tensor(v)}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Mapping[str, Any]], max_batches: int | None = None) -> int:
    """GPTQ: accumulate X^T X of every pending layer's inputs over calibration batches (one
    full-precision pass), then quantize each layer at each bit-width. Returns batches used."""
    state = state_of(model)
    layers = {n: m for n, m in qfa_layers(model).items() if m.pending}
    if not layers:
        return 0
    hessians = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()}

    def hook(name):
        def fn(module, args):
            x = args[0].detach().reshape(-1, module.in_features).to(torch.float64).cpu()
            hessians[name] += x.t() @ x
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    used = 0
    state.calibrating = True
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            model(**_model_inputs(batch, device))
            used += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        state.calibrating = False
    method = "gptq" if used else "rtn"
    state.quantized_with = method
    for n, m in layers.items():
        m.quantize_from(m.fp_weight.detach().cpu(), method, hessian=hessians[n], damp=state.config.gptq_damp)
    return used


# ----------------------------------------------------------------------------- save / load supernet
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
        _set_module(deploy, name, layer.extract(config[state.linears[name]["unit"]]))
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
        from ...models.loading import RUN_META
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
        _set_module(model, name, layer)
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
