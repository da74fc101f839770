"""decaNLP source: SQuAD."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_json
from .common import FAMILY, UNANSWERABLE, dedupe, json_head_has, make_task, qa_instance, task_name


def load_squad(path: str | Path) -> list[Task]:
    """SQuAD v1.1/v2.0 JSON: one instance per question; all gold answers are references."""
    p = Path(path)
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaskFormatError("expected {'data': [articles]}", path=str(p), field="data")
    name = task_name("squad", p)
    out = []
    for ai, art in enumerate(data["data"]):
        for pi, para in enumerate(art.get("paragraphs", [])):
            ctx = para.get("context")
            if not isinstance(ctx, str):
                raise TaskFormatError("paragraph has no context", path=str(p), task=name,
                                      field=f"data[{ai}].paragraphs[{pi}].context")
            for qi, qa in enumerate(para.get("qas", [])):
                where = f"data[{ai}].paragraphs[{pi}].qas[{qi}]"
                if "question" not in qa:
                    raise TaskFormatError("missing 'question'", path=str(p), task=name, field=where)
                question = " ".join(qa["question"].split())
                answers = [a["text"] for a in qa.get("answers", []) if isinstance(a, dict) and "text" in a]
                if qa.get("is_impossible") or not answers:
                    if not qa.get("is_impossible") and data.get("version", "v1.1") != "v2.0":
                        raise TaskFormatError("question has no answers", path=str(p), task=name, field=where)
                    answers = [UNANSWERABLE]
                out.append(qa_instance(str(qa.get("id", f"{name}-{len(out)}")), ctx, question, dedupe(answers)))
    return [make_task("squad", name, out, p, version=data.get("version", "v1.1"))]


def _is_squad(path: Path) -> bool:
    return json_head_has(path, 16384, '"data"', '"paragraphs"', '"qas"')


FORMAT = TaskFormat("decanlp_squad", FAMILY, _is_squad, load_squad, "SQuAD v1.1/v2.0 JSON as decaNLP QA")
