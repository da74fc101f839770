"""Faults during training lose nothing: SIGTERM / SIGINT stop at a step boundary with a checkpoint,
a kill in the middle of writing a checkpoint leaves the previous one loadable, a non-finite loss
stops with one clear line, and `--resume` after each reproduces the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from instructmt.adapters.base import AdapterConfig
from instructmt.cli import main
from instructmt.config import DataConfig, ModelConfig, TrainConfig, to_dict
from instructmt.training import checkpoint as ckpt
from instructmt.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TASKS = ("task901_uppercase_words", "task902_reverse_word_order", "task951_min_number")
HELD_OUT = "task951_min_number"
REFERENCE_STEPS = 10


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Three sample tasks (two seen, one held out): 4 steps per epoch, so runs cross epochs."""
    d = tmp_path_factory.mktemp("tasks")
    for name in TASKS:
        shutil.copy(REPO / "tasks" / "sample" / f"{name}.json", d / f"{name}.json")
    return d


def fault_cfg(out: Path, task_dir: Path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        model=ModelConfig(name_or_path="tiny-t5", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=200),
        data=DataConfig(tasks=[str(task_dir)], held_out=[HELD_OUT], encoding="def", max_instances_per_task=16,
                        max_source_length=48, max_target_length=10),
        # dropout > 0: the RNG state must be restored too for resume to be exact
        adapter=AdapterConfig(method="lora", r=4, dropout=0.1),
        max_steps=REFERENCE_STEPS, batch_size=8, learning_rate=1e-2, save_every=2, log_every=1, seed=5)
    base.update(kw)
    return TrainConfig(**base)


class _References:
    """Uninterrupted runs, by step count, trained once per module."""

    def __init__(self, root: Path, task_dir: Path):
        self.root, self.task_dir, self.runs = root, task_dir, {}

    def weights(self, steps: int) -> dict[str, torch.Tensor]:
        if steps not in self.runs:
            res = train(fault_cfg(self.root / f"ref{steps}", self.task_dir, max_steps=steps, save_every=0))
            assert res.steps == steps and not res.interrupted
            self.runs[steps] = load_file(str(res.model_dir / "adapter_model.safetensors"))
        return self.runs[steps]


@pytest.fixture(scope="module")
def references(tmp_path_factory, task_dir) -> _References:
    return _References(tmp_path_factory.mktemp("reference"), task_dir)


