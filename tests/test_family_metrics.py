"""Parity tests for the decaNLP, BoX and chemistry metrics against hand-computed values."""

from __future__ import annotations

import math
import sys

import pytest

from instructmt.evaluation import chem_metrics as chem
from instructmt.evaluation import decanlp_metrics as dm
from instructmt.evaluation.metrics import compute_all, get_metric


def m(name, preds, refs):
    return get_metric(name).compute(preds, refs)


# --- decaNLP ----------------------------------------------------------------------------------
def test_nf1_nem():
    # "the cat sat" vs "a cat sat down" -> "cat sat" vs "cat sat down": P=1, R=2/3, F1=0.8
    assert m("nf1", ["The cat sat!"], [["a cat sat down"]]) == pytest.approx(80.0)
    assert m("nem", ["The Cat!", "dog"], [["cat"], ["a cat"]]) == pytest.approx(50.0)
    # max over references, and empty prediction scores 0 (decaNLP f1_score)
    assert m("nf1", ["cat", ""], [["dog", "the cat"], ["x"]]) == pytest.approx(50.0)


def test_em_is_case_and_space_insensitive_only():
    assert m("em", ["Positive ", "positive.", "very  negative"], [["positive"], ["positive"], ["very negative"]]) \
        == pytest.approx(200 / 3)


def test_corpus_bleu_lowercased():
    # 1-4gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert m("bleu", ["The cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(expected, abs=1e-6)
    # a shorter reference list is padded with its first reference: same score as a single reference
    two = m("bleu", ["the cat sat on the mat", "a b c d e"], [["the cat sat on a mat", "x"], ["a b c d e"]])
    assert 0 < two <= 100


