"""Publishing to the Hub (instructmt.hub, hub_card, commands/publish) through the real huggingface_hub
client against a local fake Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from instructmt.hub import PublishError, publish, read_run, stage

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub  # noqa: E402

torch.set_num_threads(1)
REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_TESTtokenAbCdEfGhIjKlMnOpQrStUvWxYz0123"
SEEN = ["task901_uppercase_words", "task902_reverse_word_order", "task903_first_word"]
HELD_OUT = ["task951_min_number", "task952_second_word"]
BASE_ID = "instructmt-test/tiny-t5"


# ------------------------------------------------------------------------------------ fixtures
def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    cfg = T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=64,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def tiny_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"\x00\xff\x00\x00"  # one red pixel
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_run(root: Path, model, *, method: str, base_model: str, tokenizer=None, extra_meta=None,
              task_names=None) -> Path:
    run = root / "run"
    model.save_pretrained(str(run / "model"), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(run / "model"))
    meta = {"method": method, "base_model": base_model, "kind": "seq2seq",
            "task_names": task_names or SEEN, "seen": SEEN, "held_out": HELD_OUT, **(extra_meta or {})}
    (run / "model" / "instructmt_run.json").write_text(json.dumps(meta))
    (run / "model" / "training_args.bin").write_bytes(b"\x80\x04pickle")  # must be skipped
    (run / "config.yaml").write_text(yaml.safe_dump({
        "output_dir": str(run), "model": {"name_or_path": base_model},
        "data": {"tasks": ["tasks/sample"], "encoding": "def+pos2"},
        "adapter": {"method": method, "r": 4}, "learning_rate": 5e-4, "seed": 42}))
    (run / "eval").mkdir()
    # the shape evaluation.runner writes: flat `{metric}_for_{task|category|family_F}` keys
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "exact_match": 17.5, "rougeL": 26.875, "num_instances": 4.0,
        "exact_match_for_task951_min_number": 30.0, "rougeL_for_task951_min_number": 41.5,
        "exact_match_for_task952_second_word": 5.0, "rougeL_for_task952_second_word": 12.25,
        "exact_match_for_mathematics": 30.0, "rougeL_for_mathematics": 41.5,
        "exact_match_for_family_sni": 17.5, "rougeL_for_family_sni": 26.0,
        "baselines": {"copy_input": {"exact_match": 0.0, "rougeL": 8.0}}}))
    (run / "eval" / "predictions.jsonl").write_text("".join(
        json.dumps({"Task": t, "Family": "sni", "prediction": "x"}) + "\n" for t in HELD_OUT))
    (run / "eval" / "report.md").write_text("| task | rougeL |\n|---|---|\n| task951_min_number | 41.5 |\n")
    (run / "eval" / "categories.png").write_bytes(tiny_png())
    return run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A local base (model + tokenizer on disk) and a LoRA run on it whose tokenizer is the base's."""
    from peft import LoraConfig, TaskType, get_peft_model
    root = tmp_path_factory.mktemp("lora")
    base = tiny_t5()
    tok = tiny_tokenizer(["min", "number", "word", "second"])
    base.save_pretrained(str(root / "base"))
    tok.save_pretrained(str(root / "base"))
    model = get_peft_model(tiny_t5(), LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8,
                                                 target_modules=["q", "v"], init_lora_weights=False))
    run = write_run(root, model, method="lora", base_model=str(root / "base"), tokenizer=tok)
    return run, root / "base", model.eval()


@pytest.fixture
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def isolated_token(monkeypatch, tmp_path):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def logits(model, **kw):
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        return model(input_ids=ids, decoder_input_ids=torch.tensor([[0, 5, 6]]), **kw).logits


def assert_no_token(folder_or_bytes) -> None:
    if isinstance(folder_or_bytes, (bytes, bytearray)):
        assert FAKE_TOKEN.encode() not in folder_or_bytes
        return
    for f in Path(folder_or_bytes).rglob("*"):
        if f.is_file():
            assert FAKE_TOKEN.encode() not in f.read_bytes(), f


