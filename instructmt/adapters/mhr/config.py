"""Typed MHR / Poly configuration and its sidecar file.

The adapter itself is saved as a standard peft *Poly* checkpoint (`adapter_config.json` with
`peft_type: POLY`), so stock `PeftModel.from_pretrained` can read it. What peft's PolyConfig has no
field for (the Gumbel switch, the router learning rate, task names) lives in `mhr_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...io_safety import atomic_write_text
from ...errors import ConfigError

SIDECAR_NAME = "mhr_config.json"


@dataclass
class MHRConfig:
    n_tasks: int = field(default=1, metadata={"help": "rows of the router Z (one per training task)"})
    n_skills: int = field(default=8, metadata={"help": "K: LoRA skills in each adapted linear's inventory"})
    n_splits: int = field(default=8, metadata={"help": "h: routing heads; 1 is Poly. Must divide d_in and d_out"})
    r: int = field(default=8, metadata={"help": "rank of every skill"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names to adapt; None uses peft's default for the model type"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input (peft's Poly has none)"})
    gumbel: bool = field(default=True, metadata={
        "help": "training routing is RelaxedBernoulli(temperature=1) samples; False uses sigmoid(Z) always"})
    router_lr: float = field(default=0.1, metadata={
        "help": "learning rate of the router Z (paper: 0.1, adapters 1e-3)"})
    task_names: list[str] = field(default_factory=list, metadata={"help": "router row i is task_names[i]"})

    def __post_init__(self) -> None:
        for name in ("n_tasks", "n_skills", "n_splits", "r"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"MHR option {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.task_names and len(self.task_names) != self.n_tasks:
            raise ConfigError(f"MHR: {len(self.task_names)} task names for n_tasks={self.n_tasks}")

    @classmethod
    def from_options(cls, options: dict[str, Any], **base: Any) -> "MHRConfig":
        """Build from `AdapterConfig.options` (unknown keys are an error, with the known ones listed)."""
        known = {f.name for f in fields(cls)}
        extra = set(options) - known
        if extra:
            raise ConfigError(f"unknown MHR option(s) {sorted(extra)}; known: {sorted(known)}")
        merged = {**base, **options}
        if isinstance(merged.get("gumbel"), str):
            merged["gumbel"] = merged["gumbel"].lower() in ("1", "true", "yes")
        for name in ("n_tasks", "n_skills", "n_splits", "r"):
            if name in merged:
                merged[name] = int(merged[name])
        for name in ("dropout", "router_lr"):
            if name in merged:
                merged[name] = float(merged[name])
        return cls(**merged)

    def to_peft(self, task_type: Any = None):
        from peft import PolyConfig

        return PolyConfig(task_type=task_type, r=self.r, target_modules=self.target_modules,
                          n_tasks=self.n_tasks, n_skills=self.n_skills, n_splits=self.n_splits)

    def save(self, out_dir: str | Path) -> None:
        path = Path(out_dir) / SIDECAR_NAME
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, adapter_dir: str | Path) -> "MHRConfig | None":
        path = Path(adapter_dir) / SIDECAR_NAME
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"file {path}: not valid JSON ({e})") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
