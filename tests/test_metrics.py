import pytest

from instructmt.evaluation.metrics import (get_metric, rouge_via_evaluate, sni_exact_match_instance,
                                           sni_normalize)


def test_normalization_keeps_articles():
    assert sni_normalize("  The  Cat, sat!  ") == "the cat sat"


def test_exact_match_hand_values():
    em = get_metric("exact_match")
    preds = ["The cat.", "a dog", "Blue"]
    refs = [["the cat"], ["dog"], ["red", "blue"]]
    # "a dog" != "dog": articles are NOT removed in SNI's normalization
    assert em.compute(preds, refs) == pytest.approx(100 * 2 / 3)
    assert sni_exact_match_instance("x", []) == 0.0


def test_rougeL_hand_values():
    rl = get_metric("rougeL")
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5 tokens; P=R=5/6
    assert rl.compute(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(100 * 5 / 6)
    # max over references
    assert rl.compute(["running dogs"], [["cats", "run dog"]]) == pytest.approx(100.0)  # Porter stemmer
    assert rl.compute(["abc"], [["xyz"]]) == 0.0


def test_evaluate_module_loads_offline_by_path_and_agrees():
    preds = ["the cat sat on the mat", "running dogs", "x"]
    refs = [["the cat is on the mat"], ["cats", "run dog"], ["y"]]
    assert rouge_via_evaluate(preds, refs) == pytest.approx(get_metric("rougeL").compute(preds, refs))


def test_unknown_metric_suggests():
    from instructmt.errors import RegistryError
    with pytest.raises(RegistryError, match="rougeL"):
        get_metric("rougel")
