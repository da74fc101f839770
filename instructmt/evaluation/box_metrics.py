"""BoX metrics (In-BoXBART scripts/evaluation.py), on the registry's 0-100 scale.

In-BoXBART splits every gold output on ", " (multi-answer outputs are joined that way) and
scores the prediction against each part, keeping the maximum. The same is done here, with one
deliberate difference: the whole gold output stays a reference too, so a prediction that gets
every answer of a multi-answer output right is not scored below one that names a single answer
(In-BoXBART compares it only to the parts). Single-answer outputs score exactly as there. For:
ROUGE-L (rouge_score, Porter stemmer; the registry's rouge helper), SQuAD-style exact match and
token F1 (lowercase, punctuation and articles removed) and sentence-level sacreBLEU (the
prediction against all parts at once), each averaged over instances.
"""

from __future__ import annotations

import collections

from .metrics import Metric, mean_of, register_metric, rouge_instance, squad_normalize

SEPARATOR = ", "


def split_references(references: list[str]) -> list[str]:
    """Every reference split on ", " (In-BoXBART: `str(gold).split(', ')`), plus the whole reference
    when it has several parts."""
    out: list[str] = []
    for ref in references:
        parts = str(ref).split(SEPARATOR)
        out += parts + ([str(ref)] if len(parts) > 1 else [])
    return out


def _f1(prediction: str, reference: str) -> float:
    pred, gold = squad_normalize(prediction).split(), squad_normalize(reference).split()
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def box_f1_instance(prediction: str, references: list[str]) -> float:
    """Token F1 after SQuAD normalisation, max over the ", "-split references (0 on no overlap)."""
    return max((_f1(prediction, r) for r in split_references(references)), default=0.0)


def box_em_instance(prediction: str, references: list[str]) -> float:
    pred = squad_normalize(prediction)
    return float(any(pred == squad_normalize(r) for r in split_references(references)))


def box_rougeL_instance(prediction: str, references: list[str]) -> float:
    return rouge_instance(prediction, split_references(references), "rougeL")


def sentence_sacrebleu_instance(prediction: str, references: list[str]) -> float:
    """sacreBLEU of one prediction against all split references, in 0..1 (In-BoXBART's `sacrebleu`)."""
    import sacrebleu
    return sacrebleu.sentence_bleu(prediction, split_references(references)).score / 100.0


register_metric(Metric("box_rougeL", mean_of(box_rougeL_instance), True, box_rougeL_instance,
                       "ROUGE-L F (stemmed), max over the ', '-split references (BoX)"))
register_metric(Metric("box_em", mean_of(box_em_instance), True, box_em_instance,
                       "SQuAD-style EM (articles removed), max over the ', '-split references (BoX)"))
register_metric(Metric("box_f1", mean_of(box_f1_instance), True, box_f1_instance,
                       "SQuAD-style token F1 (articles removed), max over the ', '-split references (BoX)"))
register_metric(Metric("box_sacrebleu", mean_of(sentence_sacrebleu_instance), True, sentence_sacrebleu_instance,
                       "sentence sacreBLEU against all ', '-split references, averaged (BoX)"))
