"""`instructmt adapt`: few-shot adaptation of a trained multi-task run to new (held-out) tasks.

    instructmt adapt --from runs/mhr --task task951_min_number --mode mhr-z --shots 32 --output runs/mhr-z-951

Modes: mhr (new router row, train router + skills), mhr-z (train only the router), mhr-mu (average
the skills into one LoRA, train it), mhr-mu-zeroshot (the average, no training), lora (continue a
multi-task LoRA run). Training uses the first `--shots` instances of each task; `--eval` scores the
instances after them (never the shots).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..io_safety import atomic_write_text
from ..errors import ConfigError, InstructMTError

MODES = ("mhr", "mhr-z", "mhr-mu", "mhr-mu-zeroshot", "lora")
METHOD_OF_MODE = {"mhr": "mhr", "mhr-z": "mhr", "mhr-mu": "mhr-mu", "lora": "lora-continue"}


def _model_dir(run: str | Path) -> Path:
    from ..models.loading import RUN_META

    p = Path(run)
    if (p / "model" / RUN_META).exists():
        return p / "model"
    if (p / RUN_META).exists():
        return p
    raise InstructMTError(f"{run} is not a trained run (no model/{RUN_META})")


def adapt_config(source: Path, meta: dict, tasks: list[str], mode: str, *, output: str, shots: int,
                 steps: int, lr: float, batch_size: int, task_sources: list[str] | None = None,
                 seed: int = 0, router_lr: float | None = None, extra: list[str] | None = None):
    """The TrainConfig of an adaptation run: the source run's model/data settings, the new tasks as
    the only seen tasks, `shots` instances each, the adapter loaded from the source run."""
    from ..config import load_config

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
    from ..models.loading import RUN_META

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
    from ..adapters.mhr import to_lora
    from ..models.loading import RUN_META, load_run

    if meta_src.get("method") not in ("mhr", "poly"):
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
    from ..models.loading import read_run_meta

    if mode not in MODES:
        raise ConfigError(f"unknown adaptation mode {mode!r} (choose from {', '.join(MODES)})")
    source = _model_dir(source_run)
    meta = read_run_meta(source)
    if mode == "lora" and meta.get("method") != "lora":
        raise ConfigError(f"mode lora continues a LoRA run; {source} was trained with {meta.get('method')!r}")
    if mode.startswith("mhr") and meta.get("method") not in ("mhr", "poly"):
        raise ConfigError(f"mode {mode} needs an MHR / Poly run; {source} was trained with {meta.get('method')!r}")
    if mode == "mhr-mu-zeroshot":
        return zeroshot_mu(source, meta, tasks, output)
    from ..training.trainer import train

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
    from ..evaluation.runner import evaluate_tasks
    from ..models.loading import load_run
    from .eval import resolve_eval_tasks

    model, tok, meta = load_run(model_dir)
    if task_sources:
        meta = {**meta, "task_sources": task_sources}
    task_list = resolve_eval_tasks(tasks, meta, "all")
    instances = {t.name: list(t.instances[shots:])[:max_instances] for t in task_list}
    routed = meta.get("method") in ("mhr", "poly")
    return evaluate_tasks(model, tok, task_list, kind=meta["kind"], output_dir=output,
                          encoding=meta.get("encoding", "def+pos2"),
                          max_source_length=meta.get("max_source_length", 1024),
                          max_new_tokens=meta.get("max_target_length", 128), max_instances=None,
                          instances=instances, batch_size=batch_size,
                          task_names=meta.get("task_names") if routed else None,
                          title=f"Adapted ({meta.get('adapt_mode', meta.get('method'))}, {shots} shots)",
                          show_progress=False)


def _run(args) -> int:
    from ..io_safety import check_output_path
    from ..validation import SEED_MAX, SIZE_MAX, check_flags
    check_flags(args, {"shots": (1, SIZE_MAX), "steps": (1, SIZE_MAX), "lr": (1e-12, 10.0), "router_lr": (1e-12, 10.0),
                       "batch_size": (1, 1 << 20), "seed": (0, SEED_MAX), "eval_instances": (1, SIZE_MAX)})
    check_output_path(args.output, purpose="--output", inputs=[args.source], allow_run=True, allow_nonempty=True)
    model_dir = adapt_run(args.source, args.task, args.mode, output=args.output, shots=args.shots,
                          steps=args.steps, lr=args.lr, batch_size=args.batch_size, task_sources=args.tasks,
                          seed=args.seed, router_lr=args.router_lr, extra=args.set)
    print(f"[instructmt] adapted ({args.mode}) model in {model_dir}")
    if args.eval:
        metrics = evaluate_adapted(model_dir, args.task, Path(args.output) / "eval", shots=args.shots,
                                   max_instances=args.eval_instances, task_sources=args.tasks)
        print(f"[instructmt] exact_match={metrics['exact_match']:.2f} rougeL={metrics['rougeL']:.2f} "
              f"on {int(metrics['num_instances'])} instances after the shots")
    return 0


def register(sub) -> None:
    p = sub.add_parser("adapt", help="few-shot adaptation of a trained MHR / LoRA run to new tasks",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, help="trained run directory (or its model/)")
    p.add_argument("--task", nargs="+", required=True, help="task name(s) to adapt to (found in the run's "
                   "task sources or --tasks)")
    p.add_argument("--mode", choices=MODES, default="mhr", help="adaptation mode (default: mhr)")
    p.add_argument("--shots", type=int, default=32, help="training instances per task: the first N (default 32)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (paper: 1000)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the adapters (paper: 1e-3)")
    p.add_argument("--router-lr", type=float, help="learning rate of the router (default: the run's, 0.1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tasks", nargs="+", help="task files/directories (default: the run's task sources)")
    p.add_argument("--output", required=True, help="directory of the adapted run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="evaluate on the instances after the shots")
    p.add_argument("--eval-instances", type=int, default=100, help="instances scored per task with --eval")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.set_defaults(func=_run)
