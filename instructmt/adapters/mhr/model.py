"""The MHR tuner (a peft PolyModel subclass) and the helpers peft's Poly lacks.

Checkpoints stay peft Poly checkpoints: inside `mhr_tuner()` PeftModel builds our tuner for
`peft_type: POLY`; outside it, stock peft builds its own Poly, which gives identical outputs in eval
(same parameters, same formula), only slower.

Helpers: `apply_mhr`, `load_mhr`, `add_task` (a fresh router row for a new task), `set_gumbel`,
`set_adaptation_mode` (mhr | mhr-z), `to_lora` (MHR-μ: one LoRA at the per-head average of the skills,
or a task's own mixture), `routing_weights`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.poly.model import PolyModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import PeftType
from torch import nn

from ...errors import ConfigError
from ..lora import peft_task_type
from .config import MHRConfig
from .layer import MHRLinear, RoutingError, RoutingPlan, RoutingState, mix_group

ADAPTATION_MODES = ("mhr", "mhr-z", "mhr-mu", "mhr-mu-zeroshot")


class MHRTuner(PolyModel):
    """PolyModel whose layers are `MHRLinear` and whose routing plan is computed once per forward."""

    @property
    def routing_state(self) -> RoutingState:
        return self.__dict__.setdefault("_mhr_routing_state", RoutingState())

    def _create_and_replace(self, poly_config, adapter_name, target, target_name, parent, **optional_kwargs):
        if isinstance(target, MHRLinear):
            target.update_layer(adapter_name, config=poly_config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"MHR adapts nn.Linear only; module {optional_kwargs.get('current_key', target_name)!r} "
                              f"is {type(base).__name__}")
        self.__dict__.pop("_mhr_layer_cache", None)
        new_module = MHRLinear(target, adapter_name, poly_config, state=self.routing_state,
                               where=optional_kwargs.get("current_key", target_name))
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _set_plan(self, task_ids: Any) -> None:
        n_tasks = self.peft_config[self.active_adapters[0]].n_tasks
        if task_ids is None:
            if n_tasks != 1:
                raise RoutingError(f"this MHR model routes over {n_tasks} tasks: pass task_ids=<LongTensor, "
                                   "one per example> to forward / generate")
            self.routing_state.plan = RoutingPlan.single(0)
        else:
            self.routing_state.plan = RoutingPlan.from_task_ids(task_ids, n_tasks)

    def _mixing_groups(self) -> list[list[MHRLinear]]:
        """Layers of the active adapter grouped so that each group can be mixed in one batch of ops."""
        adapter = self.active_adapters[0]
        layers = self.__dict__.get("_mhr_layer_cache")
        if layers is None:  # the set of layers only changes when adapters are injected
            layers = [m for m in self.model.modules() if isinstance(m, MHRLinear)]
            self.__dict__["_mhr_layer_cache"] = layers
        groups: dict[tuple, list[MHRLinear]] = {}
        for module in layers:
            if adapter in module.poly_lora_A and not module.disable_adapters:
                A = module.poly_lora_A[adapter]
                key = (tuple(A.shape), tuple(module.poly_lora_B[adapter].shape), A.dtype, A.device,
                       module.training and module.mhr_gumbel)
                groups.setdefault(key, []).append(module)
        return list(groups.values())

    def _mix_all(self) -> None:
        """Mix every layer's Â, B̂ for this call's distinct tasks up front (the fast path); skipped with
        several active adapters, where each layer mixes itself."""
        if len(self.active_adapters) != 1 or not self.__dict__.get("mhr_group_mixing", True):
            return
        plan, adapter = self.routing_state.plan, self.active_adapters[0]
        for layers in self._mixing_groups():
            if _sharded(layers[0].poly_lora_A[adapter]):
                continue  # ZeRO-3 / FSDP: parameters exist only inside their layer's forward
            mix_group(layers, adapter, plan, sample=layers[0].training and layers[0].mhr_gumbel)

    # The plan (and the mixed matrices) stay set after the call so that activation checkpointing
    # (non-reentrant, the transformers default) can recompute in backward.
    def forward(self, *args: Any, task_ids: Any = None, **kwargs: Any):
        self._set_plan(task_ids)
        self._mix_all()
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, task_ids: Any = None, **kwargs: Any):
        self._set_plan(task_ids)
        with torch.no_grad():  # mixed once, reused by every decoding step
            self._mix_all()
        return self.model.generate(*args, **kwargs)


def _sharded(param: torch.Tensor) -> bool:
    """A parameter partitioned away outside its module's forward (DeepSpeed ZeRO-3, FSDP)."""
    return hasattr(param, "ds_id") or param.numel() == 0 or param.untyped_storage().size() == 0


