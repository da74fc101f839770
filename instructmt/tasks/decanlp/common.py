"""What every decaNLP source shares: the family's questions, metrics and definitions, the QA instance
(input rendered by the `qa` template), and the small file helpers the detectors use."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...errors import TaskFormatError
from ...templates import get_template
from ..schema import Instance, Task

FAMILY = "decanlp"
UNANSWERABLE = "unanswerable"

QUESTIONS = {
    "cnn_dailymail": "What is the summary?",
    "sst": "Is this review negative or positive?",
    "sst_fine": "Is this review very negative, negative, neutral, positive, or very positive?",
    "woz": "What is the change in state?",
    "wikisql": "What is the translation from English to SQL?",
}
# decaNLP task key -> (headline metric, all metrics reported). The key order is decaScore's.
TASK_METRICS: dict[str, list[str]] = {
    "squad": ["nf1", "nem"],
    "iwslt.en.de": ["bleu"],
    "cnn_dailymail": ["avg_rouge"],
    "multinli.in.out": ["em"],
    "sst": ["em"],
    "srl": ["nf1"],
    "zre": ["corpus_f1", "nf1"],
    "woz.en": ["dsem"],
    "wikisql": ["lfem"],
    "schema": ["em"],
}
DEFINITIONS = {
    "squad": "Answer the question with a span of the context, or 'unanswerable'.",
    "iwslt.en.de": "Translate the context as the question asks.",
    "cnn_dailymail": "Summarise the article.",
    "multinli.in.out": "Say whether the premise entails, contradicts or is neutral to the hypothesis.",
    "sst": "Classify the sentiment of the review.",
    "srl": "Answer the question about the predicate with a span of the sentence.",
    "zre": "Answer the relation question with a span of the sentence, or 'unanswerable'.",
    "woz.en": "Give the change in dialogue state for this turn.",
    "wikisql": "Translate the question into SQL over the table.",
    "schema": "Resolve the pronoun: answer with one of the two choices.",
}

QA_TEMPLATE = "decanlp_qa.jinja"  # the template of the `qa` encoding (prompts/render.py)


@lru_cache(maxsize=1)
def _qa_template():
    return get_template(QA_TEMPLATE)


def qa_input(context: str, question: str) -> str:
    """The model input for a QA triple, rendered by the `qa` template (one source of truth)."""
    return _qa_template().render(fields={"context": context, "question": question}, input="")


def qa_instance(iid: str, context: str, question: str, answers: list[str], **extra: Any) -> Instance:
    return Instance(id=iid, input=qa_input(context, question), outputs=answers,
                    fields={"context": context, "question": question, **extra})


def make_task(key: str, name: str, instances: list[Instance], path: Path, **extra: Any) -> Task:
    if not instances:
        raise TaskFormatError("holds no examples", path=str(path), task=name)
    return Task(name=name, family=FAMILY, definition=DEFINITIONS[key], instances=instances,
                metrics=list(TASK_METRICS[key]), encoding="qa", source=str(path),
                categories=[key], extra={"decanlp_task": key, **extra})


def task_name(key: str, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", path.stem).strip("_")
    return f"decanlp_{key.split('.')[0]}_{stem}"


def dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def read_head(path: Path, n: int = 4096) -> str:
    with path.open("rb") as fh:
        return fh.read(n).decode("utf-8", errors="replace")


def json_head_has(path: Path, n: int, *needles: str) -> bool:
    """A `.json` file whose first `n` bytes hold every needle (a cheap format detector)."""
    if path.suffix != ".json":
        return False
    text = read_head(path, n)
    return all(needle in text for needle in needles)


def first_jsonl_record(path: Path) -> dict | None:
    line = read_head(path, 65536).split("\n", 1)[0]
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None