# ------------------------------------------------------------------------------------ tests
def test_publish_lora_through_real_client(lora_run, hub, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData
    from peft import PeftModel
    run, base_dir, model = lora_run
    result = publish(run, "me/tiny-lora", base_model_id=BASE_ID, endpoint=hub.url)

    stored = hub.files("me/tiny-lora")
    assert set(stored) == set(result.files)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "instructmt_run.json",
            "training_config.yaml", "tasks.json", "eval/metrics.json", "eval/report.md",
            "eval/categories.png"} <= set(stored)
    assert "training_args.bin" not in stored and "eval/predictions.jsonl" not in stored
    assert not any(p.startswith("tokenizer") for p in stored), "same tokenizer as the base: not published"
    assert len(hub.repos["me/tiny-lora"].commits) == 1  # one commit, everything in it
    assert any(path == "/api/validate-yaml" for _, path, _ in hub.requests)  # the client checked the card
    assert result.commit_url and result.commit_url.startswith(hub.url)

    # no token in any stored byte, nor in anything sent as a request body
    for data in stored.values():
        assert_no_token(data)
    assert_no_token(hub.all_received_bytes())
    assert hub.auth_headers[-1] == f"Bearer {FAKE_TOKEN}"  # ...but it did authenticate

    # the card parses and its metadata is what the Hub needs
    folder = hub.dump("me/tiny-lora", tmp_path / "snapshot")
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == BASE_ID and card.data.library_name == "peft"
    assert {"instructmt", "lora", "sni"} <= set(card.data.tags)
    ModelCardData(**card.data.to_dict())  # round-trips through the validator
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("sni", "rougeL")] == 26.0  # the evaluator's own per-family aggregate
    assert results[("sni", "exact_match")] == 17.5
    assert "| `task951_min_number` | sni | 30.00 | 41.50 |" in card.text
    assert "| baseline: copy-input |  | 0.00 | 8.00 |" in card.text
    assert "PeftModel.from_pretrained" in card.text and "task951_min_number" in card.text
    assert str(base_dir) not in (folder / "README.md").read_text()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_ID
    assert json.loads((folder / "instructmt_run.json").read_text())["base_model"] == BASE_ID
    assert yaml.safe_load((folder / "training_config.yaml").read_text())["model"]["name_or_path"] == BASE_ID
    assert json.loads((folder / "tasks.json").read_text())["held_out"] == HELD_OUT

    # the stored adapter reproduces the original model
    from transformers import T5ForConditionalGeneration
    loaded = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(str(base_dir)), str(folder)).eval()
    torch.testing.assert_close(logits(loaded), logits(model))
    with loaded.disable_adapter():
        assert not torch.allclose(logits(loaded), logits(model)), "the adapter must change the model"


def test_dry_run_writes_exactly_what_is_uploaded(lora_run, hub, tmp_path):
    run, _, _ = lora_run
    dry = publish(run, "me/tiny-lora", base_model_id=BASE_ID, dry_run=True, output=tmp_path / "preview")
    assert not hub.requests, "a dry run must not talk to the Hub"
    written = {p.relative_to(dry.folder).as_posix(): p.read_bytes() for p in dry.folder.rglob("*") if p.is_file()}
    assert set(written) == set(dry.files)
    assert_no_token(dry.folder)
    assert dry.card_text == written["README.md"].decode()
    publish(run, "me/tiny-lora", base_model_id=BASE_ID, endpoint=hub.url)
    assert hub.files("me/tiny-lora") == written


def test_failed_commit_leaves_nothing_and_says_what_failed(lora_run, hub):
    run, _, _ = lora_run
    hub.fail["commit"] = 500
    with pytest.raises(PublishError) as err:
        publish(run, "me/broken", base_model_id=BASE_ID, endpoint=hub.url)
    msg = str(err.value)
    assert "'commit'" in msg and "HTTP 500" in msg and "nothing was published" in msg
    assert "injected failure on commit" in msg  # the server's own words
    assert FAKE_TOKEN not in msg
    assert hub.files("me/broken") == {} and hub.repos["me/broken"].commits == []


