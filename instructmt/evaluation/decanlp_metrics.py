"""decaNLP metrics (salesforce/decaNLP metrics.py), on the registry's 0-100 scale.

nf1 / nem: SQuAD-style F1 / EM after decaNLP normalisation (lowercase, no punctuation, no
articles, collapsed whitespace), max over references. em: exact match after lowercasing and
collapsing whitespace (decaNLP's fields are lowercased before its raw EM). bleu: sacreBLEU
corpus BLEU, lowercased. avg_rouge: (ROUGE-1 + ROUGE-2 + ROUGE-L) / 3, F-measures with the
Porter stemmer, summaries split into sentences at '.' (decaNLP used ROUGE-1.5.5; rouge_score's
rougeLsum over the same sentence split stands in for its summary-level ROUGE-L). lfem: WikiSQL
logical-form exact match. dsem: WOZ joint-goal exact match. corpus_f1: QA-ZRE corpus-level F1
over answered questions. `decascore` sums the ten headline metrics.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Mapping, Sequence

from ..tasks.decanlp import AGG_OPS, COND_OPS
from .metrics import Metric, cached_rouge_scorer, register_metric, squad_normalize

normalize_text = squad_normalize  # decaNLP's normalize_text is SQuAD's normalisation


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")


def token_f1(prediction: str, reference: str) -> float:
    """decaNLP/SQuAD token F1 on already-normalised strings (0 when nothing overlaps)."""
    p, r = prediction.split(), reference.split()
    common = collections.Counter(p) & collections.Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def nf1_instance(prediction: str, references: list[str]) -> float:
    p = normalize_text(prediction)
    return max((token_f1(p, normalize_text(r)) for r in references), default=0.0)


def nem_instance(prediction: str, references: list[str]) -> float:
    p = normalize_text(prediction)
    return float(any(p == normalize_text(r) for r in references))


def _lower_ws(text: str) -> str:
    return " ".join(text.lower().split())


def em_instance(prediction: str, references: list[str]) -> float:
    p = _lower_ws(prediction)
    return float(any(p == _lower_ws(r) for r in references))


def _mean(per_instance):
    def compute(predictions: list[str], references: list[list[str]]) -> float:
        _check(predictions, references)
        if not predictions:
            return 0.0
        return 100.0 * sum(per_instance(p, r) for p, r in zip(predictions, references)) / len(predictions)
    return compute


def corpus_bleu(predictions: list[str], references: list[list[str]]) -> float:
    """sacreBLEU corpus BLEU, lowercased (decaNLP computeBLEU). Shorter reference lists are padded
    with their first reference, which changes neither clipped counts nor the closest length."""
    import sacrebleu
    _check(predictions, references)
    if not predictions:
        return 0.0
    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu(predictions, streams, lowercase=True).score)


def _sentences(text: str) -> str:
    return "\n".join(" ".join(s.split()) for s in text.strip().split(".") if s.strip())


def rouge_parts(prediction: str, references: list[str]) -> tuple[float, float, float]:
    """(R1, R2, RL) F-measures in 0..1, each the max over references."""
    best = [0.0, 0.0, 0.0]
    pred = _sentences(prediction)
    for ref in references:
        r = _sentences(ref)
        for i, (kind, key) in enumerate((("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeLsum", "rougeLsum"))):
            best[i] = max(best[i], cached_rouge_scorer(kind).score(r, pred)[key].fmeasure)
    return best[0], best[1], best[2]


def avg_rouge_instance(prediction: str, references: list[str]) -> float:
    return sum(rouge_parts(prediction, references)) / 3


# --- WikiSQL logical forms ----------------------------------------------------------------
def to_logical_form(sql_text: str, header: list[str]) -> dict[str, Any]:
    """Parse `SELECT [agg] col FROM table [WHERE col op val AND ...]` back into WikiSQL's
    {sel, agg, conds} with lowercased condition values (decaNLP's to_lf)."""
    s = sql_text.lower()
    aggs = {a.lower(): i for i, a in enumerate(AGG_OPS)}
    conds_ops = [c.lower() for c in COND_OPS]
    headers = sorted(((h.lower(), i) for i, h in enumerate(header)), key=lambda x: len(x[0]), reverse=True)
    cond_s = None
    if "where" in s:
        s, cond_s = s.split("where", 1)
    s = " ".join(s.split()[1:-2])  # drop SELECT ... FROM table
    sel, agg = None, 0
    for col, idx in headers:
        if col == s:
            sel = idx
    if sel is None:
        parts = s.split()
        agg = aggs[parts[0]]
        rest = " ".join(parts[1:])
        for col, idx in headers:
            if col == rest:
                sel = idx
    conditions: list[list] = []
    if cond_s is not None:
        cond_s = " " + cond_s + " "
        for col, idx in headers:
            cond_s = cond_s.replace(" " + col + " ", f" Col{idx} ")
        toks = [f"Cond{conds_ops.index(t)}" if t in conds_ops else t for t in cond_s.split()]
        pieces = [x for x in re.split(r"(Col\d+ Cond\d+)", " ".join(toks)) if x.strip()]
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                c, o = piece.split()
                conditions.append([int(c[3:]), int(o[4:])])
            else:
                words = piece.split()
                if words and words[-1] == "and":
                    words = words[:-1]
                words = [header[int(w[3:])].lower() if re.fullmatch(r"Col\d+", w) else
                         (conds_ops[int(w[4:])] if re.fullmatch(r"Cond\d+", w) else w) for w in words]
                conditions[-1].append(" ".join(words))
    return {"sel": sel, "conds": conditions, "agg": agg}


def _gold_lf(sql: Mapping[str, Any]) -> dict[str, Any]:
    return {"sel": sql["sel"], "conds": [[c[0], c[1], str(c[2]).lower()] for c in sql.get("conds", [])],
            "agg": sql["agg"]}


def lfem_with_tables(predictions: list[str], golds: list[Mapping[str, Any]], headers: list[list[str]]) -> float:
    """decaNLP computeLFEM: parse each prediction with its table header and compare to the gold
    `sql` dict (condition values lowercased). Unparseable predictions count as wrong."""
    if not predictions:
        return 0.0
    correct = 0
    for pred, sql, header in zip(predictions, golds, headers):
        try:
            correct += to_logical_form(pred, header) == _gold_lf(sql)
        except Exception:  # noqa: BLE001 - any parse failure is a miss, as in decaNLP
            continue
    return 100.0 * correct / len(predictions)


def lfem(predictions: list[str], references: list[list[str]], instances: Sequence[Any] | None = None) -> float:
    """Logical-form EM. Given the Instances (whose fields hold the table `header` and gold `sql`,
    as the WikiSQL loader stores them) the predictions are parsed as decaNLP does; otherwise the
    SQL strings are compared (lfem_instance)."""
    if instances is not None and all("header" in i.fields and "sql" in i.fields for i in instances):
        return lfem_with_tables(predictions, [i.fields["sql"] for i in instances],
                                [i.fields["header"] for i in instances])
    return _mean(lfem_instance)(predictions, references)


def lfem_instance(prediction: str, references: list[str]) -> float:
    """Without the table at hand: the canonical SQL strings compared after lowercasing and
    collapsing whitespace. Equivalent to the logical form when column names are unambiguous."""
    return em_instance(prediction, references)


# --- WOZ dialogue state --------------------------------------------------------------------
def to_delta_state(line: str) -> dict[str, Any]:
    """'food: chinese, area: east; phone' -> {'inform': {...}, 'request': [...]}; bad input -> empty."""
    delta: dict[str, Any] = {"inform": {}, "request": []}
    if line == "None" or not line.strip():
        return delta
    try:
        inform, request = [[y.strip() for y in x.strip().split(",")] for x in line.split(";")]
    except ValueError:
        return delta
    pairs = {}
    for item in inform:
        kv = item.split(":")
        if len(kv) == 2:
            pairs[kv[0].strip()] = kv[1].strip()
    return {"inform": pairs, "request": request}


def dialogue_scores(predictions: list[str], references: list[list[str]], turn_ids: list[str] | None = None
                    ) -> dict[str, float]:
    """decaNLP computeDialogue. `turn_ids` are '{lang}_{dialogue}_{turn}' (instance ids
    'woz_en_3_1' work too); without them each instance is its own dialogue, so joint goal reduces
    to the turn goal. The belief state accumulates the predicted / gold inform deltas."""
    _check(predictions, references)
    if not predictions:
        return {"joint_goal_em": 0.0, "turn_request_em": 0.0, "turn_goal_em": 0.0, "avg_dialogue": 0.0}
    ids = list(turn_ids) if turn_ids is not None else [f"x_{i}_0" for i in range(len(predictions))]

    def key(tid: str):
        parts = tid.split("_")
        return ("_".join(parts[:-1]), int(parts[-1]) if parts[-1].isdigit() else parts[-1])
    order = sorted(range(len(predictions)), key=lambda i: key(ids[i]))
    joint = request = goal = 0
    dialogue = None
    state: dict[str, str] = {}
    gold_state: dict[str, str] = {}
    for i in order:
        d = key(ids[i])[0]
        if d != dialogue:
            state, gold_state, dialogue = {}, {}, d
        pred, gold = to_delta_state(predictions[i]), to_delta_state(references[i][0])
        state.update(pred["inform"])
        gold_state.update(gold["inform"])
        joint += state == gold_state
        request += pred["request"] == gold["request"]
        goal += pred["inform"] == gold["inform"]
    n = len(predictions)
    out = {"joint_goal_em": 100.0 * joint / n, "turn_request_em": 100.0 * request / n,
           "turn_goal_em": 100.0 * goal / n}
    out["avg_dialogue"] = (out["joint_goal_em"] + out["turn_request_em"]) / 2
    return out


def dsem(predictions: list[str], references: list[list[str]], ids: list[str] | None = None,
         instances: Sequence[Any] | None = None) -> float:
    """Joint-goal EM. Pass the instance ids (woz_{lang}_{dialogue}_{turn}), or the Instances
    themselves, to accumulate state over each dialogue as decaNLP does; without them every
    instance is scored as its own one-turn dialogue."""
    if ids is None and instances is not None:
        ids = [inst.id for inst in instances]
    return dialogue_scores(predictions, references, ids)["joint_goal_em"]


# --- QA-ZRE corpus F1 ----------------------------------------------------------------------
def corpus_f1_parts(predictions: list[str], references: list[list[str]]) -> tuple[float, float, float]:
    """decaNLP computeCF1 on normalised strings: a true positive is a non-'unanswerable' prediction
    whose bag of words (minus 'and') equals a non-'unanswerable' reference; precision over
    answered predictions, recall over answerable questions. Returns (F1, P, R) x 100.
    (decaNLP tests `len(clean_g) == 1` when reading references, a slip for `clean_a`; the
    intended test is used here.)"""
    _check(predictions, references)

    def bag(text: str):
        words = re.sub(r"\b(and)\b", " ", normalize_text(text)).split()
        return None if words == ["unanswerable"] else collections.Counter(words)
    preds = [bag(p) for p in predictions]
    refs = [[bag(r) for r in rs] for rs in references]
    answered = sum(p is not None for p in preds)
    answerable = sum(any(r is not None for r in rs) for rs in refs)
    tp = sum(1 for p, rs in zip(preds, refs) if p is not None and any(r is not None and r == p for r in rs))
    precision = tp / answered if answered else 0.0
    recall = tp / answerable if answerable else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return 100.0 * f1, 100.0 * precision, 100.0 * recall


def corpus_f1(predictions: list[str], references: list[list[str]]) -> float:
    return corpus_f1_parts(predictions, references)[0]


# --- decaScore ------------------------------------------------------------------------------
HEADLINE = {
    "squad": "nf1", "iwslt.en.de": "bleu", "cnn_dailymail": "avg_rouge", "multinli.in.out": "em", "sst": "em",
    "srl": "nf1", "zre": "corpus_f1", "woz.en": "dsem", "wikisql": "lfem", "schema": "em",
}


def decascore(per_task_scores: Mapping[str, Mapping[str, float] | float]) -> dict[str, Any]:
    """Sum of the ten tasks' headline metrics (max 1000), over whichever tasks are present.

    `per_task_scores` maps a decaNLP task key (squad, iwslt.en.de, cnn_dailymail, multinli.in.out,
    sst, srl, zre, woz.en, wikisql, schema; short forms like 'iwslt' or 'woz' also work) to its
    metrics dict or directly to its headline number. Returns
    {decascore, per_task: {task: headline}, missing: [...], complete: bool}.
    """
    aliases = {k.split(".")[0]: k for k in HEADLINE}
    aliases.update({"multinli": "multinli.in.out", "mnli": "multinli.in.out", "mwsc": "schema",
                    "qa_srl": "srl", "qa_zre": "zre", "cnn": "cnn_dailymail"})
    per_task: dict[str, float] = {}
    for key, scores in per_task_scores.items():
        task = key if key in HEADLINE else aliases.get(key)
        if task is None:
            raise KeyError(f"unknown decaNLP task {key!r} (known: {', '.join(HEADLINE)})")
        metric = HEADLINE[task]
        if isinstance(scores, Mapping):
            if metric not in scores:
                raise KeyError(f"task {key!r} has no {metric!r} score (its headline metric)")
            per_task[task] = float(scores[metric])
        else:
            per_task[task] = float(scores)
    ordered = {t: per_task[t] for t in HEADLINE if t in per_task}
    missing = [t for t in HEADLINE if t not in per_task]
    return {"decascore": sum(ordered.values()), "per_task": ordered, "missing": missing,
            "complete": not missing}


def decascore_markdown(result: Mapping[str, Any]) -> str:
    """A one-row Markdown table: decaScore then the per-task column for each task present."""
    cols = list(result["per_task"])
    head = "| decaScore | " + " | ".join(f"{c} ({HEADLINE[c]})" for c in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    row = f"| {result['decascore']:.1f} | " + " | ".join(f"{result['per_task'][c]:.1f}" for c in cols) + " |"
    return "\n".join([head, sep, row])


for _metric in (
    Metric("nf1", _mean(nf1_instance), True, nf1_instance, "decaNLP normalised token F1, max over references"),
    Metric("nem", _mean(nem_instance), True, nem_instance, "decaNLP normalised exact match"),
    Metric("em", _mean(em_instance), True, em_instance, "decaNLP exact match (lowercased, whitespace collapsed)"),
    Metric("bleu", corpus_bleu, True, None, "sacreBLEU corpus BLEU, lowercased (decaNLP IWSLT)"),
    Metric("avg_rouge", _mean(avg_rouge_instance), True, avg_rouge_instance,
           "(ROUGE-1 + ROUGE-2 + ROUGE-L) / 3 F, stemmed, sentences split at '.' (decaNLP CNN/DM)"),
    Metric("lfem", lfem, True, lfem_instance,
           "WikiSQL logical-form EM (canonical SQL strings; lfem_with_tables parses with the header)"),
    Metric("dsem", dsem, True, None, "WOZ joint-goal EM (dialogue_scores with turn ids accumulates state)"),
    Metric("corpus_f1", corpus_f1, True, None, "QA-ZRE corpus F1 over answered questions"),
):
    register_metric(_metric)
