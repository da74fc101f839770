"""decaNLP source: QA-SRL."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_text
from .common import FAMILY, dedupe, make_task, qa_instance, read_head, task_name


def _srl_clean(s: str) -> str:
    """decaNLP's detokenisation of QA-SRL text (PTB brackets, spacing around punctuation)."""
    s = " ".join(s.split())
    for a, b in (("-LRB-", "("), ("-RRB-", ")"), ("-LAB-", "<"), ("-RAB-", ">"), ("-AMP-", "&"), ("%pw", " ")):
        s = s.replace(a, b)
    for p in (" .", " ,", " ;", " !", " ?", " :", " )", " 'll", " n't ", " %", " 't", " 's", " 'm", " 'd", " 're"):
        s = s.replace(p, p.lstrip())
    for p in ("( ", "$ "):
        s = s.replace(p, p.rstrip())
    s = s.replace(" - ", "-")
    for p in ("``", "`", "''", "\u201c", "\u201d", " '"):
        s = s.replace(p, "")
    return " ".join(s.split()).strip()


def _align_to_context(answer: str, context: str) -> str:
    if answer in context or not answer:
        return answer
    for cand in (answer[0].lower() + answer[1:], answer[0].upper() + answer[1:], answer.lower()):
        if cand in context:
            return cand
    return answer


def load_qasrl(path: str | Path) -> list[Task]:
    """QA-SRL `wiki1.{train,dev,test}.qa`: sentence blocks; each question line is the seven
    slots, `?`, then answers separated by `###`."""
    p = Path(path)
    name = task_name("srl", p)
    lines = []
    for raw in read_text(p).splitlines():
        line = " ".join(raw.split())
        if not line:
            lines.append("")
            continue
        first = line.split()[0]
        if "WIKI1" in first.split("_")[0]:
            continue  # sentence id line
        if first.isdigit() and len(line.split()) <= 3:
            continue  # predicate line: index, verb, number of questions
        lines.append(line)
    out, context, new_block = [], "", True
    for n, line in enumerate(lines):
        if not line:
            new_block = True
            continue
        if new_block:
            context, new_block = _srl_clean(line), False
            continue
        if "?" not in line:
            raise TaskFormatError(f"question line without '?': {line[:60]!r}", path=str(p), task=name)
        q, answers = line.split("?", 1)
        question = _srl_clean(q.replace(" _", "") + "?")
        all_answers = [_align_to_context(_srl_clean(a), context) for a in answers.split("###")]
        all_answers = dedupe([a for a in all_answers if a])
        if not all_answers:
            raise TaskFormatError(f"question {question!r} has no answer", path=str(p), task=name)
        out.append(qa_instance(f"{name}-{len(out)}", context, question, all_answers))
    return [make_task("srl", name, out, p)]


def _is_qasrl(path: Path) -> bool:
    return path.suffix == ".qa" and "WIKI1_" in read_head(path, 256)


FORMAT = TaskFormat("decanlp_qasrl", FAMILY, _is_qasrl, load_qasrl, "QA-SRL wiki1.*.qa")