def test_failed_repo_creation_names_the_step(lora_run, hub):
    run, _, _ = lora_run
    hub.fail["create_repo"] = 403
    with pytest.raises(PublishError, match=r"create repository.*HTTP 403"):
        publish(run, "me/forbidden", base_model_id=BASE_ID, endpoint=hub.url)
    assert "me/forbidden" not in hub.repos


def test_local_base_without_hub_id_is_a_clear_error(lora_run, hub, tmp_path):
    run, base_dir, _ = lora_run
    with pytest.raises(PublishError, match=r"local path .*--base-model-id"):
        publish(run, "me/x", endpoint=hub.url)
    with pytest.raises(PublishError, match="not a Hub model id"):
        publish(run, "me/x", base_model_id=str(base_dir), dry_run=True, output=tmp_path / "o")
    assert not hub.requests
    # through the CLI: one line, exit 1
    from instructmt.cli import main
    assert main(["publish", str(run), "--repo-id", "me/x", "--dry-run", "--output", str(tmp_path / "p")]) == 1


def test_repo_id_and_output_are_checked(lora_run, tmp_path):
    run, _, _ = lora_run
    with pytest.raises(PublishError, match="OWNER/NAME"):
        publish(run, "no-owner", base_model_id=BASE_ID, dry_run=True, output=tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PublishError, match="not empty"):
        publish(run, "me/x", base_model_id=BASE_ID, dry_run=True, output=tmp_path / "full")
    with pytest.raises(PublishError, match="not a run directory"):
        read_run(tmp_path)


def test_missing_token_is_refused(lora_run, hub, monkeypatch):
    run, _, _ = lora_run
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="no Hugging Face token"):
        publish(run, "me/x", base_model_id=BASE_ID, endpoint=hub.url)
    assert not hub.requests