def test_avg_rouge():
    # cat dog fish vs cat dog bird: R1 F = 2/3, R2 F = 1/2 (1 of 2 bigrams), RL F = 2/3
    assert m("avg_rouge", ["cat dog fish"], [["cat dog bird"]]) == pytest.approx(100 * (2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert dm.rouge_parts("One. Two.", ["One. Two."]) == pytest.approx((1.0, 1.0, 1.0))


def test_logical_form_parse_and_lfem():
    header = ["Player", "Team", "Points"]
    assert dm.to_logical_form("SELECT COUNT Points FROM table WHERE Player = Ada", header) == \
        {"sel": 2, "agg": 3, "conds": [[0, 0, "ada"]]}
    assert dm.to_logical_form("select team from table where player = ada and points > 3", header) == \
        {"sel": 1, "agg": 0, "conds": [[0, 0, "ada"], [2, 1, "3"]]}
    golds = [{"sel": 1, "agg": 0, "conds": [[0, 0, "Ada"]]}, {"sel": 2, "agg": 1, "conds": [[1, 0, "Owls"]]},
             {"sel": 0, "agg": 0, "conds": []}]
    preds = ["SELECT Team FROM table WHERE Player = ada", "SELECT MIN Points FROM table WHERE Team = Owls", "garbage"]
    assert dm.lfem_with_tables(preds, golds, [header] * 3) == pytest.approx(100 / 3)
    assert m("lfem", ["select team  from table where player = ada"], [["SELECT Team FROM table WHERE Player = Ada"]]) \
        == 100.0
    # with the instances (header + gold sql in fields) the registered metric parses like decaNLP
    from instructmt.tasks.schema import Instance
    insts = [Instance(id=str(k), input="", outputs=[""], fields={"header": header, "sql": g}) for k, g in enumerate(golds)]
    assert get_metric("lfem").compute(preds, [[""]] * 3, instances=insts) == pytest.approx(100 / 3)


def test_dialogue_joint_goal():
    ids = ["woz_en_0_0", "woz_en_0_1", "woz_en_1_0", "woz_en_1_1"]
    gold = [["food: chinese;"], ["area: east;"], ["food: thai;"], [";"]]
    pred = ["food: chinese;", "area: west;", "food: thai;", "food: thai;"]
    s = dm.dialogue_scores(pred, gold, ids)
    # joint: d0 t0 ok, d0 t1 wrong; d1 t0 ok, d1 t1 restates food: thai -> same state -> ok  => 3/4
    assert s["joint_goal_em"] == pytest.approx(75.0)
    assert s["turn_goal_em"] == pytest.approx(50.0)  # d1 t1's delta differs
    assert s["turn_request_em"] == pytest.approx(100.0)
    assert dm.dsem(pred, gold, ids) == pytest.approx(75.0)
    from instructmt.tasks.schema import Instance
    insts = [Instance(id=i, input="", outputs=g) for i, g in zip(ids, gold)]
    assert get_metric("dsem").compute(pred, gold, instances=insts) == pytest.approx(75.0)
    # without ids every turn is its own dialogue: joint goal = turn goal here
    assert get_metric("dsem").compute(pred, gold) == pytest.approx(50.0)
    # order does not matter when ids are given
    assert dm.dsem(pred[::-1], gold[::-1], ids[::-1]) == pytest.approx(75.0)
    assert dm.to_delta_state("food: chinese, area: east; phone") == \
        {"inform": {"food": "chinese", "area": "east"}, "request": ["phone"]}


def test_corpus_f1():
    preds = ["bergen", "unanswerable", "oslo", "x y"]
    refs = [["Bergen"], ["Unanswerable"], ["unanswerable"], ["y and x"]]
    f1, p, r = dm.corpus_f1_parts(preds, refs)
    assert (p, r) == pytest.approx((200 / 3, 100.0))
    assert f1 == pytest.approx(80.0) and m("corpus_f1", preds, refs) == pytest.approx(80.0)


def test_decascore():
    scores = {"squad": {"nf1": 77.0, "nem": 70.0}, "iwslt": 21.4, "cnn_dailymail": {"avg_rouge": 24.4},
              "multinli": {"em": 74.0}, "sst": 86.5, "srl": 80.9, "zre": {"corpus_f1": 40.9},
              "woz": {"dsem": 84.8}, "wikisql": {"lfem": 70.2}, "schema": {"em": 48.8}}
    res = dm.decascore(scores)
    # MQAN per-task numbers (ANCHORS §2); they sum to 608.9, reported as 609.0 after rounding
    assert res["decascore"] == pytest.approx(608.9) and res["complete"] and not res["missing"]
    partial = dm.decascore({"sst": 50.0, "squad": {"nf1": 60.0}})
    assert partial["decascore"] == 110.0 and list(partial["per_task"]) == ["squad", "sst"]
    assert "wikisql" in partial["missing"]
    table = dm.decascore_markdown(partial)
    assert "| decaScore | squad (nf1) | sst (em) |" in table and "| 110.0 | 60.0 | 50.0 |" in table
    with pytest.raises(KeyError):
        dm.decascore({"sst": {"nf1": 1.0}})


# --- BoX ----------------------------------------------------------------------------------------
def test_box_metrics_split_references():
    refs = [["TP53 <Gene>, KRAS <Gene>"]]
    assert m("box_em", ["KRAS <Gene>"], refs) == 100.0
    assert m("box_em", ["TP53 <Gene>, KRAS <Gene>"], refs) == 100.0  # the whole gold is a reference too
    assert m("box_em", ["KRAS <Gene>, TP53 <Gene>"], refs) == 0.0
    # "the cat sat" vs "cat sat": normalised equal -> EM 100; F1 of "cat" vs "cat sat" = 2/3
    assert m("box_em", ["The cat sat."], [["cat sat"]]) == 100.0
    assert m("box_f1", ["cat"], [["cat sat"]]) == pytest.approx(100 * 2 / 3)
    # ROUGE-L: "cat sat" vs "the cat sat": LCS 2, P 1, R 2/3 -> F 0.8
    assert m("box_rougeL", ["cat sat"], [["the cat sat, dog"]]) == pytest.approx(80.0)
    assert m("box_sacrebleu", ["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)


# --- chemistry ----------------------------------------------------------------------------------
def test_validity_and_exact():
    assert m("smiles_validity", ["CCO", "C(", ""], [["CCO"]] * 3) == pytest.approx(100 / 3)
    assert m("smiles_exact", ["OCC", "C(", "CCC"], [["CCO"], ["C"], ["CCO"]]) == pytest.approx(100 / 3)


def test_fingerprints_count_invalid_as_miss():
    assert m("morgan_fts", ["OCC"], [["CCO"]]) == pytest.approx(100.0)
    assert m("maccs_fts", ["CCO", "not smiles"], [["CCO"], ["CCO"]]) == pytest.approx(50.0)
    assert chem.fingerprint_similarity(["CCO", "xx"], [["CCO"], ["CCO"]], "rdk", valid_only=True) == pytest.approx(100.0)
    sim = chem.tanimoto("CCO", "CCC", "morgan")
    assert 0 < sim < 1


def test_levenshtein_and_bleus():
    assert chem.levenshtein("kitten", "sitting") == 3
    assert m("levenshtein", ["kitten", "abc"], [["sitting", "kitten"], ["abd"]]) == pytest.approx(0.5)
    assert not get_metric("levenshtein").higher_is_better
    assert m("smiles_bleu", ["CCOC(C)=O"], [["CCOC(C)=O"]]) == pytest.approx(100.0)
    # words a b c d vs a b c e: unigram 3/4, bigram 2/3 -> BLEU-2 = sqrt(1/2)
    assert m("text_bleu2", ["a b c d"], [["A b c e"]]) == pytest.approx(100 * math.sqrt(0.5))
    assert m("text_bleu4", ["a b c d"], [["a b c e"]]) == pytest.approx(0.0, abs=1e-6)


def test_caption_rouge():
    res = compute_all(["text_rouge1", "text_rouge2", "text_rougeL"], ["cat dog fish"], [["cat dog bird"]])
    assert res == pytest.approx({"text_rouge1": 200 / 3, "text_rouge2": 50.0, "text_rougeL": 200 / 3})


def test_missing_rdkit_is_a_clear_error(monkeypatch):
    chem._rdkit.cache_clear()
    chem._mol.cache_clear()
    monkeypatch.setitem(sys.modules, "rdkit", None)
    try:
        with pytest.raises(chem.MissingDependencyError, match="need RDKit"):
            m("smiles_exact", ["CCO"], [["CCO"]])
    finally:
        monkeypatch.delitem(sys.modules, "rdkit")
        chem._rdkit.cache_clear()
        chem._mol.cache_clear()
