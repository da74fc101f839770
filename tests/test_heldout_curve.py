"""Held-out curves during training (`train --eval-every`): the step-0 point, no effect on the
losses, the curve report, resume continuing the curve, config checks and the CLI."""

import json

import pytest

from instructmt.adapters.base import AdapterConfig
from instructmt.config import DataConfig, ModelConfig, TrainConfig
from instructmt.errors import ConfigError, InstructMTError
from instructmt.evaluation.heldout_curve import HeldoutCurveScorer, read_curve
from instructmt.training.trainer import train


def tiny_cfg(out, repo, **kw):
    base = dict(
        output_dir=str(out),
        model=ModelConfig(name_or_path="tiny-llama", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=300),
        data=DataConfig(tasks=[str(repo / "tasks" / "sample")], encoding="def", max_instances_per_task=16,
                        max_source_length=64, max_target_length=6),
        adapter=AdapterConfig(method="lora", r=4, dropout=0.1),  # dropout: the torch RNG matters
        max_steps=4, batch_size=8, learning_rate=1e-2, log_every=1, seed=5,
        eval_instances=2, eval_batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


def _train(cfg):
    return train(cfg, heldout_scorer=HeldoutCurveScorer(cfg) if cfg.eval_every else None)


def _step_losses(run):
    recs = [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r.get("kind") != "heldout_eval"]


def test_curve_has_step_zero_and_losses_are_unchanged(tmp_path, repo):
    plain = _train(tiny_cfg(tmp_path / "plain", repo))
    curved = _train(tiny_cfg(tmp_path / "curved", repo, eval_every=3))
    # same data order, same dropout masks: periodic eval does not perturb training
    assert curved.losses == plain.losses
    assert _step_losses(tmp_path / "curved") == _step_losses(tmp_path / "plain")

    run = tmp_path / "curved"
    points = read_curve(run)
    assert [p["step"] for p in points] == [0, 3, 4]  # base model, every 3, and the final step
    p0 = points[0]
    assert p0["num_instances"] == 12 and len(p0["per_task"]) == 6  # 6 held-out tasks x 2 instances
    assert "task951_min_number" in p0["per_task"]
    assert all(0 <= p["rougeL"] <= 100 and 0 <= p["exact_match"] <= 100 for p in points)
    saved = json.loads((run / "heldout_curve.json").read_text())
    assert [p["step"] for p in saved["points"]] == [0, 3, 4]
    assert (run / "heldout_curve.png").stat().st_size > 1000
    md = (run / "heldout_curve.md").read_text()
    assert "| 0 |" in md and "task956_is_it_a_fruit" in md
    assert list((run / "tb").iterdir())  # TensorBoard events written
    assert not (tmp_path / "plain" / "heldout_curve.json").exists()


def test_resume_continues_the_curve(tmp_path, repo):
    run = tmp_path / "run"
    _train(tiny_cfg(run, repo, max_steps=4, eval_every=2, save_every=2))  # checkpoint at step 2
    _train(tiny_cfg(run, repo, max_steps=6, eval_every=2, save_every=2, resume=True))
    points = read_curve(run)
    assert [p["step"] for p in points] == [0, 2, 4, 6]  # step 4 evaluated twice: one point kept
    assert [p["step"] for p in json.loads((run / "heldout_curve.json").read_text())["points"]] == [0, 2, 4, 6]


def test_eval_every_checks(tmp_path, repo):
    with pytest.raises(ConfigError, match="eval_every"):
        _train(tiny_cfg(tmp_path / "a", repo, eval_every=-1))
    with pytest.raises(ConfigError, match="eval_instances"):
        _train(tiny_cfg(tmp_path / "b", repo, eval_every=2, eval_instances=0))
    no_held_out = tiny_cfg(tmp_path / "c", repo, eval_every=2)
    no_held_out.data.held_out = []
    no_held_out.data.split_dir = None
    no_held_out.data.seen = ["task901_uppercase_words", "task902_reverse_word_order"]
    with pytest.raises(InstructMTError, match="held-out"):
        _train(no_held_out)


def test_routed_method_is_refused(tmp_path, repo):
    cfg = tiny_cfg(tmp_path / "mhr", repo, eval_every=2, adapter=AdapterConfig(method="mhr", r=2, options={"n_skills": 2}))
    with pytest.raises(InstructMTError, match="routes by task id"):
        _train(cfg)


def test_cli_flags(tmp_path, repo):
    from instructmt.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = tmp_path / "cli"
    rc = main(["train", "--model", "tiny-t5", "--tasks", str(repo / "tasks" / "sample"), "--output", str(out),
               "--max-steps", "2", "--batch-size", "8", "--eval-every", "2", "--eval-instances", "1",
               "--set", "data.max_source_length=48", "--set", "data.max_target_length=4",
               "--set", "model.tiny_d_model=32", "--set", "model.tiny_layers=1",
               "--set", "data.max_instances_per_task=8"])
    assert rc == 0
    assert [p["step"] for p in read_curve(out)] == [0, 2]
    assert (out / "heldout_curve.png").exists()
