"""Held-out curves during training (`train --eval-every`): the step-0 point, no effect on the
losses, the curve report, resume continuing the curve, config checks and the CLI."""

import json

import pytest

from conftest import free_port

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
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator(
        str(run / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("heldout/rougeL")] == [0, 3, 4]
    assert "heldout_task/task951_min_number/exact_match" in ea.Tags()["scalars"]
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


def test_last_point_equals_eval_of_the_saved_model(tmp_path, repo):
    """The curve's final point is the same generation + scoring as `instructmt eval` on RUN/model."""
    from instructmt.cli import main
    cfg = tiny_cfg(tmp_path / "run", repo, eval_every=4)
    _train(cfg)
    last = read_curve(tmp_path / "run")[-1]
    assert main(["eval", "--model", str(tmp_path / "run" / "model"), "--output", str(tmp_path / "ev"),
                 "--max-instances", "2"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert last["step"] == 4 and last["rougeL"] == pytest.approx(ev["rougeL"])
    assert last["exact_match"] == pytest.approx(ev["exact_match"])
    for task, s in last["per_task"].items():
        assert s["rougeL"] == pytest.approx(ev[f"rougeL_for_{task}"])


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")
def test_two_process_ddp_curve_matches_one_process_at_step_zero(tmp_path, repo):
    """Under `accelerate launch` (2 CPU processes) the held-out instances are sharded and gathered:
    the step-0 point (same base model) equals the single-process one, instance for instance."""
    import os
    import subprocess
    import sys
    from instructmt.cli import main

    args = ["train", "--model", "tiny-t5", "--tasks", str(repo / "tasks" / "sample"), "--max-steps", "2",
            "--batch-size", "4", "--encoding", "def", "--seed", "5", "--eval-every", "2", "--eval-instances", "3",
            "--set", "model.tiny_d_model=32", "--set", "model.tiny_layers=1", "--set", "data.max_source_length=64",
            "--set", "data.max_target_length=6", "--set", "data.max_instances_per_task=16"]
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "INSTRUCTMT_CACHE": str(tmp_path / "cache")}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run([accelerate, "launch", "--config_file", str(repo / "scripts" / "accelerate" / "cpu_ddp.yaml"),
                           "--main_process_port", str(free_port()), "-m", "instructmt", *args, "--output", str(tmp_path / "two")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    one, two = read_curve(tmp_path / "one"), read_curve(tmp_path / "two")
    assert [p["step"] for p in two] == [0, 2]
    assert two[0]["num_instances"] == one[0]["num_instances"] == 18  # every instance scored once
    assert two[0]["per_task"] == one[0]["per_task"]
    assert (tmp_path / "two" / "heldout_curve.png").exists()


def test_losses_unchanged_for_a_method_with_a_step_hook(tmp_path, repo):
    """QFA samples bit-widths in its on_step hook: the periodic eval must not shift that either."""
    qfa = lambda: AdapterConfig(method="qfa", r=2, dropout=0.1, options={"period": 2})  # noqa: E731
    plain = _train(tiny_cfg(tmp_path / "plain", repo, adapter=qfa()))
    curved = _train(tiny_cfg(tmp_path / "curved", repo, adapter=qfa(), eval_every=2))
    assert curved.losses == plain.losses and len(read_curve(tmp_path / "curved")) == 3
