"""`instructmt qfa search|export`: pick and deploy a per-layer bit-width subnet of a trained QFA
supernet, without retraining."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """Quantized once-for-all LoRA (method 'qfa'): one training run holds 2/3/4-bit
quantized copies of every adapted layer and a LoRA per bit-width. These subcommands choose and
deploy a configuration (one bit-width per layer) of a trained run."""

SEARCH_EPILOG = """Scores uniform + random subnets on a validation slice (the last --val-per-task
instances of each of the run's seen tasks), ranks layer sensitivity, narrows the space, samples
again under the budget, and writes qfa_search.json / .md / .png with the Pareto table.

examples:
  instructmt qfa search --run runs/qfa --budget 3
  instructmt qfa search --run runs/qfa --budget 2.5bits --metric rougeL --n-initial 60 --n-refine 30
  instructmt qfa search --run runs/qfa --budget 0.05MB --output runs/qfa/search
"""

EXPORT_EPILOG = """CONFIG is a JSON file (e.g. the search's qfa_search.json: its best subnet is used;
or {"config": {layer: bits}}), a JSON list/dict, a comma list of bits in layer order ("4,3,2,4"),
or one bit-width for all layers ("3").

examples:
  instructmt qfa export --run runs/qfa --config runs/qfa/qfa_search/qfa_search.json --output deploy/
  instructmt qfa export --run runs/qfa --config 4,3,3,2 --output deploy/
  instructmt eval --model deploy/ --tasks tasks/sample      # the export loads like any run
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("qfa", help="search / export per-layer bit-width subnets of a QFA run",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="qfa_command", metavar="SUBCOMMAND")

    s = sub.add_parser("search", help="score subnets, rank layer sensitivity, write the Pareto table",
                       description="Deployment search over a trained QFA supernet.", epilog=SEARCH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--run", required=True, metavar="RUN", help="run directory (holding model/) or its model/")
    s.add_argument("--budget", required=True, metavar="BITS_OR_MB",
                   help="average bits per weight (e.g. 3, 2.5bits) or quantized weight memory (e.g. 0.05MB)")
    s.add_argument("--output", metavar="DIR", help="where to write the report (default: RUN/qfa_search)")
    s.add_argument("--tasks", nargs="+", metavar="PATH", help="task sources (default: the run's)")
    s.add_argument("--split", choices=("seen", "held_out"), default="seen",
                   help="tasks the validation slice comes from (default: seen)")
    s.add_argument("--val-per-task", type=int, default=8, help="validation instances per task (default 8)")
    s.add_argument("--metric", choices=("loss", "rougeL", "exact_match"), default="loss",
                   help="loss (token NLL, lower is better; default) or a generation metric")
    s.add_argument("--n-initial", type=int, default=100, help="random subnets in the first round (default 100)")
    s.add_argument("--n-refine", type=int, default=50, help="subnets sampled in the narrowed space (default 50)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_search)

    e = sub.add_parser("export", help="write a deployable subnet (packed weights + its LoRAs)",
                       description="Export one configuration of a QFA supernet.", epilog=EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--run", required=True, metavar="RUN", help="run directory (holding model/) or its model/")
    e.add_argument("--config", required=True, metavar="CONFIG_JSON_OR_LIST", help="the configuration (see below)")
    e.add_argument("--output", required=True, metavar="DIR", help="directory to write the subnet to")
    e.set_defaults(func=run_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _load(run: str):
    from ..adapters.qfa import state_of
    from ..errors import ConfigError
    from ..models.loading import load_run

    model, tok, meta = load_run(run)
    if meta.get("method") != "qfa":
        raise ConfigError(f"{run}: method is {meta.get('method')!r}, not 'qfa' (train with adapter.method=qfa)")
    state_of(model)
    return model, tok, meta


def _run_dir(run: str) -> Path:
    p = Path(run)
    return p.parent if p.name == "model" else p


def run_search(args) -> int:
    from ..io_safety import check_output_path
    from ..validation import SEED_MAX, SIZE_MAX, check_flags
    check_flags(args, {"val_per_task": (1, SIZE_MAX), "n_initial": (1, 1 << 20), "n_refine": (0, 1 << 20),
                       "batch_size": (1, 1 << 16), "seed": (0, SEED_MAX)})
    check_output_path(Path(args.output) if args.output else _run_dir(args.run) / "qfa_search", purpose="--output",
                      inputs=[_run_dir(args.run) / "model"], allow_nonempty=True)
    from ..workflows.qfa_scoring import METRICS, load_tasks_for_run, make_scorer, validation_slice
    from ..adapters.qfa.search import Budget, search, write_search_report

    budget = Budget.parse(args.budget)
    model, tok, meta = _load(args.run)
    tasks = load_tasks_for_run(meta, args.tasks, args.split)
    vslice = validation_slice(tasks, args.val_per_task)
    scorer = make_scorer(model, tok, vslice, kind=meta["kind"], metric=args.metric,
                         encoding=meta.get("encoding", "def+pos2"),
                         max_source_length=meta.get("max_source_length", 1024), batch_size=args.batch_size)
    result = search(model, scorer, budget, metric_name=args.metric, higher_is_better=METRICS[args.metric],
                    n_initial=args.n_initial, n_refine=args.n_refine, seed=args.seed)
    result.extra["validation"] = {"split": args.split, "tasks": [t.name for t in vslice.tasks],
                                  "instances_per_task": args.val_per_task, "instances": vslice.size}
    result.extra["run"] = str(_run_dir(args.run))
    out = Path(args.output) if args.output else _run_dir(args.run) / "qfa_search"
    paths = write_search_report(result, out)
    if result.best:
        b = result.best
        print(f"best within {budget.label()}: {','.join(str(b.config[u]) for u in result.units)} "
              f"({b.avg_bits:.3f} avg bits, {b.weight_mb * 1000:.2f} KB, {args.metric} {b.metric:.4f})")
    else:
        print(f"no scored subnet fits {budget.label()}")
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    return 0


def run_export(args) -> int:
    from ..adapters.qfa import export_subnet, parse_configuration
    from ..errors import ConfigError

    from ..io_safety import check_output_path
    check_output_path(args.output, purpose="--output", inputs=[args.run])  # never over the run or a model
    model, tok, meta = _load(args.run)
    spec: object = args.config
    path = Path(args.config)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "best" in data:  # a search report: deploy its best subnet
            if not data["best"]:
                raise ConfigError(f"{path}: the search found no subnet within its budget")
            data = data["best"]["config"]
        spec = data
    config = parse_configuration(model, spec)
    info = export_subnet(model, config, args.output, tokenizer=tok, run_meta=meta,
                         extra_meta={"source_run": str(_run_dir(args.run))})
    print(f"exported {','.join(str(config[u]) for u in info['units'])} to {args.output}: "
          f"{info['avg_bits']:.3f} avg bits, quantized weights {info['weight_bytes'] / 1000:.2f} KB, "
          f"LoRA {info['lora_bytes'] / 1000:.2f} KB, file {info['file_bytes'] / 1000:.2f} KB")
    return 0
