"""Zero-shot evaluation of a base model (no run): a real-model preset, a Hub id, a local HF
directory or a `.gguf` file, scored with the same prompts, generation and report as a trained run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data.tokenize import source_length_fn
from ..errors import InstructMTError
from ..models.loading import TINY_PRESETS, load_pretrained
from ..models.presets import is_gguf_reference
from ..retrieval.selectors import make_demo_selector
from ..rundir import RUN_META
from .runner import evaluate_tasks

# Defaults match the demo (`instructmt demo`), so `eval --model smollm2-135m` and
# `eval --model demo_output/model` score the same prompts.
ZERO_SHOT_ENCODING = "def+pos1"
ZERO_SHOT_MAX_SOURCE_LENGTH = 1024
ZERO_SHOT_MAX_NEW_TOKENS = 32  # short-answer tasks; raise --max-new-tokens for long outputs


@dataclass(frozen=True)
class ZeroShotSettings:
    encoding: str = ZERO_SHOT_ENCODING
    max_source_length: int = ZERO_SHOT_MAX_SOURCE_LENGTH
    max_new_tokens: int = ZERO_SHOT_MAX_NEW_TOKENS
    use_chat_template: bool = False


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_base_model_reference(model: str) -> bool:
    """A base model to evaluate zero-shot: a preset name, a .gguf file, a local Hugging Face model
    directory (config.json, no run metadata) or a Hub id (`org/name`, not a local path). A trained
    run (RUN or RUN/model, with instructmt_run.json) and anything else go the trained-run way, which
    names what is missing."""
    if model in TINY_PRESETS or is_gguf_reference(model):
        return True
    p = Path(model).expanduser()
    if p.exists():
        return p.is_dir() and (p / "config.json").is_file() and not (p / RUN_META).is_file() \
            and not (p / "model" / RUN_META).is_file()
    return bool(_HUB_ID.match(model))


def check_zero_shot_model(model: str) -> None:
    """Refuse references that make no sense zero-shot, with a one-line reason."""
    if model in TINY_PRESETS:
        raise InstructMTError(f"--model {model}: the tiny presets are randomly initialised, so a zero-shot "
                              "score means nothing; evaluate a trained run directory (RUN/model) or a "
                              "pretrained model (smollm2-135m, a Hub id, a local HF directory or a .gguf file)")


def evaluate_base_model(model_ref: str, tasks: list, output: str | Path, *, settings: ZeroShotSettings,
                        max_instances: int | None = 100, batch_size: int = 16, demos: str = "none", k: int = 2,
                        demo_budget: int | None = None, retriever: str | None = None, seed: int = 0,
                        trust_remote_code: bool = False, title: str | None = None) -> dict:
    """Load the base model, generate greedily for the tasks' first N instances, write the report."""
    check_zero_shot_model(model_ref)
    if not tasks:
        raise InstructMTError("no tasks to evaluate")
    model, tok, kind = load_pretrained(model_ref, trust_remote_code=trust_remote_code)
    model.eval()
    demo_selector = None
    if demos != "none":
        demo_selector = make_demo_selector(demos, tasks, k=k, length_fn=source_length_fn(tok), seed=seed,
                                           demo_budget_tokens=demo_budget or settings.max_source_length // 2,
                                           retriever_dir=retriever)
    return evaluate_tasks(model, tok, tasks, kind=kind, output_dir=output, encoding=settings.encoding,
                          max_source_length=settings.max_source_length, max_new_tokens=settings.max_new_tokens,
                          max_instances=max_instances, batch_size=batch_size, demo_selector=demo_selector,
                          use_chat_template=settings.use_chat_template,
                          title=title or f"{model_ref}: zero-shot evaluation")
