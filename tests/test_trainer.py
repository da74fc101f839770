"""Training loop: it learns, checkpoints atomically, and --resume reproduces an uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from instructmt.adapters.base import AdapterConfig
from instructmt.config import DataConfig, ModelConfig, TrainConfig
from instructmt.training import checkpoint as ckpt
from instructmt.training.trainer import train


def tiny_cfg(out, repo, **kw):
    base = dict(
        output_dir=str(out),
        model=ModelConfig(name_or_path="tiny-t5", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=300),
        data=DataConfig(tasks=[str(repo / "tasks" / "sample")], encoding="def", max_instances_per_task=16,
                        max_source_length=64, max_target_length=12),
        adapter=AdapterConfig(method="lora", r=4),
        max_steps=6, batch_size=8, learning_rate=1e-2, save_every=2, log_every=1, seed=11)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model_dir):
    return load_file(str(model_dir / "adapter_model.safetensors"))


def test_train_writes_model_logs_and_config(tmp_path, repo):
    res = train(tiny_cfg(tmp_path / "run", repo))
    assert res.steps == 6 and res.model_dir.is_dir()
    meta = json.loads((res.model_dir / "instructmt_run.json").read_text())
    assert meta["method"] == "lora" and meta["kind"] == "seq2seq" and meta["base_saved"] == "base"
    assert "task951_min_number" in meta["held_out"] and "task951_min_number" not in meta["seen"]
    logs = [json.loads(l) for l in (tmp_path / "run" / "logs.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 7))
    assert (tmp_path / "run" / "config.yaml").exists()
    # only the newest `keep_checkpoints` survive, no temp dirs left behind
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-2", "step-4"]
    assert not list((tmp_path / "run").glob("**/.tmp-*"))


class _Crash(Exception):
    pass


def test_resume_after_crash_between_checkpoints_reproduces_uninterrupted_run(tmp_path, repo, monkeypatch):
    lora = lambda: AdapterConfig(method="lora", r=4, dropout=0.1)  # noqa: E731  dropout: RNG state matters
    full = train(tiny_cfg(tmp_path / "full", repo, adapter=lora()))

    from instructmt.adapters.lora import LoRAMethod
    def crash_at_step_5(self, model, step):
        if step == 4:  # called before optimizer step 5: the run dies between checkpoints 4 and 6
            raise _Crash()
    monkeypatch.setattr(LoRAMethod, "on_step", crash_at_step_5, raising=False)
    cfg = tiny_cfg(tmp_path / "part", repo, adapter=lora())
    with pytest.raises(_Crash):
        train(cfg)
    monkeypatch.delattr(LoRAMethod, "on_step")
    assert not (tmp_path / "part" / "model").exists()
    assert ckpt.latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step-4"

    cfg.resume = True
    resumed = train(cfg)
    assert resumed.steps == 6
    assert resumed.losses == pytest.approx(full.losses[4:], rel=1e-5)
    a, b = _weights(full.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, repo, monkeypatch):
    from instructmt.adapters.lora import LoRAMethod
    from instructmt.training.trainer import TrainingDiverged

    def diverge_at_step_3(self, model, step):
        if step == 2:  # poison the weights the way an exploding update would
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
    monkeypatch.setattr(LoRAMethod, "on_step", diverge_at_step_3, raising=False)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3.*step-2"):
        train(tiny_cfg(tmp_path / "nan", repo))
    assert not (tmp_path / "nan" / "model").exists()
    assert ckpt.latest_checkpoint(tmp_path / "nan" / "checkpoints").name == "step-2"
