"""ROUGE as an `evaluate` metric module kept in the repo, so `evaluate.load(<this dir>)` works offline.

Scores each prediction against every reference with `rouge_score.RougeScorer(use_stemmer=True)`
and keeps the maximum F-measure over references (the official SNI rule). Returns scores in [0, 1]
per instance and their mean.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE F-measure with stemming, max over references, per instance and averaged."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION)
class SniRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin (2004); Wang et al. (2022) Super-NaturalInstructions",
            inputs_description="predictions: list[str]; references: list[list[str]]",
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references, rouge_types=("rougeL",), use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
        out = {}
        for rt in rouge_types:
            per = []
            for pred, refs in zip(predictions, references):
                per.append(max(scorer.score(ref, pred)[rt].fmeasure for ref in refs) if refs else 0.0)
            out[rt] = sum(per) / len(per) if per else 0.0
            out[f"{rt}_per_instance"] = per
        return out
