"""`instructmt retrieve train|build-index|query`: the UDR demonstration retriever."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """Unified demonstration retrieval (UDR): one dense retriever, trained across tasks
with feedback from the generator (which candidate demonstrations raise the likelihood of the
gold output), that picks demonstrations for held-out tasks at evaluation time."""

EPILOG = """examples:
  instructmt retrieve train --tasks tasks/sample --lm runs/lora/model --output runs/udr
  instructmt retrieve train --tasks tasks/sample --lm runs/lora --encoder all-MiniLM-L6-v2 \\
      --iterations 3 --num-candidates 50 --list-size 8 --output runs/udr
  instructmt retrieve build-index --retriever runs/udr --tasks tasks/sample --split tasks/sample/splits/test_tasks.txt
  instructmt retrieve build-index --retriever runs/minilm --encoder all-MiniLM-L6-v2 --tasks tasks/sample
  instructmt retrieve query --retriever runs/udr --tasks tasks/sample --task task951_min_number \\
      --input "12, 7, 30" -k 4

Then evaluate with: instructmt eval ... --demos udr --retriever runs/udr --k 8 --demo-budget 1600
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("retrieve", help="train / index / query the UDR demonstration retriever",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="retrieve_command", metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train a retriever across tasks with LM feedback (UDR)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _task_args(t)
    t.add_argument("--lm", required=True, metavar="MODEL",
                   help="generator giving the feedback: a run (RUN or RUN/model), a local model dir or a Hub id")
    t.add_argument("--lm-kind", choices=("auto", "seq2seq", "causal"), default="auto")
    t.add_argument("--output", required=True, metavar="DIR", help="where to save the retriever")
    t.add_argument("--encoder", default="all-MiniLM-L6-v2",
                   help="encoder to start from: Hub id or path (all-MiniLM-L6-v2 = the bundled copy)")
    t.add_argument("--iterations", type=int, default=3, help="mining iterations (0 = BM25, then its own)")
    t.add_argument("--num-candidates", type=int, default=50, help="L: candidates mined per query")
    t.add_argument("--list-size", type=int, default=8, help="ranked candidates per query per step")
    t.add_argument("--epochs", type=int, default=1, help="epochs per iteration")
    t.add_argument("--batch-size", type=int, default=8, help="queries per step")
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--max-queries-per-task", type=int, default=200)
    t.add_argument("--max-length", type=int, default=256, help="encoder max tokens")
    t.add_argument("--encoder-layers", type=int, default=None,
                   help="keep only the encoder's first N layers (cheaper on a CPU)")
    t.add_argument("--scorer-batch-size", type=int, default=16, help="batch size of LM feedback scoring")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_train)

    b = sub.add_parser("build-index", help="(re)build a retriever's FAISS index over a demonstration pool",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _task_args(b)
    b.add_argument("--retriever", required=True, metavar="DIR",
                   help="saved retriever to re-index; created from --encoder when it does not exist")
    b.add_argument("--encoder", default=None,
                   help="encoder for a new retriever (default all-MiniLM-L6-v2, cosine)")
    b.add_argument("--ivf-threshold", type=int, default=50_000, help="use IVF above this many candidates")
    b.set_defaults(func=run_build_index)

    q = sub.add_parser("query", help="print the demonstrations a selector picks for one input",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--tasks", action="append", required=True, metavar="PATH",
                   help="task file or directory holding the task (its pool); repeatable")
    q.add_argument("--task", required=True, help="task whose pool to search")
    q.add_argument("--input", required=True, help="query input text")
    q.add_argument("--demos", choices=("udr", "bm25", "random", "dense"), default="udr")
    q.add_argument("--retriever", metavar="DIR", help="saved retriever (for --demos udr)")
    q.add_argument("-k", "--k", type=int, default=8)
    q.set_defaults(func=run_query)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", action="append", required=True, metavar="PATH",
                   help="task file or directory (any supported format); repeatable")
    p.add_argument("--split", metavar="FILE", default=None,
                   help="file of task names to use (default for train: DIR/splits/train_tasks.txt when present)")
    p.add_argument("--task", action="append", default=[], metavar="NAME", help="use only these tasks; repeatable")


def _load_tasks(args, *, default_split: str | None = None):
    from ..errors import ConfigError
    from ..tasks.natural_instructions import read_split_file
    from ..tasks.registry import TaskRegistry, load_path

    registry = TaskRegistry()
    for path in args.tasks:
        for task in load_path(path):
            registry.add(task)
    names = list(args.task)
    split = args.split
    if not names and split is None and default_split:
        cand = Path(args.tasks[0]) / "splits" / default_split
        if cand.exists():
            split = str(cand)
            print(f"using tasks listed in {split}")
    if split:
        names += [n for n in read_split_file(split) if n in registry]
    tasks = registry.select(names) if names else list(registry.values())
    if not tasks:
        raise ConfigError("no tasks selected")
    return tasks


