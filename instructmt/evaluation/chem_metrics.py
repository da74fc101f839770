"""Molecule and caption metrics of MolT5 / Text+Chem T5 (blender-nlp/MolT5 evaluation/).

Molecules (RDKit, an optional dependency: `pip install instructmt[chem]`; a clear error when it
is missing): validity (RDKit parses the prediction; an empty string is invalid), exact match on
canonical SMILES, Morgan (radius 2, counts), MACCS and RDK fingerprint Tanimoto similarity,
Levenshtein distance (lower is better; raw strings, min over references) and character-level
BLEU (nltk corpus BLEU). Invalid predictions count as misses (similarity 0) and never raise;
MolT5 instead averages the fingerprint similarities over the valid predictions only
(`fingerprint_similarity(..., valid_only=True)` gives that number).
Captions: BLEU-2 / BLEU-4 (nltk corpus BLEU) and ROUGE-1/2/L F (rouge_score, no stemming).
MolT5 tokenises captions with SciBERT's WordPiece; offline we split lowercased text into words
and punctuation, so BLEU differs slightly from the published figures.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from ..errors import InstructMTError
from .metrics import Metric, cached_rouge_scorer, mean_of, register_metric


class MissingDependencyError(InstructMTError):
    """An optional package a metric needs is not installed."""


@lru_cache(maxsize=1)
def _rdkit():
    try:
        from rdkit import Chem, DataStructs, RDLogger
        from rdkit.Chem import MACCSkeys, rdFingerprintGenerator
    except ImportError:
        raise MissingDependencyError(
            "molecule metrics need RDKit: install it with `pip install rdkit` (or the `chem` extra)") from None
    RDLogger.DisableLog("rdApp.*")
    morgan = rdFingerprintGenerator.GetMorganGenerator(radius=2)
    return Chem, DataStructs, MACCSkeys, morgan


@lru_cache(maxsize=65536)
def _mol(smiles: str):
    Chem = _rdkit()[0]
    if not smiles or not smiles.strip():
        return None
    try:
        return Chem.MolFromSmiles(smiles.strip())
    except Exception:  # noqa: BLE001 - RDKit can raise on pathological input; that is a miss
        return None


def is_valid_smiles(smiles: str) -> bool:
    return _mol(smiles) is not None


def canonical_smiles(smiles: str) -> str | None:
    mol = _mol(smiles)
    return None if mol is None else _rdkit()[0].MolToSmiles(mol)


def _fingerprint(kind: str, mol):
    Chem, _, MACCSkeys, morgan = _rdkit()
    if kind == "morgan":
        return morgan.GetSparseCountFingerprint(mol)
    if kind == "maccs":
        return MACCSkeys.GenMACCSKeys(mol)
    if kind == "rdk":
        return Chem.RDKFingerprint(mol)
    raise ValueError(f"unknown fingerprint {kind!r} (morgan, maccs, rdk)")


def tanimoto(pred: str, ref: str, kind: str) -> float | None:
    """Tanimoto similarity of two molecules' fingerprints; None if either does not parse."""
    DataStructs = _rdkit()[1]
    a, b = _mol(pred), _mol(ref)
    if a is None or b is None:
        return None
    return float(DataStructs.TanimotoSimilarity(_fingerprint(kind, a), _fingerprint(kind, b)))


def fingerprint_similarity(predictions: list[str], references: list[list[str]], kind: str,
                           valid_only: bool = False) -> float:
    """Mean best-over-references similarity x 100; invalid predictions count 0 unless valid_only."""
    scores = []
    for pred, refs in zip(predictions, references):
        sims = [s for s in (tanimoto(pred, r, kind) for r in refs) if s is not None]
        if sims:
            scores.append(max(sims))
        elif not valid_only:
            scores.append(0.0)
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def validity_instance(prediction: str, references: list[str]) -> float:
    return float(is_valid_smiles(prediction))


