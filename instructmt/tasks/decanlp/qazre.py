"""decaNLP source: QA-ZRE."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_text
from .common import FAMILY, UNANSWERABLE, make_task, qa_instance, read_head, task_name


def load_qazre(path: str | Path) -> list[Task]:
    """QA-ZRE `relation_splits/{train,dev,test}.N`: relation, question template (XXX = subject),
    subject, sentence[, answer spans...] separated by tabs. No span: 'unanswerable'."""
    p = Path(path)
    name = task_name("zre", p)
    out = []
    for n, raw in enumerate(read_text(p).splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split("\t")
        if len(parts) < 4:
            raise TaskFormatError(f"expected at least 4 tab-separated fields, got {len(parts)}",
                                  path=str(p), line=n, task=name)
        relation, template, subject, context = parts[:4]
        answer = ", ".join(a.strip() for a in parts[4:] if a.strip())
        out.append(qa_instance(f"{name}-{n}", context.strip(), template.replace("XXX", subject),
                               [answer or UNANSWERABLE], relation=relation))
    return [make_task("zre", name, out, p)]


def _is_qazre(path: Path) -> bool:
    if not path.suffix[1:].isdigit():
        return False
    first = read_head(path, 4096).split("\n", 1)[0].split("\t")
    return len(first) >= 4 and "XXX" in first[1]


FORMAT = TaskFormat("decanlp_qazre", FAMILY, _is_qazre, load_qazre, "QA-ZRE relation_splits TSV")
