"""Numbers users give us, checked where they enter (CLI flags, `--set`, YAML configs, mixture
YAML, library entry points): every error names the key (and its flag) and the allowed range.

Without this a 0 became a default (0 new tokens -> 128, 0 steps -> a full epoch), a negative size
raised deep inside torch, and NaN / inf / huge integers went through to the sampler."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ConfigError

SEED_MAX = 2**32 - 1          # numpy / torch seeding range
SIZE_MAX = 2**31 - 1          # any count, length or size
TEMPERATURE_RANGE = (0.01, 100.0)

# config key -> (min, max) for numbers; None: no bound on that side. Unlisted numbers are only
# required to be finite and within +-SIZE_MAX.
TRAIN_RANGES: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, SEED_MAX),
    "epochs": (1e-6, 1e6),
    "max_steps": (1, SIZE_MAX),
    "batch_size": (1, 1 << 20),
    "grad_accum": (1, 1 << 20),
    "learning_rate": (1e-12, 10.0),
    "weight_decay": (0.0, 10.0),
    "warmup_steps": (0, SIZE_MAX),
    "save_every": (0, SIZE_MAX),
    "keep_checkpoints": (0, 1 << 20),
    "log_every": (1, SIZE_MAX),
    "max_grad_norm": (0.0, 1e9),
    "model.tiny_d_model": (8, 1 << 16),
    "model.tiny_layers": (1, 1024),
    "model.tiny_vocab_size": (32, 1 << 22),
    "data.max_instances_per_task": (1, SIZE_MAX),
    "data.mixing_cap": (1, SIZE_MAX),
    "data.temperature": TEMPERATURE_RANGE,
    "data.max_source_length": (8, 1 << 20),
    "data.max_target_length": (1, 1 << 20),
    "data.eval_instances_per_task": (1, SIZE_MAX),
    "data.holdback_per_seen_task": (0, SIZE_MAX),
    "eval_every": (0, SIZE_MAX),
    "eval_instances": (1, SIZE_MAX),
    "eval_max_new_tokens": (1, 1 << 16),
    "eval_batch_size": (1, 1 << 16),
    "adapter.r": (1, 1 << 16),
    "adapter.alpha": (1e-6, 1e9),
    "adapter.dropout": (0.0, 0.99),
}

# config key -> the `instructmt train` flag that sets it (for messages)
TRAIN_FLAGS = {"max_steps": "--max-steps", "epochs": "--epochs", "batch_size": "--batch-size",
               "learning_rate": "--lr", "seed": "--seed", "save_every": "--save-every",
               "grad_accum": "--grad-accum", "adapter.r": "--rank"}


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def describe_range(lo: float | None, hi: float | None, integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        return f"{kind} in [{_fmt(lo)}, {_fmt(hi)}]"
    if lo is not None:
        return f"{kind} >= {_fmt(lo)}"
    if hi is not None:
        return f"{kind} <= {_fmt(hi)}"
    return kind


def check_number(value: Any, key: str, lo: float | None = None, hi: float | None = None, *,
                 integer: bool = True, flag: str | None = None, optional: bool = False) -> Any:
    """Return `value` if it is a finite number (an int when `integer`) within [lo, hi]; else raise
    a ConfigError naming `key` (and `flag`) and the allowed range."""
    if value is None and optional:
        return None
    name = f"{key} ({flag})" if flag else key
    want = describe_range(lo, hi, integer)
    shown = repr(value) if not isinstance(value, (int, float)) or isinstance(value, bool) else _shown(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be {want}, got {shown}")
    if integer and not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be {want}, got {shown}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be {want}, got {shown}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be {want}, got {shown}")
    return value


def _shown(value: float) -> str:
    s = repr(value)
    return s if len(s) <= 24 else s[:12] + "..." + f" ({len(s)} digits)"


def _number_fields(cfg: Any, prefix: str = ""):
    """(dotted key, value, is_int, optional) of every numeric field of a (nested) dataclass."""
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        tp = hints[f.name]
        if is_dataclass(value):
            yield from _number_fields(value, key + ".")
            continue
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = type(None) in get_args(tp)
        base = args[0] if optional and len(args) == 1 else tp
        if get_origin(base) is None and base in (int, float):
            yield key, value, base is int, optional


def validate_train_config(cfg: Any) -> Any:
    """Check every number of a TrainConfig (CLI flags, --set and YAML all end up here)."""
    for key, value, is_int, optional in _number_fields(cfg):
        lo, hi = TRAIN_RANGES.get(key, (-SIZE_MAX, SIZE_MAX))
        check_number(value, key, lo, hi, integer=is_int, flag=TRAIN_FLAGS.get(key), optional=optional)
    bools = [("resume", cfg.resume), ("per_task", cfg.per_task), ("group_by_length", cfg.group_by_length),
             ("model.trust_remote_code", cfg.model.trust_remote_code),
             ("model.use_chat_template", cfg.model.use_chat_template)]
    for key, value in bools:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    strings = [("output_dir", cfg.output_dir), ("model.name_or_path", cfg.model.name_or_path),
               ("adapter.method", cfg.adapter.method), ("data.encoding", cfg.data.encoding)]
    for key, value in strings:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return cfg


def validate_eval_args(*, max_instances: Any, batch_size: Any, max_new_tokens: Any, k: Any, seed: Any,
                       demo_budget: Any) -> None:
    """`instructmt eval` numbers (also checked for library callers of evaluate_run)."""
    check_number(max_instances, "max_instances", 1, SIZE_MAX, flag="--max-instances", optional=True)
    check_number(batch_size, "batch_size", 1, 1 << 16, flag="--batch-size")
    check_number(max_new_tokens, "max_new_tokens", 1, 1 << 16, flag="--max-new-tokens", optional=True)
    check_number(k, "k", 1, 256, flag="--k")
    check_number(seed, "seed", 0, SEED_MAX, flag="--seed")
    check_number(demo_budget, "demo_budget", 1, 1 << 20, flag="--demo-budget", optional=True)


def find_lone_surrogate(value: Any) -> tuple[str, str] | None:
    """(where, escape) of the first string holding a lone UTF-16 surrogate (not encodable text)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return where, f"\\u{ord(v[e.start]):04x}"
        elif isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
            stack.extend((where or "key", k) for k in v)
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return None


def check_flags(args: Any, rules: dict[str, tuple[float, float]]) -> None:
    """Range-check parsed CLI flags: `rules` maps an argparse dest to (min, max); an int bound means
    an integer flag. A flag left unset (None) is not checked."""
    for dest, (lo, hi) in rules.items():
        value = getattr(args, dest, None)
        flag = "--" + dest.replace("_", "-")
        check_number(value, dest, lo, hi, integer=isinstance(lo, int) and isinstance(hi, int), flag=flag,
                     optional=True)