def test_token_from_login_cache(lora_run, hub, monkeypatch, tmp_path):
    from huggingface_hub import constants
    run, _, _ = lora_run
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "token").write_text(FAKE_TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    publish(run, "me/cached", base_model_id=BASE_ID, endpoint=hub.url)
    assert hub.auth_headers[-1] == f"Bearer {FAKE_TOKEN}"
    assert_no_token(hub.all_received_bytes())


def test_token_inside_the_run_is_refused(lora_run, hub, tmp_path):
    import shutil
    run, _, _ = lora_run
    leaky = tmp_path / "leaky"
    shutil.copytree(run, leaky)
    (leaky / "eval" / "report.md").write_text(f"pushed with {FAKE_TOKEN}\n")
    with pytest.raises(PublishError, match="eval/report.md contains a Hugging Face access token"):
        publish(leaky, "me/leaky", base_model_id=BASE_ID, endpoint=hub.url)
    assert not hub.requests


def test_revision_commits_to_a_branch(lora_run, hub):
    run, _, _ = lora_run
    publish(run, "me/branched", base_model_id=BASE_ID, revision="v1", private=True, endpoint=hub.url)
    assert hub.files("me/branched", "main") == {}
    assert "adapter_model.safetensors" in hub.files("me/branched", "v1")
    assert hub.repos["me/branched"].private


def test_pickled_or_empty_adapters_are_refused(tmp_path):
    from safetensors.torch import save_file
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "instructmt_run.json").write_text(json.dumps({"method": "lora", "base_model": BASE_ID}))
    (model_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (model_dir / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(PublishError, match="adapter_model.bin is a pickle"):
        stage(read_run(tmp_path / "run"), tmp_path / "o1", repo_id="me/x")
    save_file({}, str(model_dir / "adapter_model.safetensors"))  # the 40-byte ZeRO-3 adapter
    with pytest.raises(PublishError, match="holds no adapter weights"):
        stage(read_run(tmp_path / "run"), tmp_path / "o2", repo_id="me/x")


def test_trained_tokenizer_is_published(tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    from huggingface_hub import ModelCard
    base = tiny_t5()
    base.save_pretrained(str(tmp_path / "base"))
    tiny_tokenizer(["a", "b"]).save_pretrained(str(tmp_path / "base"))
    model = get_peft_model(tiny_t5(), LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=2, target_modules=["q"]))
    run = write_run(tmp_path, model, method="lora", base_model=str(tmp_path / "base"),
                    tokenizer=tiny_tokenizer(["a", "b", "new"]))
    staged = stage(read_run(run), tmp_path / "out", repo_id="me/x", base_model_id=BASE_ID)
    assert "tokenizer.json" in staged.files and "tokenizer_config.json" in staged.files
    card = ModelCard(staged.card_text)
    assert 'AutoTokenizer.from_pretrained("me/x")' in card.text
    never = stage(read_run(run), tmp_path / "out2", repo_id="me/x", base_model_id=BASE_ID, tokenizer="never")
    assert "tokenizer.json" not in never.files


def test_routed_mhr_run_publishes_task_ids_and_reloads(hub, tmp_path):
    from huggingface_hub import ModelCard
    from peft import PeftModel, PolyConfig, TaskType, get_peft_model
    tasks = SEEN
    model = get_peft_model(tiny_t5(), PolyConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=2, n_tasks=len(tasks),
                                                 n_skills=2, n_splits=2, target_modules=["q", "v"]))
    with torch.no_grad():  # make the routed adapters matter
        for name, p in model.named_parameters():
            if "poly_lora_B" in name or "router" in name:
                p.normal_(0, 0.5)
    model.eval()
    base_dir = tmp_path / "base"
    tiny_t5().save_pretrained(str(base_dir))
    run = write_run(tmp_path, model, method="mhr", base_model=BASE_ID, task_names=tasks)
    (run / "eval" / "routing.png").write_bytes(tiny_png())
    publish(run, "me/tiny-mhr", endpoint=hub.url)
    folder = hub.dump("me/tiny-mhr", tmp_path / "snap")
    card = ModelCard.load(folder / "README.md")
    assert "mhr" in card.data.tags and card.data.base_model == BASE_ID
    for i, t in enumerate(tasks):
        assert f"| {i} | `{t}` |" in card.text
    assert "task_ids=task_ids" in card.text and "![routing](eval/routing.png)" in card.text
    assert json.loads((folder / "tasks.json").read_text())["task_ids"] == {t: i for i, t in enumerate(tasks)}
    from transformers import T5ForConditionalGeneration
    loaded = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(str(base_dir)), str(folder)).eval()
    for i in range(len(tasks)):
        ids = torch.tensor([i])
        torch.testing.assert_close(logits(loaded, task_ids=ids), logits(model, task_ids=ids))
    assert not torch.allclose(logits(loaded, task_ids=torch.tensor([0])), logits(loaded, task_ids=torch.tensor([1])))

    # a router whose rows don't match the task list must not be published
    meta = json.loads((run / "model" / "instructmt_run.json").read_text())
    meta["task_names"] = tasks[:2]
    (run / "model" / "instructmt_run.json").write_text(json.dumps(meta))
    with pytest.raises(PublishError, match="3 task rows but .* 2 task_names"):
        stage(read_run(run), tmp_path / "bad", repo_id="me/x")


