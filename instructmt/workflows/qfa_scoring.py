"""Scoring a supernet configuration on a validation slice (used by the deployment search).

`loss` (default): mean token negative log-likelihood of the references — cheap, deterministic and
informative even for tiny models whose generations score near zero. `rougeL` / `exact_match`:
greedy generation scored with the project's SNI metrics (slower; what the final user sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..adapters.qfa.model import model_inputs, set_configuration
from ..data.collator import make_collator
from ..data.tokenize import EncodeSpec, encode_sources, source_length_fn, tokenize_pairs
from ..errors import ConfigError
from ..evaluation.generation import generate
from ..evaluation.metrics import get_metric
from ..prompts.render import PromptRenderer
from ..tasks.registry import TaskRegistry, load_path
from ..tasks.schema import Instance, Task

METRICS = {"loss": False, "rougeL": True, "exact_match": True}  # name -> higher_is_better


@dataclass
class ValidationSlice:
    tasks: list[Task]
    instances: dict[str, list[Instance]]

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.instances.values())

    def pairs(self) -> list[tuple[Task, Instance]]:
        by_name = {t.name: t for t in self.tasks}
        return [(by_name[n], inst) for n, insts in self.instances.items() for inst in insts]


def validation_slice(tasks: Sequence[Task], per_task: int) -> ValidationSlice:
    """The last `per_task` instances of each task (the training mixture takes instances from the
    front, so with more instances than `max_instances_per_task` these were never trained on)."""
    insts = {t.name: list(t.instances)[-per_task:] for t in tasks if t.instances}
    if not insts:
        raise ConfigError("validation slice is empty: the selected tasks have no instances")
    return ValidationSlice([t for t in tasks if t.name in insts], insts)


def load_tasks_for_run(meta: dict, task_sources: Sequence[str] | None, split: str) -> list[Task]:
    sources = list(task_sources or meta.get("task_sources") or [])
    if not sources:
        raise ConfigError("no task sources: pass --tasks (the run's metadata lists none)")
    registry = TaskRegistry()
    for src in sources:
        if not Path(src).exists():
            raise ConfigError(f"task source {src} not found (pass --tasks with the run's task directory)")
        for t in load_path(src):
            registry.add(t)
    names = meta.get(split) or (meta.get("task_names") if split == "seen" else None)
    if not names:
        raise ConfigError(f"the run has no {split} tasks recorded; pass --split seen or held_out")
    missing = [n for n in names if n not in registry]
    if missing:
        raise ConfigError(f"task {missing[0]!r} of the run is not in {', '.join(sources)}")
    return registry.select(names)


def loss_batches(model_kind: str, tokenizer, vslice: ValidationSlice, *, encoding: str = "def+pos2",
                 max_source_length: int = 1024, max_target_length: int = 128, batch_size: int = 16) -> list[dict]:
    spec = EncodeSpec(model_kind, encoding, max_source_length, max_target_length)
    data = tokenize_pairs(vslice.pairs(), tokenizer, spec, cache_dir=None)
    collate = make_collator(model_kind, tokenizer)
    rows = [{"source_ids": s, "labels": t[0], "task": n}
            for s, t, n in zip(data["source_ids"], data["target_ids"], data["task"])]
    rows.sort(key=lambda r: len(r["source_ids"]))
    return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


@torch.no_grad()
def mean_token_loss(model: nn.Module, batches: Sequence[dict]) -> float:
    """Token-weighted mean cross-entropy of the labels (padding / prompt tokens excluded)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        inputs = model_inputs(batch, device)
        labels = inputs.pop("labels")
        out = model(**inputs, labels=labels)
        logits = out.logits
        if not getattr(model.config, "is_encoder_decoder", False):  # causal: predict the next token
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def make_scorer(model: nn.Module, tokenizer, vslice: ValidationSlice, *, kind: str, metric: str = "loss",
                encoding: str = "def+pos2", max_source_length: int = 1024, max_new_tokens: int = 32,
                batch_size: int = 16) -> Callable[[dict[str, int]], float]:
    """A function configuration -> metric value on the validation slice."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if metric == "loss":
        batches = loss_batches(kind, tokenizer, vslice, encoding=encoding, max_source_length=max_source_length,
                               batch_size=batch_size)

        def score(config: dict[str, int]) -> float:
            set_configuration(model, config)
            return mean_token_loss(model, batches)
        return score

    renderer = PromptRenderer(encoding, length_fn=source_length_fn(tokenizer), max_source_length=max_source_length)
    pairs = vslice.pairs()
    src = encode_sources([renderer.render(t, i) for t, i in pairs], tokenizer,
                         EncodeSpec(kind, encoding, max_source_length, max_new_tokens))
    refs = [i.outputs for _, i in pairs]
    scorer = get_metric(metric)

    def score(config: dict[str, int]) -> float:
        set_configuration(model, config)
        preds = generate(model, tokenizer, kind, src, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         show_progress=False)
        return float(scorer.compute(preds, refs))
    return score
