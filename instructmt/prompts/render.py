"""Rendering: a task instance under an encoding (`tasks/encoding.py`), from the Jinja templates in
prompts/, with examples added only while the source fits the token budget."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..tasks.encoding import (DEFAULT_ENCODING, ENCODINGS, Encoding, parse_encoding,  # noqa: F401  (re-exported)
                              register_encoding)
from ..tasks.schema import Example, Instance, Task
from ..templates import get_template


def _ex(e: Example) -> dict[str, str]:
    return {"input": e.input, "output": e.output, "explanation": e.explanation}


class PromptRenderer:
    """Renders an instance of a task under an encoding, adding examples only while the source fits.

    `length_fn(text) -> int` counts tokens (the model's tokenizer); without it no budget is applied.
    Demonstrations retrieved at evaluation time (`demos`) replace the task's positive examples.
    """

    def __init__(self, encoding: str | Encoding = DEFAULT_ENCODING, *,
                 length_fn: Callable[[str], int] | None = None, max_source_length: int = 1024,
                 prompts_dir: str | Path | None = None):
        self.encoding = parse_encoding(encoding) if isinstance(encoding, str) else encoding
        self.length_fn = length_fn
        self.max_source_length = max_source_length
        self.prompts_dir = prompts_dir

    def encoding_for(self, task: Task) -> Encoding:
        return parse_encoding(task.encoding) if task.encoding else self.encoding

    def _render(self, enc: Encoding, task: Task, inst: Instance, pos: Sequence[Example],
                neg: Sequence[Example]) -> str:
        tpl = get_template(enc.template, self.prompts_dir)
        return tpl.render(
            task_name=task.name, definition=task.definition if enc.add_definition else None,
            positive=[_ex(e) for e in pos], negative=[_ex(e) for e in neg], input=inst.input,
            add_task_name=enc.add_task_name, add_explanation=enc.add_explanation,
            fields=inst.fields, task=task, **enc.options)

    def render(self, task: Task, inst: Instance, demos: Sequence[Example] | None = None) -> str:
        enc = self.encoding_for(task)
        pos_pool = list(demos) if demos is not None else task.positive_examples[: enc.num_pos]
        neg_pool = task.negative_examples[: enc.num_neg]
        if self.length_fn is None:
            return self._render(enc, task, inst, pos_pool, neg_pool)
        if demos is not None:
            # Retrieved demos come most-similar-last: on overflow drop from the front, keeping the best.
            pos = list(pos_pool)
            while pos and self.length_fn(self._render(enc, task, inst, pos, [])) > self.max_source_length:
                pos.pop(0)
            pos_pool = pos
        # Add examples one at a time, keeping each only if the source still fits (Tk-Instruct rule).
        pos: list[Example] = []
        for e in pos_pool:
            if self.length_fn(self._render(enc, task, inst, pos + [e], [])) <= self.max_source_length:
                pos.append(e)
            else:
                break
        neg: list[Example] = []
        for e in neg_pool:
            if self.length_fn(self._render(enc, task, inst, pos, neg + [e])) <= self.max_source_length:
                neg.append(e)
            else:
                break
        return self._render(enc, task, inst, pos, neg)


def render_prompt(task: Task, inst: Instance, encoding: str = DEFAULT_ENCODING, **kw) -> str:
    return PromptRenderer(encoding, **kw).render(task, inst)
