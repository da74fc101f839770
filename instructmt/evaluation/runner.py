"""Held-out evaluation: render prompts, generate, score with each task's metrics, write the report.

Distributed (under `accelerate launch`): instances are sharded by index, predictions gathered and
put back in order, so every instance is scored exactly once and the scores do not depend on the
number of processes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..data.tokenize import EncodeSpec, chat_wrap, encode_sources, source_length_fn
from ..errors import InstructMTError
from ..prompts.render import PromptRenderer
from ..tasks.schema import Example, Instance, Task
from .generation import generate
from .metrics import get_metric
from .report import write_report

DemoSelector = Callable[[Task, Instance], list[Example]]
SNI_METRICS = ("exact_match", "rougeL")


@dataclass
class EvalItem:
    task: Task
    instance: Instance
    prompt: str
    demos: list[Example]


def build_items(tasks: Sequence[Task], renderer: PromptRenderer, *, max_instances: int | None = 100,
                instances: dict[str, list[Instance]] | None = None,
                demo_selector: DemoSelector | None = None) -> list[EvalItem]:
    items = []
    for task in tasks:
        insts = instances[task.name] if instances is not None else task.instances
        if max_instances is not None:
            insts = insts[:max_instances]  # SNI: the first 100 instances of each test task
        for inst in insts:
            demos = demo_selector(task, inst) if demo_selector is not None else None
            items.append(EvalItem(task, inst, renderer.render(task, inst, demos=demos), list(demos or [])))
    return items


def score(items: Sequence[EvalItem], predictions: Sequence[str]) -> dict[str, float]:
    """Official SNI aggregation: overall and per category over instances; per task; plus each task's
    own metrics (e.g. nf1 for decaNLP) per task and per family."""
    out: dict[str, float] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        groups[f"task:{it.task.name}"].append(k)
        groups[f"cat:{it.task.category_key}"].append(k)
        groups[f"family:{it.task.family}"].append(k)

    def compute(metric: str, idx: list[int]) -> float:
        fn = get_metric(metric).compute
        args = ([predictions[i] for i in idx], [items[i].instance.outputs for i in idx])
        if _takes_instances(fn):  # e.g. dialogue-state / logical-form EM need the structured fields
            return fn(*args, instances=[items[i].instance for i in idx])
        return fn(*args)

    everything = list(range(len(items)))
    for m in SNI_METRICS:
        out[m] = compute(m, everything)
    for key, idx in groups.items():
        kind, name = key.split(":", 1)
        if kind == "task":
            task = items[idx[0]].task
            for m in dict.fromkeys(list(SNI_METRICS) + list(task.metrics)):
                out[f"{m}_for_{name}"] = compute(m, idx)
        elif kind == "cat":
            for m in SNI_METRICS:
                out[f"{m}_for_{name}"] = compute(m, idx)
        else:
            for m in SNI_METRICS:
                out[f"{m}_for_family_{name}"] = compute(m, idx)
    out["num_instances"] = float(len(items))
    return out


def _takes_instances(fn) -> bool:
    import inspect
    try:
        return "instances" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def baseline_predictions(items: Sequence[EvalItem]) -> dict[str, list[str]]:
    """copy-input (the instance input) and copy-demo (the first demonstration's output)."""
    def demo_out(it: EvalItem) -> str:
        if it.demos:
            return it.demos[-1].output  # the most similar demo sits last
        return it.task.positive_examples[0].output if it.task.positive_examples else ""
    return {"copy_input": [it.instance.input for it in items], "copy_demo": [demo_out(it) for it in items]}


def encode_items(items: Sequence[EvalItem], tokenizer, *, kind: str, encoding: str, max_source_length: int,
                 max_new_tokens: int, use_chat_template: bool = False) -> list[list[int]]:
    """Source token ids of each item's prompt (in the chat template when asked and the tokenizer has one)."""
    prompts = [chat_wrap(tokenizer, it.prompt) if use_chat_template and getattr(tokenizer, "chat_template", None)
               else it.prompt for it in items]
    return encode_sources(prompts, tokenizer, EncodeSpec(kind, encoding, max_source_length, max_new_tokens))


def generate_sharded(model, tokenizer, kind: str, src_ids: Sequence[Sequence[int]], *, accelerator=None,
                     batch_size: int = 16, max_new_tokens: int = 128, task_ids: Sequence[int] | None = None,
                     show_progress: bool = True) -> list[str]:
    """Greedy predictions for every source, in order. Under `accelerate launch` each process
    generates for instances rank, rank+world, ... and the predictions are gathered back in order,
    so every instance is generated exactly once whatever the process count. Every process must call it."""
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    mine = list(range(rank, len(src_ids), world))
    preds_mine = generate(model, tokenizer, kind, [src_ids[i] for i in mine], batch_size=batch_size,
                          max_new_tokens=max_new_tokens,
                          task_ids=[task_ids[i] for i in mine] if task_ids else None,
                          show_progress=show_progress and rank == 0)
    if world == 1:
        return preds_mine
    from accelerate.utils import gather_object
    predictions = [""] * len(src_ids)
    for i, p in gather_object(list(zip(mine, preds_mine))):
        predictions[i] = p
    return predictions


def evaluate_tasks(model, tokenizer, tasks: Sequence[Task], *, kind: str, output_dir: str | Path,
                   renderer: PromptRenderer | None = None, encoding: str = "def+pos2",
                   max_source_length: int = 1024, max_new_tokens: int = 128, max_instances: int | None = 100,
                   batch_size: int = 16, instances: dict[str, list[Instance]] | None = None,
                   demo_selector: DemoSelector | None = None, task_names: list[str] | None = None,
                   use_chat_template: bool = False, accelerator=None, title: str = "Held-out evaluation",
                   show_progress: bool = True) -> dict[str, float]:
    """Generate and score; write predictions.jsonl, metrics.json, report.md and categories.png."""

    if not tasks:
        raise InstructMTError("no tasks to evaluate")
    renderer = renderer or PromptRenderer(encoding, length_fn=source_length_fn(tokenizer),
                                          max_source_length=max_source_length)
    items = build_items(tasks, renderer, max_instances=max_instances, instances=instances,
                        demo_selector=demo_selector)
    if not items:
        raise InstructMTError("the selected tasks have no instances to evaluate")
    task_ids = None
    if task_names is not None:
        index = {n: i for i, n in enumerate(task_names)}
        missing = sorted({it.task.name for it in items if it.task.name not in index})
        if missing:
            raise InstructMTError(
                f"this routed model has no task id for {', '.join(missing[:3])}: adapt it to the task first "
                f"(instructmt adapt) or evaluate zero-shot with --mode mhr-mu")
        task_ids = [index[it.task.name] for it in items]
    src_ids = encode_items(items, tokenizer, kind=kind, encoding=renderer.encoding.name,
                           max_source_length=max_source_length, max_new_tokens=max_new_tokens,
                           use_chat_template=use_chat_template)
    predictions = generate_sharded(model, tokenizer, kind, src_ids, accelerator=accelerator, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, task_ids=task_ids, show_progress=show_progress)
    metrics = score(items, predictions)
    baselines = {name: score(items, preds) for name, preds in baseline_predictions(items).items()}
    if accelerator is None or accelerator.is_main_process:
        write_report(Path(output_dir), items, predictions, metrics, baselines, title=title)
    return metrics
