"""Multi-process training on 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Each run is a few steps of a tiny model; ranks must agree, the saved adapter must be whole (not
the 40-byte file other tools write under ZeRO-3), and distributed evaluation must give the same
scores as a single process."""

import json
import os
import subprocess
import sys

import pytest

from conftest import free_port
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

TRAIN_ARGS = ["train", "--model", "tiny-t5", "--adapter", "lora", "--max-steps", "4", "--batch-size", "4",
              "--encoding", "def", "--seed", "5", "--set", "model.tiny_d_model=32", "--set", "model.tiny_layers=1",
              "--set", "data.max_source_length=64", "--set", "data.max_target_length=8",
              "--set", "data.max_instances_per_task=16", "--save-every", "2", "--set", "log_every=1"]


def launch(repo, config, args, tmp_path, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "INSTRUCTMT_CACHE": str(tmp_path / "cache")}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--config_file", str(repo / "scripts" / "accelerate" / config),
           "--main_process_port", str(free_port()), "-m", "instructmt", *args]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, repo):
    tmp = tmp_path_factory.mktemp("dist")
    out = {}
    from instructmt.cli import main
    assert main([*TRAIN_ARGS, "--tasks", str(repo / "tasks" / "sample"), "--output", str(tmp / "single")]) == 0
    out["single"] = tmp / "single"
    for name, cfg in [("ddp", "cpu_ddp.yaml"), ("zero2", "cpu_deepspeed_zero2.yaml"), ("zero3", "cpu_deepspeed_zero3.yaml")]:
        launch(repo, cfg, [*TRAIN_ARGS, "--tasks", str(repo / "tasks" / "sample"), "--output", str(tmp / name)], tmp)
        out[name] = tmp / name
    return out


def _adapter(run):
    return load_file(str(run / "model" / "adapter_model.safetensors"))


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_ranks_agree(runs, engine):
    sums = json.loads((runs[engine] / "rank_checksums.json").read_text())
    assert len(sums) == 2 and sums[0] == pytest.approx(sums[1], rel=1e-6)


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_saved_adapter_is_whole(runs, engine):
    single, multi = _adapter(runs["single"]), _adapter(runs[engine])
    assert single.keys() == multi.keys() and len(multi) > 0
    for k in single:
        assert multi[k].shape == single[k].shape and multi[k].numel() > 0
    assert any(float(v.abs().sum()) > 0 for k, v in multi.items() if "lora_B" in k)  # it trained


def test_engines_train_the_same_weights(runs):
    ddp = _adapter(runs["ddp"])
    for engine in ("zero2", "zero3"):
        other = _adapter(runs[engine])
        for k in ddp:
            torch.testing.assert_close(other[k], ddp[k], rtol=1e-3, atol=1e-4, msg=f"{engine}: {k}")


def test_distributed_eval_scores_every_instance_once(runs, repo, tmp_path):
    model = runs["zero3"] / "model"  # trained under ZeRO-3, evaluated by generation
    from instructmt.cli import main
    assert main(["eval", "--model", str(model), "--output", str(tmp_path / "one"), "--max-instances", "5"]) == 0
    launch(repo, "cpu_ddp.yaml", ["eval", "--model", str(model), "--output", str(tmp_path / "two"),
                                  "--max-instances", "5"], tmp_path)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one == two
    preds = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    ids = [json.loads(l)["Instance"]["id"] for l in preds]
    assert len(ids) == len(set(ids)) == 30


def test_resume_with_a_different_number_of_processes(runs, repo, tmp_path):
    import shutil
    run = tmp_path / "ddp_then_single"
    shutil.copytree(runs["ddp"], run)
    shutil.rmtree(run / "model")
    state = json.loads((run / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["batches_done_in_epoch"] > 0
    from instructmt.cli import main
    assert main([*TRAIN_ARGS, "--tasks", str(repo / "tasks" / "sample"), "--output", str(run), "--resume"]) == 0
    logs = [json.loads(l) for l in (run / "logs.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs][-2:] == [3, 4]  # continued after step 2 in one process
    assert (run / "model" / "adapter_model.safetensors").exists()
