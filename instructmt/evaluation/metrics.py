"""One metric registry. Each metric declares its direction and scores on a 0-100 scale.

A metric takes `predictions: list[str]` and `references: list[list[str]]` (all acceptable outputs
per instance) and returns one corpus-level number. Per-instance metrics also expose `per_instance`
so reports can show which instances failed.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..catalog import METRICS

ROUGE_MODULE_DIR = Path(__file__).parent / "rouge_module"


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[list[str], list[list[str]]], float]
    higher_is_better: bool = True
    per_instance: Callable[[str, list[str]], float] | None = None
    description: str = ""


def register_metric(metric: Metric) -> Metric:
    return METRICS.register(metric.name, metric)


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def mean_of(per_instance: Callable[[str, list[str]], float]) -> Callable[[list[str], list[list[str]]], float]:
    def compute(predictions: list[str], references: list[list[str]]) -> float:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        if not predictions:
            return 0.0
        return 100.0 * sum(per_instance(p, r) for p, r in zip(predictions, references)) / len(predictions)
    return compute


# --- Super-NaturalInstructions (official compute_metrics.py rules) ------------------------
_PUNCT = set(string.punctuation)


def sni_normalize(text: str) -> str:
    """Lowercase, drop string.punctuation, collapse whitespace. Articles are NOT removed."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    return " ".join(text.split())


def sni_exact_match_instance(prediction: str, references: list[str]) -> float:
    p = sni_normalize(prediction)
    return float(any(p == sni_normalize(r) for r in references))


@lru_cache(maxsize=4)
def cached_rouge_scorer(rouge_type: str, use_stemmer: bool = True):
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=use_stemmer)


def rouge_instance(prediction: str, references: list[str], rouge_type: str = "rougeL") -> float:
    scorer = cached_rouge_scorer(rouge_type)
    return max((scorer.score(ref, prediction)[rouge_type].fmeasure for ref in references), default=0.0)


def rougeL_instance(prediction: str, references: list[str]) -> float:
    return rouge_instance(prediction, references, "rougeL")


def rouge_via_evaluate(predictions: list[str], references: list[list[str]], rouge_type: str = "rougeL") -> float:
    """Same score through `evaluate`, loading our module by path (works offline)."""
    import evaluate
    metric = evaluate.load(str(ROUGE_MODULE_DIR / "sni_rouge.py"))
    res = metric.compute(predictions=predictions, references=references, rouge_types=(rouge_type,))
    return 100.0 * res[rouge_type]


register_metric(Metric("exact_match", mean_of(sni_exact_match_instance), True, sni_exact_match_instance,
                       "SNI exact match: lowercase, no punctuation, collapsed whitespace; max over references"))
register_metric(Metric("rougeL", mean_of(rougeL_instance), True, rougeL_instance,
                       "ROUGE-L F (rouge_score, Porter stemmer), max over references"))


# --- SQuAD-style normalisation (articles removed), shared by decaNLP and BoX metrics -----
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def compute_all(metric_names: list[str], predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    return {name: get_metric(name).compute(predictions, references) for name in metric_names}
