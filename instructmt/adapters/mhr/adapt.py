"""Few-shot adaptation of a trained MHR checkpoint to new (held-out) tasks.

Modes (Caccia et al. 2023):
  mhr              fresh router row(s) for the new task(s); train router and skills
  mhr-z            fresh router row(s); train only the router (skills frozen)
  mhr-mu           fixed average of the skills: one LoRA per adapted linear initialised at the
                   per-head average of A and of B; train that LoRA (method `mhr-mu`)
  mhr-mu-zeroshot  the same average, no training on the new task
and, as the multi-task LoRA baseline, `lora-continue`: keep training a multi-task LoRA run's adapter.

These plug into the spine trainer as adapter methods: `mhr` with options `init_from` (a run's model
directory) and `adapt_mode`, and the non-routed methods `mhr-mu` / `lora-continue`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from ...errors import ConfigError
from ..base import AdapterConfig, AdapterMethod
from .model import load_mhr, mhr_config_of, mhr_layers, set_adaptation_mode, set_gumbel, to_lora, tuner_of

ADAPT_OPTIONS = ("init_from", "adapt_mode")
MHR_METHODS = ("mhr", "poly")  # the routed methods whose runs can be adapted
MODES = ("mhr", "mhr-z", "mhr-mu", "mhr-mu-zeroshot", "lora")  # `instructmt adapt --mode`
METHOD_OF_MODE = {"mhr": "mhr", "mhr-z": "mhr", "mhr-mu": "mhr-mu", "lora": "lora-continue"}


def adapter_peft_type(adapter_dir: str | Path) -> str:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        raise ConfigError(f"{adapter_dir} holds no peft adapter (no adapter_config.json)")
    return str(json.loads(path.read_text(encoding="utf-8")).get("peft_type", "")).upper()


@torch.no_grad()
def reorder_tasks(model: nn.Module, names: list[str], *, seed: int | None = 0) -> list[str]:
    """Make router row i belong to names[i]: known tasks keep their learned row, new names get a fresh
    row Z ~ U(±1e-3); the other known tasks follow. Returns the new row order.

    The trainer's collator and the evaluation runner index tasks by their position in the run's task
    list, so after this the adapted run's `task_names` index the router directly.
    """
    tuner = tuner_of(model)
    cfg = mhr_config_of(model)
    adapter = tuner.active_adapters[0]
    old = list(cfg.task_names) or [f"task_{i}" for i in range(cfg.n_tasks)]
    order = list(dict.fromkeys(names)) + [n for n in old if n not in names]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for _, layer in mhr_layers(model):
        router = layer.poly_router[adapter]
        logits = router.module_logits
        rows = []
        for n in order:
            if n in old:
                rows.append(logits.data[old.index(n)])
            else:
                rows.append(torch.empty(logits.shape[1], dtype=logits.dtype).uniform_(-1e-3, 1e-3, generator=gen)
                            .to(logits.device))
        router.module_logits = nn.Parameter(torch.stack(rows), requires_grad=logits.requires_grad)
        router.n_tasks = len(order)
        layer.n_tasks[adapter] = len(order)
    tuner.peft_config[adapter].n_tasks = len(order)
    cfg.n_tasks, cfg.task_names = len(order), order
    return order


def split_adapt_options(options: dict) -> tuple[dict, dict]:
    opts = dict(options or {})
    return {k: opts.pop(k) for k in ADAPT_OPTIONS if k in opts}, opts


def adapt_mhr(base_model: nn.Module, init_from: str | Path, task_names: list[str], mode: str,
              overrides: dict | None = None) -> PeftModel:
    """Load a trained MHR adapter onto `base_model`, give `task_names` router rows 0..n-1, set the mode."""
    if adapter_peft_type(init_from) != "POLY":
        raise ConfigError(f"{init_from} is not an MHR / Poly adapter: mode {mode!r} needs one")
    model = load_mhr(base_model, init_from, trainable=True)
    cfg = mhr_config_of(model)
    for key, value in (overrides or {}).items():
        if key == "router_lr":
            cfg.router_lr = float(value)
        elif key == "gumbel":
            set_gumbel(model, str(value).lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value))
        else:
            raise ConfigError(f"option {key!r} cannot change when adapting a trained MHR model "
                              "(allowed: router_lr, gumbel)")
    reorder_tasks(model, task_names)
    set_adaptation_mode(model, mode)
    return model


class MHRMuMethod(AdapterMethod):
    """MHR-μ: the trained skills averaged into one LoRA per layer (α = 1/K), trained on the new task.
    Option `init_from`: the trained MHR run's model directory. Not routed: one LoRA for every task."""

    name = "mhr-mu"
    routed = False

    def apply(self, model, cfg: AdapterConfig, task_names):
        adapt, _ = split_adapt_options(cfg.options)
        if "init_from" not in adapt:
            raise ConfigError("method 'mhr-mu' needs adapter.options.init_from=<trained MHR run>/model")
        mhr = load_mhr(model, adapt["init_from"], trainable=False)
        lora = to_lora(mhr, dropout=cfg.dropout)
        lora.train()
        return lora

    def load(self, base_model, adapter_dir):
        return PeftModel.from_pretrained(base_model, str(adapter_dir))


class LoRAContinueMethod(AdapterMethod):
    """Keep training a multi-task LoRA run's adapter on new tasks (the baseline of MHR adaptation)."""

    name = "lora-continue"
    routed = False

    def apply(self, model, cfg: AdapterConfig, task_names):
        adapt, _ = split_adapt_options(cfg.options)
        src = adapt.get("init_from")
        if not src or adapter_peft_type(src) != "LORA":
            raise ConfigError("method 'lora-continue' needs adapter.options.init_from=<a LoRA run>/model")
        return PeftModel.from_pretrained(model, str(src), is_trainable=True)

    def load(self, base_model, adapter_dir):
        return PeftModel.from_pretrained(base_model, str(adapter_dir))
