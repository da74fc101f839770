"""ScaLearn configuration: which source adapters to combine and how ω is shaped.

ScaLearn (Frohmann et al. 2024) transfers to a target task by learning only a scaling ω of frozen
source adapters' outputs: each adapted module computes `W x + Σ_i ω_i ⊙ Δ_i(x)` where `Δ_i` is the
i-th source LoRA's delta. The variants differ only in how ω is shaped and shared (see VARIANTS).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ...io_safety import atomic_write_text
from ...errors import ConfigError


@dataclass(frozen=True)
class VariantSpec:
    """How ω is shaped: `per_dim` gives one weight per output feature (else one scalar);
    `shared` shares ω across layers (ScaLearn++) instead of one ω per adapted module."""

    per_dim: bool
    shared: bool
    default_dropout: float


VARIANTS: dict[str, VariantSpec] = {
    # ω: (N, d_out) for every adapted module
    "scalearn": VariantSpec(per_dim=True, shared=False, default_dropout=0.3),
    # ω: (N, 1) for every adapted module
    "uniform": VariantSpec(per_dim=False, shared=False, default_dropout=0.3),
    # ω: (N, d_out) shared by all modules with the same leaf name (e.g. every "q") and output size
    "pp": VariantSpec(per_dim=True, shared=True, default_dropout=0.3),
    # ω: (N,) shared by every adapted module of the model
    "uniform-pp": VariantSpec(per_dim=False, shared=True, default_dropout=0.0),
}

VARIANT_ALIASES = {"scalearn++": "pp", "scalearn-pp": "pp", "uniform++": "uniform-pp",
                   "scalearnuniform": "uniform", "scalearnuniform++": "uniform-pp"}


def canonical_variant(name: str) -> str:
    key = name.strip().lower()
    key = VARIANT_ALIASES.get(key, key)
    if key not in VARIANTS:
        import difflib
        near = difflib.get_close_matches(key, list(VARIANTS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown ScaLearn variant {name!r}{hint}; choose one of {', '.join(VARIANTS)}")
    return key


@dataclass
class ScaLearnConfig:
    sources: list[str] = field(default_factory=list, metadata={
        "help": "source LoRA adapter directories (PEFT format), one per source task"})
    source_names: list[str] | None = field(default=None, metadata={
        "help": "names of the sources (default: derived from the directory names)"})
    variant: str = field(default="scalearn", metadata={"help": "scalearn | uniform | pp | uniform-pp"})
    init_mean: float | None = field(default=None, metadata={"help": "mean of the ω init (default 2/N)"})
    init_std: float = field(default=1e-3, metadata={"help": "std of the ω init"})
    omega_dropout: float | None = field(default=None, metadata={
        "help": "dropout on ω during training (default 0.3; 0 for uniform-pp)"})
    source_fingerprints: list[str] | None = field(default=None, metadata={
        "help": "sha256 prefixes of the source weight files, checked on reload (filled in automatically)"})

    def __post_init__(self) -> None:
        self.variant = canonical_variant(self.variant)
        self.sources = [str(s) for s in self.sources]
        if not self.sources:
            raise ConfigError("ScaLearn needs at least one source adapter (option 'sources')")
        if self.source_names is None:
            self.source_names = [default_source_name(s) for s in self.sources]
        if len(self.source_names) != len(self.sources):
            raise ConfigError(f"ScaLearn: {len(self.sources)} sources but {len(self.source_names)} source names")
        if len(set(self.source_names)) != len(self.source_names):
            raise ConfigError(f"ScaLearn: duplicate source names {self.source_names}")
        if self.omega_dropout is not None and not 0.0 <= self.omega_dropout < 1.0:
            raise ConfigError(f"ScaLearn: omega_dropout must be in [0, 1), got {self.omega_dropout}")

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def effective_init_mean(self) -> float:
        return 2.0 / self.num_sources if self.init_mean is None else float(self.init_mean)

    @property
    def effective_dropout(self) -> float:
        return self.spec.default_dropout if self.omega_dropout is None else float(self.omega_dropout)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "ScaLearn config") -> "ScaLearnConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
        return cls(**data)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        payload = {"format": "instructmt-scalearn", "format_version": 1, **self.to_dict(), **(extra or {})}
        atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=False) + "\n")


def default_source_name(path: str) -> str:
    """`RUN/adapters/<task>` and `RUN/adapters/<task>/model` are both named `<task>`."""
    p = Path(path)
    return p.parent.name if p.name == "model" else p.name
