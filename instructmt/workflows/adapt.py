"""Few-shot adaptation of a trained multi-task run to new tasks (MHR / MHR-z / MHR-μ / LoRA-continue),
then scoring on the instances after the shots. The modes themselves live in `adapters/mhr/`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..adapters.base import get_adapter
from ..adapters.mhr import METHOD_OF_MODE, MHR_METHODS, MODES, to_lora
from ..config import load_config
from ..errors import ConfigError, InstructMTError
from ..evaluation.runner import evaluate_tasks
from ..io_safety import atomic_write_text
from ..models.loading import load_run, read_run_meta
from ..rundir import RUN_META, model_dir_of
from ..training.trainer import train
from .evaluate import resolve_eval_tasks


def _model_dir(run: str | Path) -> Path:
    found = model_dir_of(run)
    if found is None:
        raise InstructMTError(f"{run} is not a trained run (no model/{RUN_META})")
    return found


def adapt_config(source: Path, meta: dict, tasks: list[str], mode: str, *, output: str, shots: int,
                 steps: int, lr: float, batch_size: int, task_sources: list[str] | None = None,
                 seed: int = 0, router_lr: float | None = None, extra: list[str] | None = None):
    """The TrainConfig of an adaptation run: the source run's model/data settings, the new tasks as
    the only seen tasks, `shots` instances each, the adapter loaded from the source run."""
    run_cfg = source.parent / "config.yaml"
    cfg = load_config(run_cfg if run_cfg.exists() else None, list(extra or []))
    cfg.output_dir = output
    cfg.seed = seed
    cfg.data.tasks = list(task_sources or meta.get("task_sources") or cfg.data.tasks)
    missing = [s for s in cfg.data.tasks if not Path(s).exists()]
    if missing:
        raise ConfigError(f"task source(s) {missing} of run {source} not found from {Path.cwd()}: pass --tasks")
    cfg.data.seen, cfg.data.held_out, cfg.data.split_dir = list(tasks), [], None
    cfg.data.max_instances_per_task, cfg.data.holdback_per_seen_task = shots, 0
    cfg.data.mixing_cap = None
    cfg.model.tokenizer = str(source)
    base_ref = meta.get("base_saved")
    cfg.model.name_or_path = str(source / base_ref) if base_ref else meta["base_model"]
    cfg.adapter.method = METHOD_OF_MODE[mode]
    options = {"init_from": str(source)}
    if mode in ("mhr", "mhr-z"):
        options["adapt_mode"] = mode
        if router_lr is not None:
            options["router_lr"] = router_lr
    cfg.adapter.options = options
    cfg.max_steps, cfg.learning_rate = steps, lr
    cfg.batch_size = min(batch_size, shots * len(tasks))
    cfg.warmup_steps, cfg.lr_scheduler = 0, "constant"
    cfg.save_every, cfg.resume, cfg.per_task = 0, False, False
    return cfg


def _finish_meta(model_dir: Path, source: Path, meta_src: dict, mode: str, shots: int) -> None:
    """Keep a random-init base beside the adapted adapter (as the trainer does) and record the origin."""
    meta_path = model_dir / RUN_META
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    base_ref = meta_src.get("base_saved")
    if base_ref and not (model_dir / base_ref).exists():
        shutil.copytree(source / base_ref, model_dir / base_ref)
    if base_ref:
        meta["base_saved"] = base_ref
    meta["base_model"] = meta_src["base_model"]
    meta.update({"adapted_from": str(source), "adapt_mode": mode, "shots": shots})
    atomic_write_text(meta_path, json.dumps(meta, indent=2))


def zeroshot_mu(source: Path, meta_src: dict, tasks: list[str], output: str | Path) -> Path:
    """MHR-μ zero-shot: the average of the trained skills as one LoRA, saved as a run."""
    if meta_src.get("method") not in MHR_METHODS:
        raise ConfigError(f"mode mhr-mu-zeroshot needs an MHR / Poly run; {source} is {meta_src.get('method')!r}")
    model, tok, _ = load_run(source)
    lora = to_lora(model)
    model_dir = Path(output) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    lora.save_pretrained(str(model_dir), safe_serialization=True)
    tok.save_pretrained(str(model_dir))
    meta = {k: v for k, v in meta_src.items() if k not in ("adapter",)}
    meta.update({"method": "mhr-mu", "task_names": list(tasks), "seen": list(tasks), "held_out": []})
    atomic_write_text(model_dir / RUN_META, json.dumps(meta, indent=2))
    _finish_meta(model_dir, source, meta_src, "mhr-mu-zeroshot", 0)
    return model_dir


def adapt_run(source_run: str | Path, tasks: list[str], mode: str, *, output: str, shots: int = 32,
              steps: int = 1000, lr: float = 1e-3, batch_size: int = 8, task_sources: list[str] | None = None,
              seed: int = 0, router_lr: float | None = None, extra: list[str] | None = None) -> Path:
    """Adapt a trained run to `tasks`; return the adapted run's model directory."""
    if mode not in MODES:
        raise ConfigError(f"unknown adaptation mode {mode!r} (choose from {', '.join(MODES)})")
    source = _model_dir(source_run)
    meta = read_run_meta(source)
    if mode == "lora" and meta.get("method") != "lora":
        raise ConfigError(f"mode lora continues a LoRA run; {source} was trained with {meta.get('method')!r}")
    if mode.startswith("mhr") and meta.get("method") not in MHR_METHODS:
        raise ConfigError(f"mode {mode} needs an MHR / Poly run; {source} was trained with {meta.get('method')!r}")
    if mode == "mhr-mu-zeroshot":
        return zeroshot_mu(source, meta, tasks, output)
    cfg = adapt_config(source, meta, tasks, mode, output=output, shots=shots, steps=steps, lr=lr,
                       batch_size=batch_size, task_sources=task_sources, seed=seed, router_lr=router_lr,
                       extra=extra)
    result = train(cfg)
    if result.model_dir is None:
        raise InstructMTError("adaptation stopped before the end; nothing was saved")
    _finish_meta(Path(result.model_dir), source, meta, mode, shots)
    return Path(result.model_dir)


def evaluate_adapted(model_dir: Path, tasks: list[str], output: str | Path, *, shots: int, max_instances: int,
                     task_sources: list[str] | None = None, batch_size: int = 16) -> dict:
    """Score the adapted model on each task's instances after the first `shots` (never trained on)."""
    model, tok, meta = load_run(model_dir)
    if task_sources:
        meta = {**meta, "task_sources": task_sources}
    task_list = resolve_eval_tasks(tasks, meta, "all")
    instances = {t.name: list(t.instances[shots:])[:max_instances] for t in task_list}
    routed = get_adapter(meta["method"]).routed
    return evaluate_tasks(model, tok, task_list, kind=meta["kind"], output_dir=output,
                          encoding=meta.get("encoding", "def+pos2"),
                          max_source_length=meta.get("max_source_length", 1024),
                          max_new_tokens=meta.get("max_target_length", 128), max_instances=None,
                          instances=instances, batch_size=batch_size,
                          task_names=meta.get("task_names") if routed else None,
                          title=f"Adapted ({meta.get('adapt_mode', meta.get('method'))}, {shots} shots)",
                          show_progress=False)
