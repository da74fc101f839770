"""ScaLearn stage 2 as a pipeline: from a stage-1 run (RUN/adapters/<task>/), train ω on a target
task with the spine trainer, then score the target on its held-back instances.

The target's training data are its first instances; its last `data.holdback_per_seen_task`
instances are never trained on (not by the stage-1 adapters either) and are what we score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.scalearn.config import canonical_variant
from ..adapters.scalearn.sources import ScaLearnError, resolve_adapter_dir
from ..config import TrainConfig, apply_overrides, from_dict, load_config, to_dict
from ..data.mixture import split_instances
from ..errors import ConfigError
from ..evaluation.runner import evaluate_tasks
from ..models.loading import load_run
from ..training.task_setup import resolve_tasks
from ..training.trainer import train

PAPER_LR = 6e-3  # ScaLearn's learning rate for ω


@dataclass
class TransferResult:
    output_dir: Path
    model_dir: Path | None
    target: str
    variant: str
    sources: list[str]
    steps: int
    final_loss: float | None
    trainable_parameters: int
    metrics: dict[str, float] | None = None
    losses: list[float] = field(default_factory=list)


def resolve_sources(run_dir: str | Path | None, names: list[str]) -> list[Path]:
    """Each source is a task name under RUN/adapters/ or a path to an adapter directory."""
    out = []
    for name in names:
        cands = ([Path(run_dir) / "adapters" / name] if run_dir else []) + [Path(name)]
        found = None
        for c in cands:
            try:
                found = resolve_adapter_dir(c)
                break
            except ScaLearnError:
                continue
        if found is None:
            where = f" under {Path(run_dir) / 'adapters'}" if run_dir else ""
            have = sorted(p.name for p in (Path(run_dir) / "adapters").iterdir() if p.is_dir()) \
                if run_dir and (Path(run_dir) / "adapters").is_dir() else []
            raise ScaLearnError(f"source adapter {name!r} not found{where}"
                                + (f" (available: {', '.join(have)})" if have else
                                   "; train them with `instructmt train --adapter lora --per-task`"))
        out.append(found.resolve())
    return out


def source_meta(adapter_dir: Path) -> dict:
    p = adapter_dir / "instructmt_run.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def transfer_config(*, run_dir: str | Path | None, sources: list[str], target: str, variant: str,
                    output_dir: str | Path | None = None, config_path: str | Path | None = None,
                    overrides: list[str] = (), learning_rate: float | None = None) -> TrainConfig:
    """A TrainConfig for stage 2: the stage-1 run's data settings, the sources' base model,
    adapter method 'scalearn', and the target as the only seen task."""
    variant = canonical_variant(variant)
    dirs = resolve_sources(run_dir, sources)
    metas = [source_meta(d) for d in dirs]
    bases = {m.get("base_model") for m in metas if m.get("base_model")}
    if len(bases) > 1:
        raise ScaLearnError(f"the sources were trained on different base models: {', '.join(sorted(bases))}")
    if config_path is None:  # the first source's run config carries the data settings of stage 1
        cand = dirs[0].parent / "config.yaml"
        config_path = cand if cand.is_file() else None
    cfg = load_config(config_path)
    if bases:
        cfg.model.name_or_path = bases.pop()
    names = [d.parent.name if d.name == "model" else d.name for d in dirs]
    cfg.adapter.method = "scalearn"
    cfg.adapter.options = {"sources": [str(d) for d in dirs], "source_names": names, "variant": variant}
    cfg.data.seen, cfg.data.held_out, cfg.data.split_dir = [target], [], None
    cfg.per_task, cfg.resume = False, False
    cfg.learning_rate = PAPER_LR if learning_rate is None else learning_rate
    base_out = Path(run_dir) if run_dir else Path("runs")
    cfg.output_dir = str(output_dir or base_out / "transfer" / f"{target}-{variant}")
    if overrides:
        cfg = from_dict(TrainConfig, apply_overrides(to_dict(cfg), list(overrides)))
    if cfg.adapter.method != "scalearn":
        raise ConfigError("instructmt transfer trains ScaLearn: do not override adapter.method")
    return cfg


def target_split(cfg: TrainConfig, target: str):
    """(Task, held-back instances) of the target task."""
    split = resolve_tasks(cfg.data)
    task = split.registry.select([target])[0]
    held = split_instances(task, cfg.data.max_instances_per_task, cfg.data.holdback_per_seen_task)[1]
    return split, task, held


def evaluate_on_heldback(model, tokenizer, kind: str, cfg: TrainConfig, task, held, out_dir: str | Path,
                         title: str) -> dict[str, float]:
    if not held:
        raise ConfigError(f"task {task.name!r} has no held-back instances to score: set "
                          "data.holdback_per_seen_task > 0 (in stage 1 as well, so no adapter saw them)")
    return evaluate_tasks(model, tokenizer, [task], kind=kind, output_dir=out_dir, encoding=cfg.data.encoding,
                          max_source_length=cfg.data.max_source_length,
                          max_new_tokens=cfg.data.max_target_length, max_instances=None,
                          instances={task.name: held}, title=title, show_progress=False,
                          use_chat_template=cfg.model.use_chat_template)


def run_transfer(cfg: TrainConfig, target: str, evaluate: bool = True) -> TransferResult:
    split, task, held = target_split(cfg, target)
    res = train(cfg, split=split)
    metrics = None
    trainable = 0
    if res.model_dir is not None:
        model, tok, meta = load_run(res.model_dir)
        trainable = model.num_trainable_parameters()
        if evaluate:
            metrics = evaluate_on_heldback(model, tok, meta["kind"], cfg, task, held, Path(cfg.output_dir) / "eval",
                                           title=f"ScaLearn ({cfg.adapter.options['variant']}) on {target}")
    return TransferResult(Path(cfg.output_dir), res.model_dir, target, cfg.adapter.options["variant"],
                          list(cfg.adapter.options["source_names"]), res.steps, res.final_loss, trainable,
                          metrics, res.losses)
