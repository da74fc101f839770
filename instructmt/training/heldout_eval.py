"""Held-out curves during training: score the held-out tasks at step 0 (the base model before any
update) and every N optimizer steps, and log the points to `logs.jsonl` and TensorBoard.

Layering: training sits below evaluation, so this module only *schedules* the evaluation and keeps
it from touching training; the generation + metric step itself (`HeldoutScorer`) is passed in from
the command layer (`instructmt.evaluation.heldout_curve.HeldoutCurveScorer`), which reuses the
held-out runner's sharding and gathering. A callback rather than an import keeps the trainer free
of metric code, and lets library callers plug in any scorer (or none).

Training is not perturbed: the scorer runs on the unwrapped model under `torch.no_grad` with every
RNG (python, numpy, torch CPU and CUDA) saved and restored around it, and the model is put back in
train mode. Data order never reads a global RNG (it is a function of seed and epoch), and dropout /
MHR's Gumbel noise draw from the restored torch RNG, so the loss curve is the same with and without
`--eval-every` (tests/test_heldout_curve.py checks this).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from typing import Any, Protocol

import torch

from ..errors import ConfigError, InstructMTError
from .distributed import is_sharded

HELDOUT_RECORD = "heldout_eval"   # the "kind" of a held-out point in logs.jsonl


class HeldoutScorer(Protocol):
    """Generates on the held-out tasks and scores them; called on every process (it shards)."""

    def __call__(self, model, tokenizer, *, kind: str, split, accelerator) -> dict[str, Any]:
        """-> {"rougeL": float, "exact_match": float, "per_task": {task: {"rougeL":..,"exact_match":..}},
        "num_instances": int}"""

    def write_report(self, run_dir) -> None:
        """Draw the curve from the run's logs.jsonl (main process, after training)."""


def check_eval_keys(cfg) -> None:
    """The periodic-eval config keys, checked where the trainer starts (flags and YAML alike)."""
    for key, lo in (("eval_every", 0), ("eval_instances", 1), ("eval_batch_size", 1), ("eval_max_new_tokens", 1)):
        value = getattr(cfg, key)
        if value is None and key == "eval_max_new_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            where = f"{key} (--{key.replace('_', '-')})" if key in ("eval_every", "eval_instances") else key
            raise ConfigError(f"{where}: expected an integer >= {lo}, got {value!r}")


@contextlib.contextmanager
def preserved_rng():
    """Save every RNG the training step reads and put it back afterwards."""
    import numpy as np
    py, np_state = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices, enabled=True):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class PeriodicHeldoutEval:
    """When to evaluate, and where the points go. Owned by the trainer loop."""

    def __init__(self, scorer: HeldoutScorer, every: int, *, accelerator, tokenizer, kind: str, split,
                 method, log_fh=None, writer=None):
        if every > 0 and not split.held_out:
            raise InstructMTError("--eval-every needs held-out tasks, and this run has none: name some with "
                                  "--held-out or give a task directory with splits/test_tasks.txt")
        if every > 0 and getattr(method, "routed", False):
            raise InstructMTError(
                f"--eval-every: {method.name} routes by task id and held-out tasks have none during training; "
                "evaluate after training with `instructmt adapt` (e.g. --mode mhr-mu) and `instructmt eval`")
        if every > 0 and is_sharded(accelerator):
            raise InstructMTError("--eval-every is not supported under DeepSpeed ZeRO-3 / FSDP (each rank holds "
                                  "only a shard of the weights); evaluate the saved model with `instructmt eval`")
        self.scorer, self.every = scorer, every
        self.accelerator, self.tokenizer, self.kind, self.split = accelerator, tokenizer, kind, split
        self.log_fh, self.writer = log_fh, writer

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def due(self, step: int, *, last_step: int) -> bool:
        """Step 0 (the base model), every `every` steps, and the final step."""
        return self.enabled and (step % self.every == 0 or step == last_step)

    def run(self, model, step: int) -> dict[str, Any]:
        acc = self.accelerator
        unwrapped = acc.unwrap_model(model)
        was_training = unwrapped.training
        t0 = time.time()
        try:
            with preserved_rng(), torch.no_grad():
                unwrapped.eval()
                res = self.scorer(unwrapped, self.tokenizer, kind=self.kind, split=self.split, accelerator=acc)
        finally:
            unwrapped.train(was_training)
        rec = {"kind": HELDOUT_RECORD, "step": step, **res, "eval_s": round(time.time() - t0, 3)}
        if acc.is_main_process:
            if self.log_fh is not None:
                self.log_fh.write(json.dumps(rec) + "\n")
                self.log_fh.flush()
            if self.writer is not None:
                for m in ("rougeL", "exact_match"):
                    self.writer.add_scalar(f"heldout/{m}", res[m], step)
                    for task, scores in res.get("per_task", {}).items():
                        self.writer.add_scalar(f"heldout_task/{task}/{m}", scores[m], step)
                self.writer.flush()
            print(f"[instructmt] held-out step {step}: rougeL {res['rougeL']:.2f}, "
                  f"exact_match {res['exact_match']:.2f} ({res.get('num_instances', '?')} instances)")
        return rec

    def finish(self, run_dir) -> None:
        if self.enabled and self.accelerator.is_main_process:
            self.scorer.write_report(run_dir)

