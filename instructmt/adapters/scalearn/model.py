"""ScaLearnModel: wraps a frozen base model, injects ScaLearnLinear layers, owns every ω.

All ω live in one `nn.ParameterDict` (`self.omega`), keyed by group: one group per adapted module
for `scalearn`/`uniform`, one per (leaf module name, output size) for `pp` — e.g. every `q`
projection shares one (N, d_out) ω across layers, encoder and decoder alike — and a single group
for `uniform-pp`. Saving writes only ω (safetensors) and a JSON config naming the source adapters
(paths + fingerprints); loading re-reads the sources, so a reload reproduces outputs exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .config import ScaLearnConfig
from .layer import ScaLearnLinear
from .sources import ScaLearnError, SourceAdapter, load_source

CONFIG_NAME = "scalearn_config.json"
WEIGHTS_NAME = "scalearn_omega.safetensors"


def omega_group(variant_shared: bool, per_dim: bool, module_name: str, d_out: int) -> str:
    """ParameterDict key (no dots allowed) of the ω a module uses."""
    if not variant_shared:
        return "m:" + module_name.replace(".", "/")
    if per_dim:
        return f"type:{module_name.rsplit('.', 1)[-1]}:{d_out}"
    return "all"


class ScaLearnModel(nn.Module):
    routed = False

    def __init__(self, base_model: nn.Module, config: ScaLearnConfig,
                 sources: list[SourceAdapter] | None = None):
        super().__init__()
        if sources is None:
            sources = [load_source(p, n) for p, n in zip(config.sources, config.source_names)]
        config.source_fingerprints = [s.fingerprint for s in sources]
        config.sources = [str(s.path) for s in sources]
        self.base_model = base_model
        self.scalearn_config = config
        self.source_names = [s.name for s in sources]
        self.omega = nn.ParameterDict()
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.adapted_modules = self._inject(sources)

    # -- construction -------------------------------------------------------------------------
    def _inject(self, sources: list[SourceAdapter]) -> list[str]:
        cfg, spec = self.scalearn_config, self.scalearn_config.spec
        wanted = set().union(*(s.modules for s in sources))
        order = [name for name, _ in self.base_model.named_modules() if name in wanted]
        missing = sorted(wanted - set(order))
        if missing:
            owner = next(s.name for s in sources if missing[0] in s.modules)
            raise ScaLearnError(f"source {owner!r} adapts module {missing[0]!r}, which the base model lacks "
                                "(was it trained on a different base model?)")
        n = len(sources)
        for name in order:
            base = self.base_model.get_submodule(name)
            if type(base) is not nn.Linear:
                raise ScaLearnError(f"module {name!r} is {type(base).__name__}; ScaLearn adapts nn.Linear only")
            present = [s.modules.get(name) for s in sources]
            r = max(m.lora_A.shape[0] for m in present if m is not None)
            a = torch.zeros(n, r, base.in_features)
            b = torch.zeros(n, base.out_features, r)
            scaling = torch.zeros(n)
            for i, (src, m) in enumerate(zip(sources, present)):
                if m is None:  # this source does not adapt the module: its delta is zero
                    continue
                if m.lora_A.shape[1] != base.in_features or m.lora_B.shape[0] != base.out_features:
                    raise ScaLearnError(
                        f"source {src.name!r}: module {name!r} LoRA is {m.lora_A.shape[1]}->{m.lora_B.shape[0]} "
                        f"but the base linear is {base.in_features}->{base.out_features}")
                k = m.lora_A.shape[0]
                a[i, :k], b[i, :, :k], scaling[i] = m.lora_A, m.lora_B, m.scaling
            key = omega_group(spec.shared, spec.per_dim, name, base.out_features)
            if key not in self.omega:
                size = (n, base.out_features) if spec.per_dim else (n,)
                init = torch.empty(size, device=base.weight.device).normal_(cfg.effective_init_mean, cfg.init_std)
                self.omega[key] = nn.Parameter(init)
            layer = ScaLearnLinear(base, a.to(base.weight.device), b.to(base.weight.device),
                                   scaling.to(base.weight.device), self.omega, key, cfg.effective_dropout)
            parent_name, _, child = name.rpartition(".")
            setattr(self.base_model.get_submodule(parent_name) if parent_name else self.base_model, child, layer)
        return order

    # -- behaving like the wrapped model ----------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def scalearn_layers(self) -> dict[str, ScaLearnLinear]:
        return {n: self.base_model.get_submodule(n) for n in self.adapted_modules}

    # -- parameters ------------------------------------------------------------------------
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def print_trainable_parameters(self) -> str:
        trainable = self.num_trainable_parameters()
        total = sum(p.numel() for p in self.parameters())
        line = (f"ScaLearn[{self.scalearn_config.variant}] trainable ω params: {trainable:,} || all params: "
                f"{total:,} || trainable%: {100 * trainable / max(total, 1):.4f} || sources: "
                f"{', '.join(self.source_names)} || adapted modules: {len(self.adapted_modules)}")
        print(line)
        return line

    # -- merge -----------------------------------------------------------------------------
    def merge(self) -> None:
        for layer in self.scalearn_layers().values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.scalearn_layers().values():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Fold Σ_i diag(ω_i) B_i A_i s_i into each base weight and return the plain base model."""
        for name, layer in self.scalearn_layers().items():
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, layer.base_layer)
        self.adapted_modules = []
        return self.base_model

    # -- save / load -----------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **_: object) -> None:
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.scalearn_config
        relative = [os.path.relpath(p, out.resolve()) for p in cfg.sources]
        cfg.save(out / CONFIG_NAME, extra={
            "sources_relative": relative,
            "omega_shapes": {k: list(v.shape) for k, v in self.omega.items()},
            "adapted_modules": list(self.adapted_modules),
        })
        save_file({k: v.detach().cpu().contiguous() for k, v in self.omega.items()}, str(out / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, directory: str | os.PathLike) -> "ScaLearnModel":
        import json

        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path = d / CONFIG_NAME
        if not cfg_path.is_file():
            raise ScaLearnError(f"{d}: no {CONFIG_NAME}; not a saved ScaLearn model")
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
        relative = data.pop("sources_relative", None) or [None] * len(data.get("sources", []))
        for k in ("format", "format_version", "omega_shapes", "adapted_modules"):
            data.pop(k, None)
        fingerprints = data.get("source_fingerprints") or [None] * len(data["sources"])
        paths = []
        for name, absolute, rel in zip(data.get("source_names") or [], data["sources"], relative):
            cand = [(d / rel).resolve()] if rel else []
            cand.append(Path(absolute))
            found = next((c for c in cand if (c / "adapter_config.json").is_file()), None)
            if found is None:
                raise ScaLearnError(f"{cfg_path}: source {name!r} not found at {', '.join(map(str, cand))}")
            paths.append(str(found))
        data["sources"] = paths
        config = ScaLearnConfig.from_dict(data, where=str(cfg_path))
        sources = [load_source(p, n) for p, n in zip(config.sources, config.source_names)]
        for src, expected in zip(sources, fingerprints):
            if expected and src.fingerprint != expected:
                raise ScaLearnError(f"{cfg_path}: source {src.name!r} at {src.path} changed since ω was trained "
                                    f"(fingerprint {src.fingerprint}, expected {expected})")
        model = cls(base_model, config, sources)
        state = load_file(str(d / WEIGHTS_NAME))
        if set(state) != set(model.omega.keys()):
            raise ScaLearnError(f"{d / WEIGHTS_NAME}: ω groups {sorted(state)[:3]}... do not match the model's "
                                f"{sorted(model.omega.keys())[:3]}...")
        with torch.no_grad():
            for k, v in state.items():
                if model.omega[k].shape != v.shape:
                    raise ScaLearnError(f"{d / WEIGHTS_NAME}: ω {k!r} has shape {tuple(v.shape)}, "
                                        f"expected {tuple(model.omega[k].shape)}")
                model.omega[k].copy_(v)
        return model
