"""decaNLP source: MultiNLI / SNLI."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import iter_jsonl
from .common import FAMILY, first_jsonl_record, make_task, qa_instance, task_name


def nli_context_question(premise: str, hypothesis: str) -> tuple[str, str]:
    return (f'Premise: "{premise}"', f'Hypothesis: "{hypothesis}" -- entailment, neutral, or contradiction?')


def load_nli(path: str | Path) -> list[Task]:
    """MultiNLI/SNLI JSONL. Pairs without a gold label ('-') are skipped and counted."""
    p = Path(path)
    name = task_name("nli", p)
    out, skipped = [], 0
    for n, rec in iter_jsonl(p):
        for key in ("sentence1", "sentence2", "gold_label"):
            if key not in rec:
                raise TaskFormatError(f"missing key {key!r}", path=str(p), line=n, task=name, field=key)
        label = rec["gold_label"]
        if label not in ("entailment", "neutral", "contradiction"):
            skipped += 1
            continue
        c, q = nli_context_question(rec["sentence1"], rec["sentence2"])
        out.append(qa_instance(str(rec.get("pairID", f"{name}-{n}")), c, q, [label], genre=rec.get("genre", "")))
    return [make_task("multinli.in.out", name, out, p, skipped_no_gold=skipped)]


def _is_nli(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    rec = first_jsonl_record(path)
    return rec is not None and {"sentence1", "sentence2", "gold_label"} <= set(rec)


FORMAT = TaskFormat("decanlp_nli", FAMILY, _is_nli, load_nli, "MultiNLI/SNLI JSONL")
