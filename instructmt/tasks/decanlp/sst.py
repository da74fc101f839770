"""decaNLP source: SST."""

from __future__ import annotations

import csv
from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from .common import FAMILY, QUESTIONS, make_task, qa_instance, read_head, task_name


_SST_BINARY = ["negative", "positive"]
_SST_FINE = ["very negative", "negative", "neutral", "positive", "very positive"]


def load_sst(path: str | Path) -> list[Task]:
    """SST CSV `label,sentence` (header line). Labels 0-1: binary; any label above 1, or a
    file named *fine*: the five-class version."""
    p = Path(path)
    with p.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0][:2]] != ["label", "sentence"]:
        raise TaskFormatError("expected the header 'label,sentence'", path=str(p), line=1)
    body = rows[1:]
    try:
        labels = [int(r[0]) for r in body]
    except (ValueError, IndexError):
        bad = next(i for i, r in enumerate(body) if not r or not r[0].strip().lstrip("-").isdigit())
        raise TaskFormatError("label is not an integer", path=str(p), line=bad + 2, field="label") from None
    fine = "fine" in p.name or any(lab > 1 for lab in labels)
    names, question = (_SST_FINE, QUESTIONS["sst_fine"]) if fine else (_SST_BINARY, QUESTIONS["sst"])
    name = task_name("sst", p)
    out = []
    for i, (row, lab) in enumerate(zip(body, labels)):
        if not 0 <= lab < len(names):
            raise TaskFormatError(f"label {lab} out of range 0..{len(names) - 1}", path=str(p), line=i + 2)
        out.append(qa_instance(f"{name}-{i}", row[-1], question, [names[lab]]))
    return [make_task("sst", name, out, p, fine_grained=fine)]


def _is_sst(path: Path) -> bool:
    return path.suffix == ".csv" and read_head(path, 64).splitlines()[0].strip() in ("label,sentence", '"label","sentence"')


FORMAT = TaskFormat("decanlp_sst", FAMILY, _is_sst, load_sst, "SST CSV label,sentence (binary or fine-grained)")