def test_scalearn_qfa_udr_sections(tmp_path):
    import numpy as np
    from huggingface_hub import ModelCard
    from safetensors.numpy import save_file
    # ScaLearn: ω over 2 local source adapters
    run = tmp_path / "sl"
    (run / "model").mkdir(parents=True)
    for name in ("src_a", "src_b"):
        d = run / "sources" / name
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
        save_file({"w": np.ones((2, 2), dtype="float32")}, str(d / "adapter_model.safetensors"))
    (run / "model" / "adapter_config.json").write_text(json.dumps({"peft_type": "SCALEARN"}))
    save_file({"layer0.omega": np.array([[0.25, 0.25], [0.75, 0.75]], dtype="float32")},
              str(run / "model" / "adapter_model.safetensors"))
    (run / "model" / "instructmt_run.json").write_text(json.dumps({
        "method": "scalearn", "base_model": BASE_ID, "seen": ["t1"], "variant": "ScaLearnUniform",
        "source_adapters": {"src_a": "sources/src_a", "src_b": "sources/src_b", "src_c": "someone/lora-c"}}))
    staged = stage(read_run(run), tmp_path / "o_sl", repo_id="me/sl")
    assert "source_adapters/src_a/adapter_model.safetensors" in staged.files
    text = ModelCard(staged.card_text).text
    assert "[someone/lora-c](https://huggingface.co/someone/lora-c)" in text and "ScaLearnUniform" in text
    assert "import instructmt.adapters.scalearn" in text

    # QFA: subnet bits per layer
    run = tmp_path / "qfa"
    (run / "model").mkdir(parents=True)
    (run / "model" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"a": np.ones(3, dtype="float32")}, str(run / "model" / "adapter_model.safetensors"))
    (run / "model" / "instructmt_run.json").write_text(json.dumps({
        "method": "qfa", "base_model": BASE_ID, "seen": ["t1"], "subnet": {"layer.0": 2, "layer.1": 4},
        "quantization": {"method": "rtn", "group_size": 32}}))
    text = ModelCard(stage(read_run(run), tmp_path / "o_q", repo_id="me/q").card_text).text
    assert "Average bit-width **3.00** over 2 layers" in text and "group_size=32" in text

    # UDR: a retriever (full encoder), transformers library, embedding snippet
    run = tmp_path / "udr"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    save_file({"a": np.ones(3, dtype="float32")}, str(run / "model" / "model.safetensors"))
    (run / "model" / "instructmt_run.json").write_text(json.dumps({
        "method": "udr", "base_model": "sentence-transformers/all-MiniLM-L6-v2", "seen": ["t1"]}))
    card = ModelCard(stage(read_run(run), tmp_path / "o_u", repo_id="me/u").card_text)
    assert card.data.library_name == "transformers" and "udr" in card.data.tags
    assert 'AutoModel.from_pretrained("me/u")' in card.text


def test_scalearn_omega_summary_and_unknown_source(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file
    run = tmp_path / "sl"
    (run / "model").mkdir(parents=True)
    (run / "model" / "adapter_config.json").write_text(json.dumps({"peft_type": "SCALEARN"}))
    save_file({"layer0.omega": np.array([[0.25, 0.25], [0.75, 0.75]], dtype="float32")},
              str(run / "model" / "adapter_model.safetensors"))
    meta = {"method": "scalearn", "base_model": BASE_ID, "seen": ["t1"],
            "source_adapters": {"a": "owner/a", "b": "owner/b"}}
    (run / "model" / "instructmt_run.json").write_text(json.dumps(meta))
    staged = stage(read_run(run), tmp_path / "o", repo_id="me/sl")
    assert "| `a` | 0.2500 |" in staged.card_text and "| `b` | 0.7500 |" in staged.card_text
    meta["source_adapters"]["b"] = "/nowhere/on/this/machine"
    (run / "model" / "instructmt_run.json").write_text(json.dumps(meta))
    with pytest.raises(PublishError, match="source adapter 'b'"):
        stage(read_run(run), tmp_path / "o2", repo_id="me/sl")


@pytest.mark.slow
def test_cli_subprocess_honours_hf_endpoint(lora_run, hub, tmp_path):
    """The CLI passes no endpoint: huggingface_hub must pick HF_ENDPOINT up by itself."""
    run, _, _ = lora_run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=FAKE_TOKEN, HF_HOME=str(tmp_path / "hf_home"),
               PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "instructmt", "publish", str(run), "--repo-id", "me/cli",
                           "--base-model-id", BASE_ID], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout and "skipped training_args.bin" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert "adapter_model.safetensors" in hub.files("me/cli")
