"""Encodings: named, declarative prompt formats rendered from the Jinja templates in prompts/.

An encoding name is either a registered special encoding (e.g. `qa`, `prefix`) or a Tk-Instruct
spec built from `+`-joined parts: `def`, `posK`, `negK`, `expl`, `name`
(e.g. `def+pos2`, the default; `def+pos2+neg2+expl`; `pos2`; `name+def`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import jinja2

from ..errors import ConfigError
from ..registry import Registry
from ..tasks.schema import Example, Instance, Task

DEFAULT_ENCODING = "def+pos2"


def _find_prompts_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "prompts"
        if (cand / "tk_instruct.jinja").exists():
            return cand
    raise FileNotFoundError("prompts/ directory with tk_instruct.jinja not found")


PROMPTS_DIR = _find_prompts_dir()


def endpunct(text: str) -> str:
    """Append "." unless the text already ends in punctuation (the Tk-Instruct rule)."""
    return text if text and text[-1] in string.punctuation else text + "."


@lru_cache(maxsize=None)
def _environment(prompts_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(prompts_dir), keep_trailing_newline=False,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["endpunct"] = endpunct
    return env


def get_template(name: str, prompts_dir: str | Path | None = None) -> jinja2.Template:
    return _environment(str(prompts_dir or PROMPTS_DIR)).get_template(name)


@dataclass(frozen=True)
class Encoding:
    name: str
    template: str = "tk_instruct.jinja"
    add_task_name: bool = False
    add_definition: bool = True
    num_pos: int = 2
    num_neg: int = 0
    add_explanation: bool = False
    # Extra template variables drawn from the instance's structured fields (e.g. context/question).
    options: dict[str, Any] = field(default_factory=dict)


ENCODINGS: Registry[Encoding] = Registry("encoding")


def register_encoding(enc: Encoding) -> Encoding:
    return ENCODINGS.register(enc.name, enc, replace=True)


_PART = re.compile(r"^(def|expl|name|pos(\d+)|neg(\d+))$")


def parse_encoding(name: str) -> Encoding:
    if name in ENCODINGS:
        return ENCODINGS.get(name)
    enc = Encoding(name=name, add_definition=False, num_pos=0)
    for part in name.split("+"):
        m = _PART.match(part.strip())
        if not m:
            known = ", ".join(sorted(ENCODINGS.names()))
            raise ConfigError(
                f"unknown encoding {name!r}: part {part!r} is not one of def, posK, negK, expl, name"
                + (f" (named encodings: {known})" if known else ""))
        p = m.group(1)
        if p == "def":
            enc = replace(enc, add_definition=True)
        elif p == "expl":
            enc = replace(enc, add_explanation=True)
        elif p == "name":
            enc = replace(enc, add_task_name=True)
        elif p.startswith("pos"):
            enc = replace(enc, num_pos=int(m.group(2)))
        else:
            enc = replace(enc, num_neg=int(m.group(3)))
    return enc


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
