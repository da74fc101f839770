"""The adapter-method contract. Built-in methods are one line each in `instructmt/catalog.py`.

The trainer only speaks this interface, so a new method plugs in without touching the loop:
- `apply(model, cfg, task_names)` wraps a base model and returns the trainable model;
- `routed` methods receive `task_ids` (LongTensor, one per example, indices into `task_names`)
  as a keyword argument in forward and in `generate`;
- `param_groups` may give parts of the model their own learning rate (e.g. MHR's router);
- `save` writes a directory that `load` turns back into the same model (PEFT format where peft
  has the method).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..catalog import ADAPTERS
from ..config import AdapterConfig
from .publishing import MethodExtras


class AdapterMethod:
    name: str = ""
    routed: bool = False
    whole_model: bool = False  # saves the whole model (no base to load under it)

    def apply(self, model: nn.Module, cfg: AdapterConfig, task_names: list[str]) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def save(self, model: nn.Module, out_dir: str | Path, state_dict: dict | None = None) -> None:
        """`state_dict` is the gathered full state dict under ZeRO-3 / FSDP (None otherwise)."""
        if state_dict is not None:
            model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)
        else:
            model.save_pretrained(str(out_dir), safe_serialization=True)

    def load(self, base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
        raise NotImplementedError

    def hub_extras(self, run) -> MethodExtras | None:
        """Files, rewrites and a card section for `instructmt publish`, read from the run on disk
        (`run`: a `hub.run.RunInfo`). None: the generic section."""
        return None


def register_adapter(cls: type[AdapterMethod]) -> type[AdapterMethod]:
    """Register a method defined outside the package (a plugin); built-ins are lines in catalog.py."""
    ADAPTERS.register(cls.name, cls())
    return cls


def get_adapter(name: str) -> AdapterMethod:
    return ADAPTERS.get(name)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
