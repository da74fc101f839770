"""Registers ScaLearn as the adapter method "scalearn" (stage 2: train only ω on a target task).

Method options (`AdapterConfig.options`): `sources` (list of source adapter dirs, or a mapping
name -> dir), `variant`, and optionally `init_mean`, `init_std`, `omega_dropout`. The LoRA fields
of AdapterConfig (r, alpha, target_modules) are ignored: the sources define what is adapted.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ..base import AdapterConfig, AdapterMethod
from .config import ScaLearnConfig
from .model import ScaLearnModel
from .publishing import scalearn_hub_extras


def config_from_options(options: dict) -> ScaLearnConfig:
    opts = dict(options or {})
    sources = opts.pop("sources", None)
    if not sources:
        raise ConfigError("adapter method 'scalearn' needs adapter.options.sources (source LoRA adapter dirs)")
    names = opts.pop("source_names", None)
    if isinstance(sources, dict):
        names, sources = list(sources), list(sources.values())
    elif isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    known = {"variant", "init_mean", "init_std", "omega_dropout"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(f"adapter.options.{unknown[0]}: not a ScaLearn option (known: sources, source_names, "
                          f"{', '.join(sorted(known))})")
    return ScaLearnConfig(sources=[str(s) for s in sources], source_names=names, **opts)


class ScaLearnMethod(AdapterMethod):
    name = "scalearn"
    routed = False

    def apply(self, model, cfg: AdapterConfig, task_names):
        wrapped = ScaLearnModel(model, config_from_options(cfg.options))
        wrapped.print_trainable_parameters()
        return wrapped

    def save(self, model, out_dir, state_dict=None):
        # ω is tiny and never sharded; a gathered `state_dict` (ZeRO-3 / FSDP) adds nothing here.
        model.save_pretrained(Path(out_dir))

    def load(self, base_model, adapter_dir):
        return ScaLearnModel.from_pretrained(base_model, adapter_dir)

    def hub_extras(self, run):
        return scalearn_hub_extras(run)