def load_feedback_lm(path: str, kind: str = "auto"):
    """(model, tokenizer, kind): an instructmt run directory, else any HF model by path or id."""
    from ..models.loading import load_pretrained, load_run
    from ..rundir import RUN_META
    p = Path(path)
    if (p / RUN_META).exists() or (p / "model" / RUN_META).exists():
        model, tok, meta = load_run(p)
        return model, tok, meta["kind"]
    return load_pretrained(path, kind=kind)


def run_train(args: argparse.Namespace) -> int:
    from ..retrieval.scorer import LMScorer
    from ..retrieval.train import UDRTrainConfig, train_udr

    from ..io_safety import check_output_path
    from ..validation import SEED_MAX, SIZE_MAX, check_flags
    check_flags(args, {"iterations": (0, 1000), "num_candidates": (1, 1 << 20), "list_size": (2, 1 << 16),
                       "epochs": (1, 1 << 20), "batch_size": (1, 1 << 16), "lr": (1e-12, 10.0),
                       "max_queries_per_task": (1, SIZE_MAX), "max_length": (8, 1 << 20),
                       "encoder_layers": (1, 1024), "scorer_batch_size": (1, 1 << 16), "seed": (0, SEED_MAX)})
    check_output_path(args.output, purpose="--output", inputs=list(args.tasks or []) + [args.lm], allow_nonempty=True)
    tasks = _load_tasks(args, default_split="train_tasks.txt")
    model, tok, kind = load_feedback_lm(args.lm, args.lm_kind)
    scorer = LMScorer(model, tok, kind, batch_size=args.scorer_batch_size, progress=True)
    cfg = UDRTrainConfig(encoder=args.encoder, num_candidates=args.num_candidates, list_size=args.list_size,
                         iterations=args.iterations, epochs_per_iteration=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, max_queries_per_task=args.max_queries_per_task,
                         max_length=args.max_length, encoder_layers=args.encoder_layers,
                         seed=args.seed)
    print(f"training UDR retriever on {len(tasks)} tasks with feedback from {args.lm} ({kind})")
    result = train_udr(tasks, scorer, cfg, output_dir=args.output)
    print(json.dumps(result.history, indent=2))
    print(f"saved retriever ({len(result.retriever.pool)} pool items, "
          f"{result.retriever.index.kind if result.retriever.index else 'no'} index) to {result.output_dir}")
    return 0


def run_build_index(args: argparse.Namespace) -> int:
    from ..validation import SIZE_MAX, check_flags
    check_flags(args, {"ivf_threshold": (1, SIZE_MAX)})
    from ..retrieval.encoder import BiEncoder
    from ..retrieval.index import RETRIEVER_META, DemoPool, Retriever

    tasks = _load_tasks(args)
    d = Path(args.retriever)
    if (d / RETRIEVER_META).exists():
        retriever = Retriever.load(d)
    else:
        retriever = Retriever(BiEncoder.from_pretrained(args.encoder, normalize=True))
    pool = DemoPool.from_tasks(tasks)
    seconds = retriever.build_index(pool, ivf_threshold=args.ivf_threshold, progress=True)
    retriever.save(d)
    print(f"indexed {len(pool)} demonstrations from {len(tasks)} tasks "
          f"({retriever.index.kind}) in {seconds:.1f}s -> {d}")
    return 0


def run_query(args: argparse.Namespace) -> int:
    from ..validation import check_flags
    check_flags(args, {"k": (1, 256)})
    from ..retrieval.selectors import make_demo_selector
    from ..tasks.registry import TaskRegistry, load_path
    from ..tasks.schema import Instance

    registry = TaskRegistry()
    for path in args.tasks:
        for task in load_path(path):
            registry.add(task)
    task = registry.get(args.task)
    selector = make_demo_selector(args.demos, [task], k=args.k, demo_budget_tokens=None,
                                  retriever_dir=args.retriever)
    demos = selector(task, Instance(id="<query>", input=args.input, outputs=[]))
    for i, ex in enumerate(demos, 1):
        print(f"{i}. [{ex.id}] {ex.input!r} -> {ex.output!r}")
    print(f"({len(demos)} demonstrations, most similar last)")
    return 0
