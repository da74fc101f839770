"""`instructmt train`: fine-tune on a task mixture (LoRA by default) with accelerate."""

from __future__ import annotations

import argparse

from pathlib import Path

from ..config import load_config
from ..io_safety import OutputError, check_output_path, is_main_process, is_run_dir, output_lock

# CLI flag -> config key; a flag overrides the YAML, `--set key=value` overrides anything.
FLAG_KEYS = {
    "model": "model.name_or_path", "tasks": "data.tasks", "adapter": "adapter.method", "output": "output_dir",
    "max_steps": "max_steps", "epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate",
    "encoding": "data.encoding", "seed": "seed", "save_every": "save_every", "grad_accum": "grad_accum",
    "mixed_precision": "mixed_precision", "rank": "adapter.r", "held_out": "data.held_out", "seen": "data.seen",
    "eval_every": "eval_every", "eval_instances": "eval_instances",
}


def config_from_args(args):
    overrides = []
    for flag, key in FLAG_KEYS.items():
        val = getattr(args, flag, None)
        if val is not None:
            overrides.append(f"{key}={','.join(val) if isinstance(val, list) else val}")
    if args.resume:
        overrides.append("resume=true")
    if getattr(args, "per_task", False):
        overrides.append("per_task=true")
    if getattr(args, "trust_remote_code", False):
        overrides.append("model.trust_remote_code=true")
    overrides += args.set or []
    return load_config(args.config, overrides)


def guard_run_output(cfg) -> None:
    """Refuse an --output that is a file, lies in a model / checkpoint / input directory, or already
    holds a run we were not asked to --resume (a new run would overwrite its config, logs and model)."""
    if not is_main_process():  # rank 0 checks; the others would race with its first writes
        return
    out = Path(cfg.output_dir)
    if is_run_dir(out) and not cfg.resume:
        raise OutputError("--output already holds a training run; pass --resume to continue it, or choose "
                          "a new --output (nothing was changed)", out)
    check_output_path(out, purpose="--output", inputs=cfg.data.tasks, allow_run=True)


def _run(args) -> int:
    cfg = config_from_args(args)
    guard_run_output(cfg)
    try:
        with output_lock(cfg.output_dir):
            return _train_locked(args, cfg)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to exit-time destructors, a
    rank of a CPU DeepSpeed/DDP run sometimes aborted (SIGABRT) after saving under heavy load."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train_locked(args, cfg) -> int:
    if cfg.per_task:
        from ..workflows.scalearn_stage1 import train_per_task
        train_per_task(cfg)
        return 0
    from ..training.trainer import train
    scorer = None
    if cfg.eval_every:  # the held-out curve: evaluation code handed to the trainer (layering)
        from ..evaluation.heldout_curve import HeldoutCurveScorer
        scorer = HeldoutCurveScorer(cfg)
    result = train(cfg, heldout_scorer=scorer)
    if result.interrupted:
        return 0
    if args.eval and result.model_dir is not None:
        from ..workflows.evaluate import evaluate_run
        evaluate_run(result.model_dir, cfg.output_dir + "/eval", max_instances=cfg.data.eval_instances_per_task)
    return 0


def _adapter_names() -> str:
    from ..catalog import ADAPTERS
    return " | ".join(ADAPTERS.names())


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see docs/architecture.md); flags below override it")
    p.add_argument("--model", help="Hub id, local HF directory or .gguf file of a seq2seq / causal LM, or a preset: smollm2-135m (pretrained SmolLM2-135M-Instruct), tiny-t5 / tiny-llama (random init)")
    p.add_argument("--tasks", nargs="+", help="task files, directories (with splits/) or task YAML")
    p.add_argument("--seen", nargs="+", help="seen task names (default: splits/train_tasks.txt or all)")
    p.add_argument("--held-out", dest="held_out", nargs="+", help="held-out task names (never trained on)")
    p.add_argument("--adapter", help="adapter method: " + _adapter_names() + " (default lora)")
    p.add_argument("--rank", type=int, help="adapter rank r")
    p.add_argument("--output", help="run directory (default runs/run). Refused when it is an existing file, lies "
                   "inside a model / checkpoint directory or the input tasks, or already holds a run (unless "
                   "--resume); a second train writing the same --output at once is refused")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--encoding", help="prompt encoding, e.g. def+pos2 (default) or def+pos2+neg2+expl")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (atomic)")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", type=int, metavar="N", default=argparse.SUPPRESS,
                   help="score the held-out tasks at step 0 (the base model) and every N optimizer steps; "
                        "per-task and overall ROUGE-L / exact match go to logs.jsonl (kind heldout_eval) and "
                        "TensorBoard, the curve to RUN/heldout_curve.png/.json/.md (default 0: never). Sharded "
                        "under accelerate launch; the training losses are unchanged by it")
    p.add_argument("--eval-instances", type=int, metavar="K", default=argparse.SUPPRESS,
                   help="first K instances of each held-out task for --eval-every (default 20; set the "
                        "generation length with --set eval_max_new_tokens=T)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run directory")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set data.mixing_cap=500 (repeatable)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train on a task mixture",
                       description="Fine-tune a seq2seq or causal LM on the seen tasks of a mixture "
                                   "(LoRA by default). Works under `accelerate launch` (DDP / DeepSpeed / FSDP).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_flags(p)
    p.add_argument("--per-task", action="store_true", help="train one adapter per seen task (ScaLearn stage 1)")
    p.add_argument("--eval", action="store_true", help="evaluate the held-out tasks after training")
    p.set_defaults(func=_run)
