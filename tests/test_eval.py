"""Held-out evaluation: official output format, per-category report, and agreement with an
independent implementation of the official SNI metric (compute_metrics.py rules)."""

import json
import random
import string
from collections import defaultdict

import pytest
from rouge_score import rouge_scorer

from instructmt.evaluation.runner import EvalItem, evaluate_tasks, score
from instructmt.models.tiny import build_tiny
from instructmt.tasks.natural_instructions import load_sni_directory


def official_normalize(s):  # written out again on purpose: an independent copy of the official rules
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    return " ".join(s.split())


def official_scores(records, categories):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    em, rl = {}, {}
    for r in records:
        refs, pred = r["Instance"]["output"], r["prediction"]
        em[r["Instance"]["id"]] = max(float(official_normalize(pred) == official_normalize(g)) for g in refs)
        rl[r["Instance"]["id"]] = max(scorer.score(g, pred)["rougeL"].fmeasure for g in refs)
    out = {"exact_match": 100 * sum(em.values()) / len(em), "rougeL": 100 * sum(rl.values()) / len(rl)}
    by_cat = defaultdict(list)
    for r in records:
        by_cat["_".join(categories[r["Task"]][0].lower().split())].append(r["Instance"]["id"])
    for cat, ids in by_cat.items():
        out[f"exact_match_for_{cat}"] = 100 * sum(em[i] for i in ids) / len(ids)
        out[f"rougeL_for_{cat}"] = 100 * sum(rl[i] for i in ids) / len(ids)
    return out


@pytest.fixture(scope="module")
def sni(shared_data):
    tasks, _, _ = load_sni_directory(shared_data / "sni" / "tasks")
    cats = {p.stem: json.loads(p.read_text())["Categories"] for p in (shared_data / "sni" / "tasks").glob("*.json")}
    return tasks, cats


def test_eval_runs_on_every_real_sni_task(tmp_path, sni):
    tasks, cats = sni
    texts = [t.definition for t in tasks] + [i.input for t in tasks for i in t.instances[:2]]
    model, tok = build_tiny("seq2seq", texts, vocab_size=400, d_model=32, layers=1)
    out = tmp_path / "eval"
    metrics = evaluate_tasks(model, tok, tasks, kind="seq2seq", output_dir=out, max_instances=2,
                             max_new_tokens=3, max_source_length=128, batch_size=32, show_progress=False)
    recs = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * len(tasks)
    assert set(recs[0]) >= {"Task", "Instance", "prediction"} and set(recs[0]["Instance"]) == {"id", "input", "output"}
    n_cats = len({"_".join(c[0].lower().split()) for c in cats.values()})
    assert sum(1 for k in metrics if k.startswith("rougeL_for_") and not k.startswith("rougeL_for_task")
               and "family_" not in k) == n_cats
    assert all(f"exact_match_for_{t.name}" in metrics for t in tasks)
    for f in ("metrics.json", "report.md", "categories.png"):
        assert (out / f).stat().st_size > 0
    ref = official_scores(recs, cats)
    for k, v in ref.items():
        assert metrics[k] == pytest.approx(v, abs=1e-9), k


def test_scores_agree_with_independent_official_metric_on_nontrivial_predictions(sni):
    tasks, cats = sni
    rng = random.Random(0)
    items, preds = [], []
    for t in tasks:
        for inst in t.instances[:5]:
            items.append(EvalItem(t, inst, "", []))
            gold = inst.outputs[rng.randrange(len(inst.outputs))]
            choice = rng.random()
            preds.append(gold.upper() + "!" if choice < 0.3 else " ".join(gold.split()[: max(1, len(gold.split()) // 2)])
                         if choice < 0.7 else inst.input[:40])
    mine = score(items, preds)
    recs = [{"Task": it.task.name, "Instance": {"id": it.instance.id, "output": it.instance.outputs}, "prediction": p}
            for it, p in zip(items, preds)]
    ref = official_scores(recs, cats)
    assert 10 < ref["exact_match"] < 90 and 10 < ref["rougeL"] < 95  # a non-trivial mix
    for k, v in ref.items():
        assert mine[k] == pytest.approx(v, abs=1e-9), k


def test_eval_cli_on_a_trained_run(tmp_path, repo, capsys):
    from instructmt.cli import main
    run = tmp_path / "run"
    assert main(["train", "--model", "tiny-t5", "--tasks", str(repo / "tasks" / "sample"), "--adapter", "lora",
                 "--max-steps", "2", "--batch-size", "4", "--encoding", "def", "--output", str(run),
                 "--set", "model.tiny_d_model=32", "--set", "model.tiny_layers=1",
                 "--set", "data.max_source_length=64", "--set", "data.max_target_length=8"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run / "model"), "--output", str(out), "--max-instances", "3"]) == 0
    text = capsys.readouterr().out
    assert "| copy-input |" in text and "task951_min_number" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_instances"] == 18 and "copy_demo" in metrics["baselines"]


def test_eval_cli_bad_model_dir_is_a_clear_error(tmp_path, capsys):
    from instructmt.cli import main
    assert main(["eval", "--model", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    assert "not an instructmt model directory" in capsys.readouterr().err


def test_eval_of_a_mixture_run_finds_its_held_out_tasks(tmp_path, repo):
    """A run trained from a mixture YAML records only the YAML as its source; eval must still
    resolve the held-out tasks (they come from the sources' split files)."""
    from instructmt.cli import main
    run = tmp_path / "run"
    assert main(["train", "--model", "tiny-t5", "--tasks", str(repo / "tasks" / "mixtures" / "four_families.yaml"),
                 "--max-steps", "1", "--batch-size", "4", "--encoding", "def", "--output", str(run),
                 "--set", "model.tiny_d_model=32", "--set", "model.tiny_layers=1",
                 "--set", "data.max_source_length=48", "--set", "data.max_target_length=6",
                 "--set", "data.max_instances_per_task=8"]) == 0
    assert main(["eval", "--model", str(run / "model"), "--output", str(tmp_path / "eval"),
                 "--max-instances", "2", "--demos", "bm25", "--k", "1"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_instances"] == 12
    recs = [json.loads(l) for l in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["demos"] and r["Instance"]["id"] not in r["demos"] for r in recs)