@contextmanager
def mhr_tuner() -> Iterator[None]:
    """Within this context peft builds `MHRTuner` for POLY configs (get_peft_model, from_pretrained)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    previous = PEFT_TYPE_TO_TUNER_MAPPING[PeftType.POLY]
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.POLY] = MHRTuner
    try:
        yield
    finally:
        PEFT_TYPE_TO_TUNER_MAPPING[PeftType.POLY] = previous


def _task_type(model: nn.Module):

    return peft_task_type(model)


def tuner_of(model: nn.Module) -> MHRTuner:
    tuner = model.base_model if isinstance(model, PeftModel) else model
    if not isinstance(tuner, MHRTuner):
        raise ConfigError(f"expected an MHR model (built by apply_mhr / load_mhr), got {type(tuner).__name__}")
    return tuner


def mhr_config_of(model: nn.Module) -> MHRConfig:
    return tuner_of(model).__dict__["mhr_config"]


def _prepare_tuner(model: PeftModel, cfg: MHRConfig) -> PeftModel:
    """Attach the typed config and apply what peft's PolyConfig cannot carry (Gumbel switch, dropout)."""
    tuner = tuner_of(model)
    tuner.__dict__["mhr_config"] = cfg
    for _, layer in mhr_layers(model):
        layer.mhr_gumbel = cfg.gumbel
        layer.mhr_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
    model.routed = True  # routed methods receive task_ids in forward / generate
    return model


def apply_mhr(model: nn.Module, cfg: MHRConfig) -> PeftModel:
    """Wrap a transformers model with MHR adapters (h = cfg.n_splits; h=1 is Poly)."""
    with mhr_tuner():
        peft_model = get_peft_model(model, cfg.to_peft(_task_type(model)))
    return _prepare_tuner(peft_model, cfg)


def load_mhr(base_model: nn.Module, adapter_dir: str | Path, *, trainable: bool = False) -> PeftModel:
    """Load a saved MHR/Poly adapter onto `base_model` with the fast tuner (PEFT format + mhr_config.json)."""
    cfg = MHRConfig.load(adapter_dir)
    with mhr_tuner():
        model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)
    peft_cfg = model.peft_config[model.active_adapter]
    if cfg is None:  # a plain peft Poly checkpoint
        cfg = MHRConfig(n_tasks=peft_cfg.n_tasks, n_skills=peft_cfg.n_skills, n_splits=peft_cfg.n_splits,
                        r=peft_cfg.r, target_modules=sorted(peft_cfg.target_modules or []) or None)
    return _prepare_tuner(model, cfg)


def save_mhr(model: PeftModel, out_dir: str | Path, state_dict: dict | None = None) -> None:
    """PEFT Poly checkpoint + mhr_config.json (`state_dict`: the gathered one under ZeRO-3 / FSDP)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    mhr_config_of(model).save(out_dir)


def mhr_layers(model: nn.Module) -> list[tuple[str, MHRLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MHRLinear)]


def set_gumbel(model: nn.Module, enabled: bool) -> None:
    """Switch Gumbel (RelaxedBernoulli) noise on the training routing on or off (mttl turns it off for T0)."""
    for _, layer in mhr_layers(model):
        layer.mhr_gumbel = enabled
    try:
        mhr_config_of(model).gumbel = enabled
    except (ConfigError, KeyError):
        pass


def add_task(model: nn.Module, name: str | None = None, *, seed: int | None = None) -> int:
    """Append one router row Z[T] ~ U(±1e-3) in every MHR layer; return the new task id.

    Build the optimizer after calling this (the router parameters are replaced).
    """
    tuner = tuner_of(model)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    adapter = tuner.active_adapters[0]
    new_id = tuner.peft_config[adapter].n_tasks
    for _, layer in mhr_layers(model):
        router = layer.poly_router[adapter]
        old = router.module_logits
        row = torch.empty((1, old.shape[1]), dtype=old.dtype).uniform_(-1e-3, 1e-3, generator=gen)
        new = nn.Parameter(torch.cat([old.data, row.to(old.device)], dim=0), requires_grad=old.requires_grad)
        router.module_logits = new
        router.n_tasks = new.shape[0]
        layer.n_tasks[adapter] = new.shape[0]
    tuner.peft_config[adapter].n_tasks = new_id + 1
    cfg = tuner.__dict__.get("mhr_config")
    if cfg is not None:
        cfg.n_tasks = new_id + 1
        cfg.task_names = list(cfg.task_names) + [name or f"task_{new_id}"] if cfg.task_names else []
    return new_id


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.module_logits for _, layer in mhr_layers(model) for m in layer.poly_router.values()]


def set_adaptation_mode(model: nn.Module, mode: str) -> None:
    """`mhr`: train router and skills; `mhr-z`: train only the router (skills frozen)."""
    if mode not in ("mhr", "mhr-z"):
        raise ConfigError(f"set_adaptation_mode: mode {mode!r} is not 'mhr' or 'mhr-z' "
                          "(MHR-μ is a LoRA: use to_lora)")
    for _, layer in mhr_layers(model):
        for p in layer.poly_lora_A.values():
            p.requires_grad_(mode == "mhr")
        for p in layer.poly_lora_B.values():
            p.requires_grad_(mode == "mhr")
        for router in layer.poly_router.values():
            router.module_logits.requires_grad_(True)


@torch.no_grad()
def average_skills(layer: MHRLinear, adapter: str, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â, B̂) of one layer, unscaled: (d_in, r), (r, d_out). task_id=None: α = 1/K (MHR-μ)."""
    h, k = layer.n_splits[adapter], layer.n_skills[adapter]
    A, B = layer.poly_lora_A[adapter], layer.poly_lora_B[adapter]
    if task_id is None:
        alpha = torch.full((1, h, k), 1.0 / k, dtype=A.dtype, device=A.device)
    else:
        was = layer.training
        layer.eval()
        alpha = layer.mixing_weights(adapter, torch.tensor([task_id], device=A.device))
        layer.train(was)
    r = layer.r[adapter]
    a_hat = torch.einsum("uhk,hkdr->uhdr", alpha, A).reshape(layer.in_features, r)
    b_hat = torch.einsum("uhk,hkrd->urhd", alpha, B).reshape(r, layer.out_features)
    return a_hat, b_hat


