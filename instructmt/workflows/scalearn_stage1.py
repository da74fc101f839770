"""ScaLearn stage 1: one LoRA adapter per seen task, all on the same frozen base model.

Every adapter must sit on the *same* base weights and tokenizer, or their deltas cannot be
combined. A tiny preset is random-init and trains its tokenizer on the task text, so we build it
once (on the whole split's text, as a multi-task run would), save it under RUN/base/, and point
each per-task run at that directory. Adapters land in RUN/adapters/<task>/model/ (a normal PEFT
adapter + tokenizer + instructmt_run.json), listed in RUN/adapters/index.json.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import ConfigError, InstructMTError
from ..io_safety import atomic_write_text
from ..models.loading import TINY_PRESETS, load_model_and_tokenizer
from ..training.task_setup import TaskSplit, resolve_tasks, tokenizer_corpus
from ..training.trainer import train

INDEX_NAME = "index.json"


@dataclass
class PerTaskResult:
    output_dir: Path
    base_model: str
    adapters: dict[str, Path]          # task name -> adapter dir (RUN/adapters/<task>/model)
    final_losses: dict[str, float | None]
    steps: dict[str, int]


def shared_base(cfg: TrainConfig, split, out: Path) -> str:
    """Hub id / path of the base every per-task adapter trains on (saving a tiny preset first)."""
    if cfg.model.name_or_path not in TINY_PRESETS:
        p = Path(cfg.model.name_or_path)
        return str(p.resolve()) if p.exists() else cfg.model.name_or_path
    base_dir = out / "base"
    if not (base_dir / "config.json").is_file():
        model, tok, _ = load_model_and_tokenizer(cfg.model, texts=tokenizer_corpus(split), seed=cfg.seed)
        model.save_pretrained(str(base_dir), safe_serialization=True)
        tok.save_pretrained(str(base_dir))
    return str(base_dir.resolve())


def train_per_task(cfg: TrainConfig, tasks: list[str] | None = None) -> PerTaskResult:
    """Train one adapter (cfg.adapter, normally LoRA) per seen task; return where each landed."""
    if cfg.adapter.method != "lora":
        raise ConfigError(f"per-task training makes ScaLearn sources, which are LoRA adapters; "
                          f"got adapter method {cfg.adapter.method!r}")
    split = resolve_tasks(cfg.data)
    by_name = {t.name: t for t in split.seen}
    names = list(tasks) if tasks else list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"per-task training: {unknown[0]!r} is not a seen task "
                          f"(seen: {', '.join(list(by_name)[:8])}{' ...' if len(by_name) > 8 else ''})")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = shared_base(cfg, split, out)

    result = PerTaskResult(out, base, {}, {}, {})
    for name in tqdm(names, desc="per-task adapters", dynamic_ncols=True):
        done = out / "adapters" / name / "model"
        if cfg.resume and (done / "adapter_config.json").is_file():  # finished before: keep it
            meta = json.loads((done / "instructmt_run.json").read_text(encoding="utf-8"))
            if meta.get("base_model") == base:
                result.adapters[name], result.final_losses[name], result.steps[name] = done, None, 0
                continue
        sub = copy.deepcopy(cfg)
        sub.per_task = False
        sub.model.name_or_path = base
        sub.output_dir = str(out / "adapters" / name)
        sub.data.seen, sub.data.held_out = [name], []
        res = train(sub, split=TaskSplit(split.registry, [by_name[name]], []))
        if res.model_dir is None:  # interrupted: keep what is done, report it
            raise InstructMTError(f"per-task training stopped during task {name!r}; rerun with --resume")
        result.adapters[name] = Path(res.model_dir)
        result.final_losses[name] = res.final_loss
        result.steps[name] = res.steps
    index = {"base_model": base, "adapters": {n: str(p.resolve()) for n, p in result.adapters.items()},
             "final_loss": result.final_losses, "steps": result.steps}
    (out / "adapters").mkdir(exist_ok=True)
    atomic_write_text(out / "adapters" / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return result
