"""decaNLP source: MWSC."""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_text
from .common import FAMILY, make_task, qa_instance, read_head, task_name


_VARIANT = re.compile(r"\[.*?\]")


def _both_variants(text: str) -> list[str]:
    choices = [m[1:-1].split("/") for m in _VARIANT.findall(text)]
    pieces = _VARIANT.split(text)
    out = []
    for which in range(2):
        s = ""
        for i, piece in enumerate(pieces):
            s += piece
            if i < len(choices):
                s += choices[i][which]
        out.append(s)
    return out


def load_mwsc(path: str | Path) -> list[Task]:
    """decaNLP's Modified Winograd Schema `schema.txt`: blocks of (sentence with [a/b],
    question with [a/b], answer a/b); each block gives two examples. decaNLP's own split
    (train = first 80, validation = next, test = last 100) is kept in fields['split']."""
    p = Path(path)
    name = task_name("schema", p)
    blocks, block, start = [], [], 0
    for n, raw in enumerate(read_text(p).splitlines() + [""], start=1):
        if not raw.split():
            if block:
                blocks.append((start, block))
            block = []
            continue
        if not block:
            start = n
        block.append(raw.strip())
    examples = []
    for start, b in blocks:
        if len(b) != 3:
            raise TaskFormatError(f"schema block has {len(b)} lines, expected 3 (sentence, question, answers)",
                                  path=str(p), line=start, task=name)
        context, question, answer = b
        answers = answer.split("/")
        if len(answers) != 2:
            raise TaskFormatError("answer line must be 'choice1/choice2'", path=str(p), line=start + 2, task=name)
        contexts, questions = _both_variants(context), _both_variants(question)
        for k in range(2):
            examples.append((contexts[k], f"{questions[k]} {answers[0]} or {answers[1]}?", answers[k]))
    n_test = min(100, len(examples))
    out = []
    for i, (c, q, a) in enumerate(examples):
        split = "test" if i >= len(examples) - n_test else ("train" if i < 80 else "validation")
        out.append(qa_instance(f"{name}-{i}", c, q, [a], split=split))
    return [make_task("schema", name, out, p)]


def _is_mwsc(path: Path) -> bool:
    if path.suffix != ".txt":
        return False
    lines = [ln for ln in read_head(path, 2048).splitlines()[:4]]
    return len(lines) >= 3 and "[" in lines[0] and "/" in lines[0] and "/" in lines[2] and "\t" not in lines[0]


FORMAT = TaskFormat("decanlp_mwsc", FAMILY, _is_mwsc, load_mwsc, "MWSC schema.txt")
