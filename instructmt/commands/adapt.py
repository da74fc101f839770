"""`instructmt adapt`: few-shot adaptation of a trained multi-task run to new (held-out) tasks.

    instructmt adapt --from runs/mhr --task task951_min_number --mode mhr-z --shots 32 --output runs/mhr-z-951

Modes: mhr (new router row, train router + skills), mhr-z (train only the router), mhr-mu (average
the skills into one LoRA, train it), mhr-mu-zeroshot (the average, no training), lora (continue a
multi-task LoRA run). Training uses the first `--shots` instances of each task; `--eval` scores the
instances after them (never the shots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapters.mhr import MODES


def _run(args) -> int:
    from ..io_safety import check_output_path
    from ..validation import SEED_MAX, SIZE_MAX, check_flags
    from ..workflows.adapt import adapt_run, evaluate_adapted  # start-up time: loads torch

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
