"""`instructmt transfer`: ScaLearn — adapt to a target task by learning to scale source adapters."""

from __future__ import annotations

import argparse
import json

from ..io_safety import atomic_write_text

DESCRIPTION = """ScaLearn stage 2 (Frohmann et al. 2024). The base model and the source LoRA adapters
(one per source task, from `instructmt train --adapter lora --per-task --output RUN`) stay frozen;
only the scaling omega of each source's output is trained on the target task:
    y = W x + sum_i omega_i * (B_i A_i x) * scaling_i
Include the target's own stage-1 adapter among the sources when it exists (the paper's setting).
The target is scored on its held-back instances (data.holdback_per_seen_task), never trained on."""

EPILOG = """variants (trainable omega):
  scalearn     one omega per adapted module, per source, per output dim   (modules x N x d)
  uniform      one scalar per adapted module, per source                   (modules x N)
  pp           ScaLearn++: per source, per output dim, shared across layers by module name (q, v, ...)
  uniform-pp   ScaLearnUniform++: one scalar per source                    (N); no omega dropout

examples:
  instructmt train --adapter lora --per-task --output runs/stage1 --set data.holdback_per_seen_task=40
  instructmt transfer --from runs/stage1 --sources task907_max_number,task906_sort_numbers,task951_min_number \\
      --target task951_min_number --variant scalearn
  instructmt transfer --from runs/stage1 --sources a,b --target t --variant uniform-pp --set max_steps=200
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("transfer", help="ScaLearn: learn to scale source adapters for a target task",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="run_dir", metavar="RUN", default=None,
                   help="stage-1 run directory (its adapters/<task>/ hold the source adapters)")
    p.add_argument("--sources", required=True, metavar="A,B,C",
                   help="comma-separated source task names under RUN/adapters/ (or adapter directories)")
    p.add_argument("--target", required=True, metavar="TASK", help="target task name")
    p.add_argument("--variant", default="scalearn", choices=("scalearn", "uniform", "pp", "uniform-pp"),
                   help="shape of omega (default: scalearn)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="output run directory (default: RUN/transfer/<target>-<variant>)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="base config (default: the first source's stage-1 config.yaml)")
    p.add_argument("--lr", type=float, default=None, help="learning rate for omega (default 6e-3, as the paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. max_steps=200 or adapter.options.omega_dropout=0.1 (repeatable)")
    p.add_argument("--no-eval", action="store_true", help="skip scoring the target's held-back instances")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..validation import check_flags
    check_flags(args, {"lr": (1e-12, 10.0)})
    from ..workflows.scalearn_transfer import run_transfer, transfer_config

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    cfg = transfer_config(run_dir=args.run_dir, sources=sources, target=args.target, variant=args.variant,
                          output_dir=args.output, config_path=args.config, overrides=args.overrides,
                          learning_rate=args.lr)
    res = run_transfer(cfg, args.target, evaluate=not args.no_eval)
    summary = {"target": res.target, "variant": res.variant, "sources": res.sources, "steps": res.steps,
               "final_loss": res.final_loss, "trainable_parameters": res.trainable_parameters,
               "model_dir": str(res.model_dir) if res.model_dir else None}
    if res.metrics:
        summary["exact_match"] = res.metrics.get("exact_match")
        summary["rougeL"] = res.metrics.get("rougeL")
    atomic_write_text(res.output_dir / "transfer.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0