def assert_same_weights(model_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(str(Path(model_dir) / "adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for k in got:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=k)


def resume_to_end(cfg: TrainConfig, steps: int = REFERENCE_STEPS):
    cfg.resume, cfg.max_steps = True, steps
    res = train(cfg)
    assert res.steps == steps and res.model_dir is not None
    return res


def write_config(cfg: TrainConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def _logged_steps(run: Path) -> int:
    try:
        return len((run / "logs.jsonl").read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        return 0


# --- SIGTERM to the real CLI --------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_to_train_subprocess_checkpoints_exits_cleanly_and_resumes_exactly(tmp_path, task_dir, references):
    run = tmp_path / "run"
    cfg = fault_cfg(run, task_dir, save_every=1000)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", INSTRUCTMT_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    out_f, err_f = open(tmp_path / "stdout", "w+"), open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "instructmt", "train", "--config", str(write_config(cfg, tmp_path / "cfg.yaml")),
         "--max-steps", "3000", "--save-every", "1000"],
        cwd=REPO, env=env, stdout=out_f, stderr=err_f, text=True)
    signalled = threading.Event()

    def sigterm_after_3_steps():
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if _logged_steps(run) >= 3:
                proc.send_signal(signal.SIGTERM)
                signalled.set()
                return
            time.sleep(0.02)
    watcher = threading.Thread(target=sigterm_after_3_steps, daemon=True)
    watcher.start()
    try:
        references.weights(REFERENCE_STEPS)  # meanwhile: the uninterrupted run to compare with
        watcher.join(timeout=300)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out_f.seek(0), err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    out_f.close(), err_f.close()
    assert signalled.is_set(), f"training never logged 3 steps: {err[-2000:]}"
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in out + err
    assert "stopped by signal at step" in out and "Continue with --resume" in out
    last = ckpt.latest_checkpoint(run / "checkpoints")
    assert last is not None, "no checkpoint written on SIGTERM"
    stopped_at = ckpt.read_state(last)["global_step"]
    assert last.name == f"step-{stopped_at}" and 3 <= stopped_at < 3000
    assert not (run / "model").exists()  # an interrupted run writes no final model
    assert not list((run / "checkpoints").glob(".tmp-*"))

    target = max(REFERENCE_STEPS, stopped_at + 2)
    resumed = resume_to_end(fault_cfg(run, task_dir, save_every=1000), target)
    assert_same_weights(resumed.model_dir, references.weights(target))
    steps = [json.loads(line)["step"] for line in (run / "logs.jsonl").read_text().splitlines()]
    assert steps == list(range(1, target + 1))  # the log continues where the run stopped


# --- SIGINT (Ctrl-C) through cli.main -------------------------------------------------------------
def test_sigint_through_cli_checkpoints_and_resumes_exactly(tmp_path, task_dir, references, monkeypatch, capsys):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    from instructmt.adapters.lora import LoRAMethod

    def ctrl_c_before_step_4(self, model, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(LoRAMethod, "on_step", ctrl_c_before_step_4, raising=False)
    run = tmp_path / "run"
    cfg_path = write_config(fault_cfg(run, task_dir, save_every=1000), tmp_path / "cfg.yaml")
    handler_before = signal.getsignal(signal.SIGINT)
    rc = main(["train", "--config", str(cfg_path)])
    out = capsys.readouterr()
    monkeypatch.delattr(LoRAMethod, "on_step")
    assert rc == 0 and "Traceback" not in out.err
    assert "stopped by signal at step 4" in out.out
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step-4"
    assert not (run / "model").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer's handler is removed again

    resumed = resume_to_end(fault_cfg(run, task_dir, save_every=1000))
    assert_same_weights(resumed.model_dir, references.weights(REFERENCE_STEPS))


# --- killed while writing a checkpoint ----------------------------------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, task_dir, references, monkeypatch):
    from accelerate import Accelerator

    real_save_state = Accelerator.save_state

    def save_then_die_half_way(self, output_dir=None, **kw):
        out = real_save_state(self, output_dir, **kw)
        if Path(output_dir).name == ".tmp-step-4":
            # a partial write: the weights file is cut short, the optimizer state never lands
            weights = next(Path(output_dir).rglob("*.safetensors"))
            weights.write_bytes(weights.read_bytes()[:100])
            for f in Path(output_dir).glob("optimizer*"):
                f.unlink()
            raise _Killed()
        return out
    monkeypatch.setattr(Accelerator, "save_state", save_then_die_half_way)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        train(fault_cfg(run, task_dir))
    monkeypatch.setattr(Accelerator, "save_state", real_save_state)

    root = run / "checkpoints"
    assert (root / ".tmp-step-4").is_dir()  # the half-written checkpoint is still there ...
    assert ckpt.latest_checkpoint(root).name == "step-2"  # ... and ignored
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["step-2"]
    assert ckpt.read_state(root / "step-2")["global_step"] == 2
    assert not (run / "model").exists()

    resumed = resume_to_end(fault_cfg(run, task_dir))
    assert_same_weights(resumed.model_dir, references.weights(REFERENCE_STEPS))
    assert not list(root.glob(".tmp-*"))  # the stale temp dir is cleaned up by the next save


def test_kill_between_state_file_and_rename_keeps_the_previous_one(tmp_path, task_dir, references, monkeypatch):
    """The last moment a kill can hit: everything written, the rename not done."""
    real_rename = os.rename

    def die_on_rename(src, dst):
        if Path(src).name == ".tmp-step-4":
            raise _Killed()
        return real_rename(src, dst)
    monkeypatch.setattr(ckpt.os, "rename", die_on_rename)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        train(fault_cfg(run, task_dir, max_steps=5))
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    root = run / "checkpoints"
    assert (root / ".tmp-step-4" / ckpt.STATE_FILE).exists()
    assert ckpt.latest_checkpoint(root).name == "step-2"

    resumed = resume_to_end(fault_cfg(run, task_dir))
    assert_same_weights(resumed.model_dir, references.weights(REFERENCE_STEPS))


# --- non-finite loss through the CLI ------------------------------------------------------------
def test_nan_loss_via_cli_is_one_line_exit_1_and_resume_recovers(tmp_path, task_dir, references, monkeypatch,
                                                                  capsys):
    from instructmt.adapters.lora import LoRAMethod

    def poison_before_step_3(self, model, step):
        if step == 2:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
    monkeypatch.setattr(LoRAMethod, "on_step", poison_before_step_3, raising=False)
    run = tmp_path / "run"
    rc = main(["train", "--config", str(write_config(fault_cfg(run, task_dir), tmp_path / "cfg.yaml"))])
    err = capsys.readouterr().err
    monkeypatch.delattr(LoRAMethod, "on_step")
    assert rc == 1
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("instructmt train: error:")]
    assert len(lines) == 1 and "loss became nan at step 3" in lines[0] and "step-2" in lines[0]
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step-2"
    assert not (run / "model").exists()

    resumed = resume_to_end(fault_cfg(run, task_dir))
    assert_same_weights(resumed.model_dir, references.weights(REFERENCE_STEPS))
