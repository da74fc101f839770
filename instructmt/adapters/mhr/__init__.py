"""MHR (multi-head adapter routing) and Poly, registered as adapter methods `mhr` and `poly`.

See docs/methods_mhr.md. Options (AdapterConfig.options): n_skills (K, default 8), n_splits (h, default
8 for mhr; poly forces 1), gumbel (default true), router_lr (default 0.1). `cfg.r`, `cfg.dropout` and
`cfg.target_modules` apply; `cfg.alpha` does not (the MHR formula scales by 1/r).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...errors import ConfigError
from ..base import AdapterConfig, AdapterMethod
from .config import MHRConfig
from .layer import MHRLinear, RoutingError, RoutingPlan, routing_probabilities
from .model import (ADAPTATION_MODES, MHRTuner, add_task, apply_mhr, load_mhr, mhr_config_of, mhr_layers,
                    mhr_tuner, router_parameters, routing_weights, save_mhr, set_adaptation_mode, set_gumbel,
                    task_similarity, to_lora)
from .publishing import mhr_hub_extras
from .report import write_routing_report
from .adapt import (METHOD_OF_MODE, MHR_METHODS, MODES, LoRAContinueMethod, MHRMuMethod, adapt_mhr,  # noqa: E402
                    reorder_tasks, split_adapt_options)  # (registers methods)

__all__ = [
    "ADAPTATION_MODES", "METHOD_OF_MODE", "MHR_METHODS", "MODES", "LoRAContinueMethod", "MHRMuMethod", "adapt_mhr", "reorder_tasks", "MHRConfig", "MHRLinear", "MHRMethod", "MHRTuner", "PolyMethod", "RoutingError",
    "RoutingPlan", "add_task", "apply_mhr", "load_mhr", "mhr_config_of", "mhr_layers", "mhr_tuner",
    "router_parameters", "routing_probabilities", "routing_weights", "save_mhr", "set_adaptation_mode",
    "set_gumbel", "task_similarity", "to_lora", "write_routing_report",
]


class MHRMethod(AdapterMethod):
    name = "mhr"
    routed = True
    default_splits = 8

    def config_for(self, cfg: AdapterConfig, task_names: list[str]) -> MHRConfig:
        options = dict(cfg.options or {})
        options.setdefault("n_splits", self.default_splits)
        return MHRConfig.from_options(options, r=cfg.r, target_modules=cfg.target_modules,
                                      dropout=cfg.dropout, n_tasks=max(1, len(task_names)),
                                      task_names=list(task_names))

    def apply(self, model: nn.Module, cfg: AdapterConfig, task_names: list[str]) -> nn.Module:
        """A fresh MHR model; with options `init_from` (a trained run's model dir) and `adapt_mode`
        (mhr | mhr-z), the trained one adapted to `task_names` (see `instructmt adapt`)."""
        adapt, rest = split_adapt_options(cfg.options)
        if adapt:
            if "init_from" not in adapt:
                raise ConfigError("adapter option adapt_mode needs init_from=<trained MHR run>/model")
            return adapt_mhr(model, adapt["init_from"], list(task_names), adapt.get("adapt_mode", "mhr"), rest)
        return apply_mhr(model, self.config_for(cfg, task_names))

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Router Z at its own learning rate (paper: 0.1, adapters 1e-3), without weight decay."""
        router_ids = {id(p) for p in router_parameters(model)}
        router = [p for p in model.parameters() if p.requires_grad and id(p) in router_ids]
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in router_ids]
        try:
            router_lr = mhr_config_of(model).router_lr
        except (ConfigError, KeyError):
            router_lr = MHRConfig.router_lr
        groups = []
        if rest:
            groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "adapters"})
        if router:
            groups.append({"params": router, "lr": router_lr, "weight_decay": 0.0, "name": "router"})
        return groups

    def save(self, model: nn.Module, out_dir: str | Path, state_dict: dict | None = None) -> None:
        save_mhr(model, out_dir, state_dict=state_dict)

    def load(self, base_model: nn.Module, adapter_dir: str | Path, trainable: bool = False) -> nn.Module:
        return load_mhr(base_model, adapter_dir, trainable=trainable)

    def hub_extras(self, run):
        return mhr_hub_extras(run)


class PolyMethod(MHRMethod):
    """Poly (Ponti et al.): MHR with a single routing head."""

    name = "poly"
    default_splits = 1

    def config_for(self, cfg: AdapterConfig, task_names: list[str]) -> MHRConfig:
        if int((cfg.options or {}).get("n_splits", 1)) != 1:
            raise ConfigError("method 'poly' has one routing head: drop n_splits or use method 'mhr'")
        return super().config_for(cfg, task_names)