def strip_mhr(model: nn.Module) -> nn.Module:
    """Return the underlying transformers model with every MHR layer replaced by its base linear."""
    tuner = tuner_of(model)
    base = tuner.model
    for name, layer in mhr_layers(base):
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, layer.get_base_layer())
    if hasattr(base, "peft_config"):
        del base.peft_config
    return base


def to_lora(model: nn.Module, task_id: int | None = None, *, dropout: float | None = None) -> PeftModel:
    """MHR-μ (task_id=None): one peft LoRA per adapted linear, initialised at the per-head average of
    the K skills' A and B (α = 1/K); with a task id, that task's own mixture (an exportable LoRA).

    y = Wx + x Â B̂ / r  ==  LoRA with lora_A = Âᵀ, lora_B = B̂ᵀ, lora_alpha = 1 (scaling 1/r).
    The MHR wrapper is consumed: its base model is reused.
    """
    tuner = tuner_of(model)
    adapter = tuner.active_adapters[0]
    cfg = tuner.__dict__.get("mhr_config")
    layers = mhr_layers(tuner.model)
    if not layers:
        raise ConfigError("to_lora: the model has no MHR layers")
    mixed = {name: average_skills(layer, adapter, task_id) for name, layer in layers}
    r = layers[0][1].r[adapter]
    task_type = model.peft_config[adapter].task_type if isinstance(model, PeftModel) else None
    base = strip_mhr(model)
    lora_cfg = LoraConfig(task_type=task_type, r=r, lora_alpha=1, target_modules=list(mixed),
                          lora_dropout=(cfg.dropout if cfg and dropout is None else (dropout or 0.0)))
    lora = get_peft_model(base, lora_cfg)
    inner = lora.base_model.model
    with torch.no_grad():
        for name, (a_hat, b_hat) in mixed.items():
            module = inner.get_submodule(name)
            module.lora_A["default"].weight.copy_(a_hat.T)
            module.lora_B["default"].weight.copy_(b_hat.T)
    return lora


@torch.no_grad()
def routing_weights(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """Eval routing α for every task in every layer: (layer names, tensor (L, T, h, K))."""
    tuner = tuner_of(model)
    adapter = tuner.active_adapters[0]
    names, mats = [], []
    for name, layer in mhr_layers(tuner.model):
        logits = layer.poly_router[adapter].module_logits.detach().float()
        t = logits.shape[0]
        z = torch.sigmoid(logits.view(t, layer.n_splits[adapter], layer.n_skills[adapter]))
        mats.append((z / (z.sum(-1, keepdim=True) + 1e-12)).cpu())
        names.append(name)
    return names, torch.stack(mats)


def task_similarity(weights: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between tasks of their flattened routing (L, T, h, K) -> (T, T)."""
    flat = weights.permute(1, 0, 2, 3).reshape(weights.shape[1], -1).double()
    norm = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (norm @ norm.T).float()
