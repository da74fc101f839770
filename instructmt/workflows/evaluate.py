"""Evaluate a trained run on held-out tasks: resolve the tasks, pick demonstrations, generate, report."""

from __future__ import annotations

import os
from pathlib import Path

from ..adapters.base import get_adapter
from ..config import DataConfig, TrainConfig
from ..data.tokenize import source_length_fn
from ..errors import InstructMTError
from ..evaluation.runner import evaluate_tasks
from ..evaluation.zero_shot import ZeroShotSettings, check_zero_shot_model, evaluate_base_model
from ..io_safety import check_output_path, output_lock, user_io_error
from ..models.loading import load_run, read_run_meta
from ..retrieval.selectors import make_demo_selector
from ..rundir import model_dir_of
from ..tasks.natural_instructions import read_split_file
from ..tasks.registry import TaskRegistry, load_path
from ..training.task_setup import resolve_tasks
from ..training.distributed import make_accelerator
from ..validation import check_number, validate_eval_args


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
    validate_eval_args(max_instances=max_instances, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       k=k, seed=seed, demo_budget=demo_budget)
    task_inputs = [p for spec in (tasks or []) for p in spec.split(",") if p and Path(p).exists()]
    model_input = model_dir_of(model_dir) or Path(model_dir)
    read_run_meta(model_input)  # not a model: say so before anything about --output
    check_output_path(output, purpose="--output", inputs=[model_input, *task_inputs], replace_report=True)
    with output_lock(output):
        return _evaluate_run(model_dir, output, tasks=tasks, split=split, max_instances=max_instances,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, encoding=encoding, demos=demos,
                             k=k, demo_budget=demo_budget, retriever=retriever,
                             trust_remote_code=trust_remote_code, seed=seed, title=title)


def _evaluate_run(model_dir, output, *, tasks, split, max_instances, batch_size, max_new_tokens, encoding, demos,
                  k, demo_budget, retriever, trust_remote_code, seed, title) -> dict:
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
        selector = make_demo_selector(demos, task_list, k=k, demo_budget_tokens=demo_budget or max_src // 2,
                                      length_fn=source_length_fn(tok), retriever_dir=retriever, seed=seed)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        accelerator = make_accelerator(TrainConfig())
        model = model.to(accelerator.device)
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
