"""`instructmt eval`: held-out-task evaluation of a trained model, with a per-category report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InstructMTError
from ..io_safety import REPORT_MARKER, check_output_path, user_io_error
from ..validation import check_number, validate_eval_args
from ..tasks.natural_instructions import read_split_file
from ..tasks.registry import TaskRegistry, load_path


def resolve_eval_tasks(specs: list[str], meta: dict | None, split: str) -> list:
    """Paths load tasks (a directory's splits/test_tasks.txt applies with --split test);
    anything else is a task name looked up in the run's own task sources."""
    registry = TaskRegistry()
    names: list[str] = []
    for spec in specs:
        for part in spec.split(","):
            if not part:
                continue
            p = Path(part)
            if p.exists():
                tasks = load_path(p)
                for t in tasks:
                    registry.add(t)
                chosen = [t.name for t in tasks]
                test_file = p / "splits" / "test_tasks.txt"
                if split == "test" and p.is_dir() and test_file.exists():
                    wanted = set(read_split_file(test_file))
                    chosen = [n for n in chosen if n in wanted]
                names.extend(chosen)
            else:
                names.append(part)
    missing = [n for n in names if n not in registry]
    if missing and meta:
        # names come from the run's own task sources, resolved as training resolved them (a mixture
        # YAML loads only its seen tasks; its held-out tasks come from the sources' split files)
        from ..config import DataConfig
        from ..training.task_setup import resolve_tasks
        sources = [s for s in meta.get("task_sources", []) if Path(s).exists()]
        if sources:
            for t in resolve_tasks(DataConfig(tasks=sources)).registry.values():
                if t.name not in registry:
                    registry.add(t)
    return registry.select(dict.fromkeys(names))


def evaluate_run(model_dir, output, *, tasks: list[str] | None = None, split: str = "test",
                 max_instances: int | None = 100, batch_size: int = 16, max_new_tokens: int | None = None,
                 encoding: str | None = None, demos: str = "none", k: int = 2, demo_budget: int | None = None,
                 retriever: str | None = None, trust_remote_code: bool = False, seed: int = 0,
                 title: str = "Held-out evaluation") -> dict:
    from ..io_safety import output_lock

    validate_eval_args(max_instances=max_instances, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       k=k, seed=seed, demo_budget=demo_budget)
    task_inputs = [p for spec in (tasks or []) for p in spec.split(",") if p and Path(p).exists()]
    from ..models.loading import RUN_META, read_run_meta
    model_input = Path(model_dir) / "model" if (Path(model_dir) / "model" / RUN_META).exists() else Path(model_dir)
    read_run_meta(model_input)  # not a model: say so before anything about --output
    check_output_path(output, purpose="--output", inputs=[model_input, *task_inputs], replace_report=True)
    with output_lock(output):
        return _evaluate_run(model_dir, output, tasks=tasks, split=split, max_instances=max_instances,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, encoding=encoding, demos=demos,
                             k=k, demo_budget=demo_budget, retriever=retriever,
                             trust_remote_code=trust_remote_code, seed=seed, title=title)


def _evaluate_run(model_dir, output, *, tasks, split, max_instances, batch_size, max_new_tokens, encoding, demos,
                  k, demo_budget, retriever, trust_remote_code, seed, title) -> dict:
    from ..models.loading import load_run
    from ..evaluation.runner import evaluate_tasks
    from ..data.tokenize import source_length_fn

    model, tok, meta = load_run(model_dir, trust_remote_code=trust_remote_code)
    if tasks is None:
        tasks = meta.get("held_out") or []
        if not tasks:
            raise InstructMTError("the run has no held-out tasks recorded: pass --tasks")
    task_list = resolve_eval_tasks(tasks, meta, split)
    if not task_list:
        raise InstructMTError(f"no tasks to evaluate from {tasks}")
    max_src = meta.get("max_source_length", 1024)
    selector = None
    if demos != "none":
        from ..retrieval.selectors import make_demo_selector
        selector = make_demo_selector(demos, task_list, k=k, demo_budget_tokens=demo_budget or max_src // 2,
                                      length_fn=source_length_fn(tok), retriever_dir=retriever, seed=seed)
    accelerator = None
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from ..training.trainer import make_accelerator
        from ..config import TrainConfig
        accelerator = make_accelerator(TrainConfig())
        model = model.to(accelerator.device)
    from ..adapters.base import get_adapter
    routed = get_adapter(meta["method"]).routed
    metrics = evaluate_tasks(model, tok, task_list, kind=meta["kind"], output_dir=output,
                             encoding=encoding or meta.get("encoding", "def+pos2"), max_source_length=max_src,
                             max_new_tokens=max_new_tokens or meta.get("max_target_length", 128),
                             max_instances=max_instances, batch_size=batch_size, demo_selector=selector,
                             task_names=meta.get("task_names") if routed else None,
                             use_chat_template=bool(meta.get("use_chat_template", False)),
                             accelerator=accelerator, title=title)
    if accelerator is None or accelerator.is_main_process:
        try:
            print(Path(output, "report.md").read_text(encoding="utf-8"))
        except OSError as e:
            raise user_io_error(e, Path(output, "report.md"), "read back the report") from None
    return metrics


def evaluate_base(model_ref: str, output, *, tasks: list[str] | None, split: str = "test",
                  max_instances: int | None = 100, batch_size: int = 16, max_new_tokens: int | None = None,
                  encoding: str | None = None, max_source_length: int | None = None,
                  use_chat_template: bool = False, demos: str = "none", k: int = 2, demo_budget: int | None = None,
                  retriever: str | None = None, trust_remote_code: bool = False, seed: int = 0) -> dict:
    """Zero-shot evaluation of a base model: there is no run metadata, so --tasks is required."""
    from ..evaluation.zero_shot import ZeroShotSettings, check_zero_shot_model, evaluate_base_model
    from ..io_safety import output_lock

    check_zero_shot_model(model_ref)
    if not tasks:
        raise InstructMTError(f"--model {model_ref} is a base model, not a trained run: pass --tasks "
                              "(task directories/files) to say what to evaluate")
    validate_eval_args(max_instances=max_instances, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       k=k, seed=seed, demo_budget=demo_budget)
    check_number(max_source_length, "max_source_length", 1, 1 << 20, flag="--max-source-length", optional=True)
    task_inputs = [p for spec in tasks for p in spec.split(",") if p and Path(p).exists()]
    model_input = [model_ref] if Path(model_ref).expanduser().exists() else []
    check_output_path(output, purpose="--output", inputs=[*model_input, *task_inputs], replace_report=True)
    task_list = resolve_eval_tasks(tasks, None, split)
    if not task_list:
        raise InstructMTError(f"no tasks to evaluate from {tasks}")
    defaults = ZeroShotSettings()
    settings = ZeroShotSettings(encoding=encoding or defaults.encoding,
                                max_source_length=max_source_length or defaults.max_source_length,
                                max_new_tokens=max_new_tokens or defaults.max_new_tokens,
                                use_chat_template=use_chat_template)
    with output_lock(output):
        metrics = evaluate_base_model(model_ref, task_list, output, settings=settings, max_instances=max_instances,
                                      batch_size=batch_size, demos=demos, k=k, demo_budget=demo_budget,
                                      retriever=retriever, seed=seed, trust_remote_code=trust_remote_code)
    print(Path(output, "report.md").read_text(encoding="utf-8"))
    return metrics


def _run(args) -> int:
    from ..evaluation.zero_shot import is_base_model_reference

    if is_base_model_reference(args.model):
        evaluate_base(args.model, args.output, tasks=args.tasks, split=args.split, max_instances=args.max_instances,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, encoding=args.encoding,
                      max_source_length=args.max_source_length, use_chat_template=args.chat_template,
                      demos=args.demos, k=args.k, demo_budget=args.demo_budget, retriever=args.retriever,
                      trust_remote_code=args.trust_remote_code, seed=args.seed)
        return 0
    evaluate_run(args.model, args.output, tasks=args.tasks, split=args.split, max_instances=args.max_instances,
                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, encoding=args.encoding,
                 demos=args.demos, k=args.k, demo_budget=args.demo_budget, retriever=args.retriever,
                 trust_remote_code=args.trust_remote_code, seed=args.seed)
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model (or a base model zero-shot) on held-out tasks",
                       description="Generate on each task's first N instances in length-sorted batches and "
                                   "write predictions.jsonl (Tk-Instruct format), metrics.json (exact_match, "
                                   "rougeL overall / per task / per category), report.md and categories.png.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a trained run (RUN/model or RUN), or a base model evaluated zero-shot: a preset "
                        "(smollm2-135m), a Hub id, a local HF directory or a .gguf file (then --tasks is required)")
    p.add_argument("--tasks", nargs="+", help="task directories/files and/or task names "
                   "(default: the run's held-out tasks)")
    p.add_argument("--split", choices=["test", "all"], default="test",
                   help="for a directory with splits/test_tasks.txt: evaluate only those (test) or every task (all)")
    p.add_argument("--output", required=True,
                   help="report directory, written atomically. Refused when it is an existing file, or is, holds "
                        "or lies inside a model / run / checkpoint directory (RUN/eval is fine) or the input "
                        f"tasks; an existing directory is replaced only when it is an instructmt report (it holds "
                        f"{REPORT_MARKER}) or empty. A second eval writing the same --output at once is refused")
    p.add_argument("--max-instances", type=int, default=100, help="first N instances per task (SNI uses 100)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int,
                   help="default: the run's max_target_length; 32 for a base model")
    p.add_argument("--encoding", help="prompt encoding (default: the one the model was trained with; def+pos1, "
                   "as in the demo, for a base model)")
    p.add_argument("--max-source-length", type=int,
                   help="prompt token limit for a base model (default 1024; a run uses its own)")
    p.add_argument("--chat-template", action="store_true",
                   help="base model: wrap prompts in the tokenizer's chat template (default: plain prompts, as "
                        "the demo trains)")
    p.add_argument("--demos", choices=["none", "random", "bm25", "dense", "udr"], default="none",
                   help="demonstrations picked from the task's own instance pool (never the test instance), "
                        "replacing the encoding's fixed positive examples; none keeps those fixed examples")
    p.add_argument("--k", type=int, default=2, help="number of demonstrations")
    p.add_argument("--demo-budget", type=int, help="token budget for demonstrations")
    p.add_argument("--retriever", help="trained UDR retriever directory (for --demos udr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_run)
