"""Security: no remote code without --trust-remote-code, the only pickles are accelerate's resume
state (loaded with the restricted unpickler), task YAML paths stay inside their data root, and the
Hub token never reaches a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from instructmt.cli import main
from instructmt.errors import InstructMTError, TaskFormatError

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FAKEinstructmtSecurityTest0123456789abcdef"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}
# what accelerate's save_state writes with torch.save: optimizer / scheduler state and RNG states
ACCELERATE_RESUME_PICKLES = {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}


# --- remote code -------------------------------------------------------------------------------
@pytest.fixture()
def evil_model(tmp_path) -> tuple[Path, Path]:
    """A local model folder whose config asks to run its own Python, which would drop a marker."""
    d, marker = tmp_path / "evil_model", tmp_path / "REMOTE_CODE_RAN"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "evil_t5", "architectures": ["EvilModel"], "is_encoder_decoder": True,
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForSeq2SeqLM": "evil.EvilModel",
                     "AutoModelForCausalLM": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (d / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (d / "evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_t5'\n")
    return d, marker


def test_load_pretrained_refuses_repo_code_without_the_flag(evil_model):
    from instructmt.models.loading import load_pretrained
    d, marker = evil_model
    with pytest.raises(InstructMTError, match="cannot load model config"):
        load_pretrained(str(d))
    with pytest.raises(InstructMTError):
        load_pretrained(str(d), kind="seq2seq")
    assert not marker.exists()


def test_train_and_prompt_cli_refuse_repo_code_without_the_flag(evil_model, tmp_path, capsys):
    d, marker = evil_model
    rc = main(["train", "--model", str(d), "--tasks", str(REPO / "tasks" / "sample"), "--max-steps", "1",
               "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.startswith("instructmt train: error:")
    rc = main(["prompt", "show", "task951_min_number", "--tasks", str(REPO / "tasks" / "sample"),
               "--tokenizer", str(d)])
    err = capsys.readouterr().err
    # transformers may warn about the unknown model type first; our one error line ends the output
    assert rc == 1 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("instructmt prompt: error:")
    assert not marker.exists()


def test_eval_of_a_run_whose_base_asks_for_repo_code_refuses_without_the_flag(evil_model, tmp_path, capsys):
    from instructmt.models.tiny import build_tokenizer
    d, marker = evil_model
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    build_tokenizer(["a small corpus for a tokenizer"] * 5, vocab_size=40).save_pretrained(str(model_dir))
    (model_dir / "instructmt_run.json").write_text(json.dumps(
        {"method": "lora", "kind": "seq2seq", "base_model": str(d), "held_out": ["task951_min_number"],
         "task_sources": [str(REPO / "tasks" / "sample")]}))
    rc = main(["eval", "--model", str(tmp_path / "run"), "--output", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "cannot load model config" in err
    assert not marker.exists()


@pytest.mark.slow
def test_with_the_flag_repo_code_does_run(evil_model, tmp_path):
    """The control: the same folder runs its code once --trust-remote-code is given, so the tests
    above pass because of the flag, not because the folder is broken."""
    d, marker = evil_model
    code = ("from instructmt.models.loading import load_pretrained\n"
            f"try:\n    load_pretrained({str(d)!r}, trust_remote_code=True)\nexcept Exception:\n    pass\n")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert marker.exists()


# --- a real train + eval + publish preview: pickles and the token ---------------------------------
@pytest.fixture(scope="module")
def secured_run(tmp_path_factory):
    """Train (with checkpoints) and evaluate through the CLI with HF_TOKEN set, then stage a publish."""
    tmp = tmp_path_factory.mktemp("secured")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", FAKE_TOKEN)
    mp.setattr("instructmt.data.tokenize.DEFAULT_CACHE", tmp / "cache", raising=False)
    try:
        run = tmp / "run"
        cfg = tmp / "cfg.yaml"
        cfg.write_text(
            f"output_dir: {run}\nseed: 3\nmax_steps: 4\nsave_every: 2\nbatch_size: 8\nlog_every: 1\n"
            "model: {name_or_path: tiny-t5, tiny_d_model: 32, tiny_layers: 1, tiny_vocab_size: 200}\n"
            f"data: {{tasks: [{REPO / 'tasks' / 'sample'}], encoding: def, max_instances_per_task: 8,\n"
            "       max_source_length: 48, max_target_length: 8, eval_instances_per_task: 2}\n"
            "adapter: {method: lora, r: 2}\n")
        assert main(["train", "--config", str(cfg), "--eval"]) == 0
        assert main(["publish", str(run), "--repo-id", "someone/tiny-run", "--dry-run", "--include-base",
                     "--output", str(tmp / "publish")]) == 0
    finally:
        mp.undo()
    return run, tmp / "publish"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_no_token_in_any_written_file_or_output(secured_run, capsys):
    run, publish = secured_run
    files = _files(run) + _files(publish)
    assert len(files) > 10 and (run / "eval" / "metrics.json").exists() and (publish / "README.md").exists()
    leaked = [str(p) for p in files if FAKE_TOKEN.encode() in p.read_bytes() or b"hf_FAKE" in p.read_bytes()]
    assert leaked == []
    out = capsys.readouterr()
    assert FAKE_TOKEN not in out.out + out.err


@pytest.mark.slow
def test_only_safetensors_outside_the_resume_state(secured_run):
    run, publish = secured_run
    ckpts = run / "checkpoints"
    outside = [p for p in _files(run) + _files(publish) if ckpts not in p.parents]
    pickles = [str(p) for p in outside if p.suffix in PICKLE_SUFFIXES]
    assert pickles == [], "a model, eval report or publish folder holds a pickle"
    assert (run / "model" / "adapter_model.safetensors").exists()
    assert (run / "model" / "base" / "model.safetensors").exists()
    assert list(publish.rglob("*.safetensors"))


class _Payload:
    """A pickle that runs code when unpickled (it would create `marker`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_checkpoint_pickles_are_only_accelerates_and_load_with_the_restricted_unpickler(secured_run, tmp_path):
    """accelerate's save_state writes optimizer/scheduler/RNG state with torch.save; weights are
    safetensors. accelerate loads that state with torch.load(weights_only=True) (numpy arrays
    allow-listed), so a tampered checkpoint cannot run code on --resume."""
    from accelerate.utils.other import load as accelerate_load
    run, _ = secured_run
    ckpt_dirs = sorted((run / "checkpoints").glob("step-*"))
    assert ckpt_dirs
    for d in ckpt_dirs:
        pickles = {p.name for p in _files(d) if p.suffix in PICKLE_SUFFIXES}
        assert pickles <= ACCELERATE_RESUME_PICKLES, pickles
        assert list(d.rglob("*.safetensors")), "checkpoint weights are not safetensors"
        for name in pickles:
            accelerate_load(d / name)  # the very loader --resume uses
    marker = tmp_path / "UNPICKLED"
    evil = tmp_path / "random_states_0.pkl"
    torch.save({"step": 0, "payload": _Payload(marker)}, evil)
    with pytest.raises(Exception, match="Weights only load failed"):
        accelerate_load(evil)
    assert not marker.exists()


# --- task YAML paths stay inside the data root -----------------------------------------------------
@pytest.fixture()
def data_tree(tmp_path) -> Path:
    """root/specs/ holds the YAML; a file outside it is malformed, so reading it would say so."""
    (tmp_path / "specs" / "data").mkdir(parents=True)
    (tmp_path / "specs" / "data" / "ok.jsonl").write_text(json.dumps({"q": "a", "a": "b"}) + "\n")
    (tmp_path / "outside.jsonl").write_text("{this is not json\n")
    return tmp_path


def _load(spec: Path, text: str):
    from instructmt.tasks.yaml_spec import load_task_yaml
    spec.write_text(text)
    return load_task_yaml(spec)


HEAD = "family: custom\nfields: {input: q, output: a}\n"


def test_relative_path_inside_the_root_loads(data_tree):
    tasks = _load(data_tree / "specs" / "t.yaml", HEAD + "name: ok\nsource: data/ok.jsonl\n")
    assert tasks[0].name == "ok" and tasks[0].instances[0].outputs == ["b"]


@pytest.mark.parametrize("source, message", [
    ("../outside.jsonl", "escapes the data root"),
    ("data/../../outside.jsonl", "escapes the data root"),
    ("../*.jsonl", "outside the data root"),
    ("{abs}", "absolute path"),
    ("~/outside.jsonl", "absolute path"),
])
def test_paths_escaping_the_root_are_refused_without_reading_them(data_tree, source, message):
    source = source.replace("{abs}", str(data_tree / "outside.jsonl"))
    with pytest.raises(InstructMTError, match=message) as info:
        _load(data_tree / "specs" / "t.yaml", HEAD + f"name: x\nsource: {json.dumps(source)}\n")
    assert "malformed JSON" not in str(info.value)  # the outside file was never read


def test_a_symlink_out_of_the_root_is_refused(data_tree):
    (data_tree / "specs" / "data" / "link.jsonl").symlink_to(data_tree / "outside.jsonl")
    with pytest.raises(TaskFormatError, match="escapes the data root"):
        _load(data_tree / "specs" / "t.yaml", HEAD + "name: x\nsource: data/link.jsonl\n")


def test_include_and_data_root_cannot_escape(data_tree):
    (data_tree / "parent.yaml").write_text("family: custom\n")
    with pytest.raises(InstructMTError, match="escapes the data root"):
        _load(data_tree / "specs" / "t.yaml", "include: ../parent.yaml\nname: x\nsource: data/ok.jsonl\n"
                                              "fields: {input: q, output: a}\n")
    (data_tree / "sibling").mkdir()
    with pytest.raises(InstructMTError, match="must be a directory that contains this file"):
        _load(data_tree / "specs" / "t.yaml", HEAD + "data_root: ../sibling\nname: x\nsource: data/ok.jsonl\n")


def test_mixture_sources_cannot_escape(data_tree):
    from instructmt.tasks.yaml_spec import load_mixture_yaml
    spec = data_tree / "specs" / "m.yaml"
    spec.write_text("mixture: m\nsources: [../outside.jsonl]\n")
    with pytest.raises(InstructMTError, match="escapes the data root"):
        load_mixture_yaml(spec)


def test_escapes_are_allowed_only_when_declared(data_tree):
    (data_tree / "good_outside.jsonl").write_text(json.dumps({"q": "c", "a": "d"}) + "\n")
    spec = data_tree / "specs" / "t.yaml"
    assert _load(spec, HEAD + "data_root: ..\nname: x\nsource: ../good_outside.jsonl\n")[0].instances[0].input == "c"
    absolute = json.dumps(str(data_tree / "good_outside.jsonl"))
    assert _load(spec, HEAD + f"allow_absolute: true\nname: y\nsource: {absolute}\n")[0].name == "y"
