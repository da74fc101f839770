"""Saving the trained model: RUN/model written atomically (adapter, tokenizer, run metadata, and the
random-init base's weights when the base cannot be downloaded again)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainConfig, to_dict
from ..io_safety import atomic_replace_dir
from ..models.presets import describe_base
from ..rundir import RUN_META
from .distributed import is_sharded
from .task_setup import TaskSplit


def save_final(accelerator, model, tok, method, cfg: TrainConfig, split: TaskSplit, kind: str,
               base_snapshot: dict | None, out: Path) -> Path:
    """Gather (ZeRO-3 / FSDP) and write RUN/model atomically: adapter, tokenizer, run metadata."""
    state_dict = accelerator.get_state_dict(model) if is_sharded(accelerator) else None
    model_dir = out / "model"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write(tmp: Path):
            if state_dict is not None:
                method.save(unwrapped, tmp, state_dict=state_dict)
            else:
                method.save(unwrapped, tmp)
            tok.save_pretrained(str(tmp))
            meta = {"method": cfg.adapter.method, "base_model": cfg.model.name_or_path, "kind": kind,
                    "task_names": [t.name for t in split.seen], "seen": [t.name for t in split.seen],
                    "held_out": [t.name for t in split.held_out], "encoding": cfg.data.encoding,
                    "task_families": {t.name: t.family for t in split.seen + split.held_out},
                    "max_source_length": cfg.data.max_source_length,
                    "max_target_length": cfg.data.max_target_length,
                    "use_chat_template": cfg.model.use_chat_template,  # eval must prompt as training did
                    "task_sources": list(cfg.data.tasks), "adapter": to_dict(cfg.adapter),
                    **describe_base(cfg.model.name_or_path)}
            if base_snapshot is not None and not method.whole_model:
                from safetensors.torch import save_file  # start-up time
                base_dir = tmp / "base"
                base_dir.mkdir()
                base_cfg = unwrapped.get_base_model().config if hasattr(unwrapped, "get_base_model") else unwrapped.config
                base_cfg.save_pretrained(str(base_dir))
                save_file({k: v.contiguous() for k, v in base_snapshot.items()},
                          str(base_dir / "model.safetensors"), metadata={"format": "pt"})
                meta["base_saved"] = "base"
            (tmp / RUN_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        atomic_replace_dir(model_dir, write)
        print(f"[instructmt] saved {cfg.adapter.method} model to {model_dir}")
    accelerator.wait_for_everyone()
    return model_dir


def dedupe_tied(sd: dict) -> dict:
    """safetensors refuses shared storage: drop tied duplicates (reloading re-ties them)."""
    seen, out = set(), {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def config_yaml(data: dict) -> str:
    import yaml  # start-up time
    return yaml.safe_dump(data, sort_keys=False)