def smiles_exact_instance(prediction: str, references: list[str]) -> float:
    """Canonical SMILES equality; an invalid prediction is a miss. A reference RDKit cannot parse
    is compared as text."""
    pred = canonical_smiles(prediction)
    if pred is None:
        return 0.0
    for ref in references:
        ref_c = canonical_smiles(ref)
        if (ref_c if ref_c is not None else ref.strip()) == pred:
            return 1.0
    return 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def levenshtein_mean(predictions: list[str], references: list[list[str]]) -> float:
    if not predictions:
        return 0.0
    return sum(min(levenshtein(p, r) for r in refs) for p, refs in zip(predictions, references)) / len(predictions)


def _nltk_bleu(hyps: list[list[str]], refs: list[list[list[str]]], weights) -> float:
    import warnings

    from nltk.translate.bleu_score import corpus_bleu
    if not hyps:
        return 0.0
    with warnings.catch_warnings():  # nltk warns (and returns 0) when an n-gram order has no match
        warnings.simplefilter("ignore", UserWarning)
        return 100.0 * float(corpus_bleu(refs, hyps, weights=weights))


def smiles_bleu(predictions: list[str], references: list[list[str]]) -> float:
    """MolT5's molecule BLEU: nltk corpus BLEU-4 over characters."""
    return _nltk_bleu([list(p) for p in predictions], [[list(r) for r in refs] for refs in references],
                      (0.25, 0.25, 0.25, 0.25))


_WORDS = re.compile(r"\w+|[^\w\s]")


def caption_tokens(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def text_bleu(n: int) -> Callable[[list[str], list[list[str]]], float]:
    weights = tuple([1.0 / n] * n)

    def compute(predictions: list[str], references: list[list[str]]) -> float:
        return _nltk_bleu([caption_tokens(p) for p in predictions],
                          [[caption_tokens(r) for r in refs] for refs in references], weights)
    return compute


def rouge_nostem_instance(rouge_type: str) -> Callable[[str, list[str]], float]:
    def score(prediction: str, references: list[str]) -> float:
        scorer = cached_rouge_scorer(rouge_type, False)
        return max((scorer.score(r, prediction)[rouge_type].fmeasure for r in references), default=0.0)
    return score


def chem_em_instance(prediction: str, references: list[str]) -> float:
    """Exact string match after stripping (action sequences)."""
    return float(any(prediction.strip() == r.strip() for r in references))


def _fp_metric(kind: str) -> Callable[[list[str], list[list[str]]], float]:
    return lambda p, r: fingerprint_similarity(p, r, kind)


_r1, _r2, _rl = (rouge_nostem_instance(t) for t in ("rouge1", "rouge2", "rougeL"))
for _m in (
    Metric("smiles_validity", mean_of(validity_instance), True, validity_instance, "share of predictions RDKit parses"),
    Metric("smiles_exact", mean_of(smiles_exact_instance), True, smiles_exact_instance,
           "exact match on RDKit canonical SMILES"),
    Metric("morgan_fts", _fp_metric("morgan"), True, None, "Morgan (r=2) fingerprint Tanimoto; invalid = 0"),
    Metric("maccs_fts", _fp_metric("maccs"), True, None, "MACCS keys Tanimoto; invalid = 0"),
    Metric("rdk_fts", _fp_metric("rdk"), True, None, "RDKit fingerprint Tanimoto; invalid = 0"),
    Metric("levenshtein", levenshtein_mean, False, None,
           "mean edit distance to the closest reference (lower is better)"),
    Metric("smiles_bleu", smiles_bleu, True, None, "character-level corpus BLEU of SMILES (nltk)"),
    Metric("text_bleu2", text_bleu(2), True, None, "caption corpus BLEU-2 (nltk, word/punctuation tokens)"),
    Metric("text_bleu4", text_bleu(4), True, None, "caption corpus BLEU-4 (nltk, word/punctuation tokens)"),
    Metric("text_rouge1", mean_of(_r1), True, _r1, "ROUGE-1 F, no stemming"),
    Metric("text_rouge2", mean_of(_r2), True, _r2, "ROUGE-2 F, no stemming"),
    Metric("text_rougeL", mean_of(_rl), True, _rl, "ROUGE-L F, no stemming"),
    Metric("chem_em", mean_of(chem_em_instance), True, chem_em_instance, "exact string match (action sequences)"),
):
    register_metric(_m)
