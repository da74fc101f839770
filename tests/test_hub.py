"""Publishing to the Hub (instructmt.hub, hub/card.py, commands/publish) through the real huggingface_hub
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
    from instructmt.models.tiny import tiny_t5_model
    return tiny_t5_model(64, eos_token_id=1).eval()


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
def hub(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets offline; this Hub is local
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


def test_failed_preupload_names_the_sub_step(lora_run, hub):
    run, _, _ = lora_run
    hub.fail["preupload"] = 403
    with pytest.raises(PublishError, match=r"'commit \(preupload.*HTTP 403.*nothing was published"):
        publish(run, "me/no-preupload", base_model_id=BASE_ID, endpoint=hub.url)
    assert hub.files("me/no-preupload") == {}


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


def test_datasets_bind_family_results(lora_run, tmp_path):
    from huggingface_hub import ModelCard
    run, _, _ = lora_run
    staged = stage(read_run(run), tmp_path / "o", repo_id="me/x", base_model_id=BASE_ID,
                   datasets=["sni=someone/natural-instructions"])
    card = ModelCard(staged.card_text)
    assert card.data.datasets == ["someone/natural-instructions"]
    assert {r.dataset_type for r in card.data.eval_results} == {"someone/natural-instructions"}
    with pytest.raises(PublishError, match="Hub dataset id"):
        stage(read_run(run), tmp_path / "o2", repo_id="me/x", base_model_id=BASE_ID, datasets=[str(tmp_path)])


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
    (tmp_path / "preview").mkdir()
    with pytest.raises(PublishError, match="access token"):
        publish(leaky, "me/leaky", base_model_id=BASE_ID, dry_run=True, output=tmp_path / "preview")
    assert list((tmp_path / "preview").iterdir()) == []  # no half-staged copy (with the token) left behind


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
    run = write_run(tmp_path, model, method="mhr", base_model=BASE_ID, task_names=list(reversed(tasks)))
    # instructmt.adapters.mhr's sidecar: its task_names are the router rows (authoritative)
    (run / "model" / "mhr_config.json").write_text(json.dumps({
        "n_tasks": 3, "n_skills": 2, "n_splits": 2, "r": 2, "gumbel": True, "router_lr": 0.1, "task_names": tasks}))
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
    sidecar = json.loads((run / "model" / "mhr_config.json").read_text())
    (run / "model" / "mhr_config.json").write_text(json.dumps(dict(sidecar, task_names=tasks[:2])))
    with pytest.raises(PublishError, match="router has 3 task rows but the run lists 2 task names"):
        stage(read_run(run), tmp_path / "bad", repo_id="me/x")


def _scalearn_run(tmp_path: Path) -> Path:
    """The layout instructmt.adapters.scalearn writes: ω + a config naming the source LoRAs by path."""
    import numpy as np
    from safetensors.numpy import save_file
    run = tmp_path / "sl"
    (run / "model").mkdir(parents=True)
    for name in ("src_a", "src_b"):
        d = run / "adapters" / name / "model"
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/x"}))
        save_file({"w": np.ones((2, 2), dtype="float32")}, str(d / "adapter_model.safetensors"))
    sources = [str(run / "adapters" / n / "model") for n in ("src_a", "src_b")]
    (run / "model" / "scalearn_config.json").write_text(json.dumps({
        "format": "instructmt-scalearn", "sources": sources, "source_names": ["src_a", "src_b"],
        "variant": "uniform", "sources_relative": [os.path.relpath(p, run / "model") for p in sources]}))
    save_file({"m:q": np.array([[0.25, 0.25], [0.75, 0.75]], dtype="float32"),
               "m:v": np.array([[0.25], [0.75]], dtype="float32")},
              str(run / "model" / "scalearn_omega.safetensors"))
    (run / "model" / "instructmt_run.json").write_text(json.dumps({
        "method": "scalearn", "base_model": BASE_ID, "kind": "seq2seq", "seen": ["t1"], "task_names": ["t1"]}))
    return run


def test_scalearn_ships_sources_and_rewrites_their_paths(tmp_path):
    from huggingface_hub import ModelCard
    run = _scalearn_run(tmp_path)
    staged = stage(read_run(run), tmp_path / "o", repo_id="me/sl")
    assert {"scalearn_config.json", "scalearn_omega.safetensors", "source_adapters/src_a/adapter_model.safetensors",
            "source_adapters/src_b/adapter_config.json"} <= set(staged.files)
    cfg = json.loads((staged.folder / "scalearn_config.json").read_text())
    assert cfg["sources_relative"] == ["source_adapters/src_a", "source_adapters/src_b"]
    assert str(tmp_path) not in (staged.folder / "scalearn_config.json").read_text()
    src_cfg = json.loads((staged.folder / "source_adapters/src_a/adapter_config.json").read_text())
    assert src_cfg["base_model_name_or_path"] == BASE_ID
    card = ModelCard(staged.card_text)
    assert card.data.library_name == "instructmt" and card.data.base_model == BASE_ID
    assert "Variant: **uniform**" in card.text and "load_run(snapshot_download(\"me/sl\"))" in card.text
    assert "| `src_a` | 0.2500 |" in card.text and "| `src_b` | 0.7500 |" in card.text
    import shutil
    shutil.rmtree(run / "adapters" / "src_b")
    with pytest.raises(PublishError, match="source adapter 'src_b' not found"):
        stage(read_run(run), tmp_path / "o2", repo_id="me/sl")


def test_qfa_subnet_and_udr_retriever(tmp_path):
    import numpy as np
    from huggingface_hub import ModelCard
    from safetensors.numpy import save_file
    # QFA: an exported subnet (`instructmt qfa export`), self-contained, base a random-init preset
    sub = tmp_path / "subnet"
    sub.mkdir()
    (sub / "config.json").write_text("{}")
    save_file({"a": np.ones(3, dtype="float32")}, str(sub / "model.safetensors"))
    (sub / "tokenizer.json").write_text("{}")  # `qfa export` saves the tokenizer; publish refuses a run without
    (sub / "qfa_subnet.json").write_text(json.dumps({
        "configuration": {"u0": 2, "u1": 4}, "avg_bits": 3.0, "group_size": 32, "r": 4,
        "source_run": str(tmp_path)}))
    (sub / "instructmt_run.json").write_text(json.dumps({
        "method": "qfa_subnet", "base_model": "tiny-t5", "base_saved": ".", "kind": "seq2seq", "seen": ["t1"]}))
    staged = stage(read_run(sub), tmp_path / "o_q", repo_id="me/q")
    card = ModelCard(staged.card_text)
    assert card.data.base_model is None and card.data.library_name == "instructmt"
    assert "| average bits | 3.000 |" in card.text and "1× 2-bit, 1× 4-bit" in card.text
    assert "source_run" not in (staged.folder / "qfa_subnet.json").read_text()
    assert "model.safetensors" in staged.files

    # UDR: a saved retriever (`instructmt retrieve train`): encoder/ + pool + index + retriever.json
    ret = tmp_path / "retriever"
    (ret / "encoder").mkdir(parents=True)
    (ret / "encoder" / "config.json").write_text("{}")
    save_file({"a": np.ones(3, dtype="float32")}, str(ret / "encoder" / "model.safetensors"))
    (ret / "encoder" / "encoder_config.json").write_text(json.dumps({"source": "all-MiniLM-L6-v2", "max_length": 256}))
    (ret / "pool.jsonl").write_text("{}\n")
    (ret / "index.faiss").write_bytes(b"faiss")
    (ret / "retriever.json").write_text(json.dumps({"tasks": ["t1", "t2"], "training": {"config": {"lr": 2e-5}}}))
    staged = stage(read_run(ret), tmp_path / "o_u", repo_id="me/u")
    card = ModelCard(staged.card_text)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.library_name == "transformers" and "udr" in card.data.tags
    assert 'AutoModel.from_pretrained("me/u")' in card.text and "Trained over 2 task(s)" in card.text
    assert {"model.safetensors", "config.json", "encoder_config.json", "retriever.json"} <= set(staged.files)
    assert "pool.jsonl" not in staged.files and "index.faiss" not in staged.files


@pytest.mark.slow
def test_cli_subprocess_honours_hf_endpoint(lora_run, hub, tmp_path):
    """The CLI passes no endpoint: huggingface_hub must pick HF_ENDPOINT up by itself."""
    run, _, _ = lora_run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=FAKE_TOKEN, HF_HOME=str(tmp_path / "hf_home"),
               PYTHONPATH=str(REPO_ROOT))
    # the publish command alone (no torch import): argv as `instructmt publish ...` would get it
    script = ("import argparse, sys\n"
              "from instructmt.commands import publish\n"
              "parser = argparse.ArgumentParser(prog='instructmt')\n"
              "publish.register(parser.add_subparsers(dest='command'))\n"
              "args = parser.parse_args(sys.argv[1:])\n"
              "sys.exit(args.func(args))\n")
    proc = subprocess.run([sys.executable, "-c", script, "publish", str(run), "--repo-id", "me/cli",
                           "--base-model-id", BASE_ID], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout and "skipped training_args.bin" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert "adapter_model.safetensors" in hub.files("me/cli")


@pytest.mark.slow
def test_spine_run_publishes_self_contained_and_reloads(hub, tmp_path, repo):
    """A real tiny run (trainer + held-out evaluation), published with its random-init base."""
    from huggingface_hub import ModelCard
    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import DataConfig, ModelConfig, TrainConfig
    from instructmt.evaluation.runner import evaluate_tasks
    from instructmt.models.loading import load_run
    from instructmt.training.task_setup import resolve_tasks
    from instructmt.training.trainer import train

    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        model=ModelConfig(name_or_path="tiny-t5", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=300),
        data=DataConfig(tasks=[str(repo / "tasks" / "sample")], encoding="def", max_instances_per_task=8,
                        max_source_length=48, max_target_length=8),
        adapter=AdapterConfig(method="lora", r=4), max_steps=2, batch_size=8, learning_rate=1e-2, seed=3)
    split = resolve_tasks(cfg.data)
    result = train(cfg, split)
    model, tok, meta = load_run(result.model_dir)
    evaluate_tasks(model, tok, split.held_out[:2], kind=meta["kind"], output_dir=tmp_path / "run" / "eval",
                   encoding="def", max_source_length=48, max_new_tokens=4, max_instances=2, show_progress=False)

    with pytest.raises(PublishError, match="random-init preset.*--include-base"):
        publish(tmp_path / "run", "me/tiny-run", endpoint=hub.url)
    res = publish(tmp_path / "run", "me/tiny-run", include_base=True, endpoint=hub.url)
    assert "base/model.safetensors" in res.files and "tokenizer_config.json" in res.files
    folder = hub.dump("me/tiny-run", tmp_path / "snap")
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model is None and card.data.library_name == "peft"
    assert 'subfolder="base"' in card.text
    fams = {r.dataset_type for r in card.data.eval_results}
    assert fams == {split.held_out[0].family}
    assert str(tmp_path) not in "".join(
        p.read_text(errors="ignore") for p in folder.rglob("*") if p.suffix in (".json", ".yaml", ".md"))

    reloaded, _, _ = load_run(folder)
    ids = tok("Definition: copy the words. Input: a b", return_tensors="pt").input_ids
    dec = torch.tensor([[reloaded.config.decoder_start_token_id or 0]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, decoder_input_ids=dec).logits,
                                   model(input_ids=ids, decoder_input_ids=dec).logits)


def test_real_scalearn_model_reloads_from_the_published_repo(hub, tmp_path):
    """instructmt.adapters.scalearn's own save format, published, its local sources deleted, reloaded."""
    import shutil
    from peft import LoraConfig, get_peft_model
    from instructmt.adapters.base import get_adapter
    from instructmt.adapters.scalearn import ScaLearnConfig, ScaLearnModel
    sources = []
    for i in range(2):
        torch.manual_seed(10 + i)
        lora = get_peft_model(tiny_t5(), LoraConfig(task_type="SEQ_2_SEQ_LM", r=2, target_modules=["q", "v"]))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        lora.save_pretrained(str(tmp_path / "run" / "adapters" / f"task{i}"))
        sources.append(str(tmp_path / "run" / "adapters" / f"task{i}"))
    model = ScaLearnModel(tiny_t5(), ScaLearnConfig(sources=sources, variant="scalearn")).eval()
    with torch.no_grad():
        for p in model.omega.values():
            p.uniform_(0.0, 1.0)
    model.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "model" / "instructmt_run.json").write_text(json.dumps({
        "method": "scalearn", "base_model": BASE_ID, "kind": "seq2seq", "seen": ["task0"], "task_names": ["task0"]}))
    publish(tmp_path / "run", "me/scalearn", endpoint=hub.url)
    expected = logits(model)
    shutil.rmtree(tmp_path / "run")  # the published repo must not need this machine's source paths
    folder = hub.dump("me/scalearn", tmp_path / "snap")
    reloaded = get_adapter("scalearn").load(tiny_t5(), folder).eval()
    torch.testing.assert_close(logits(reloaded), expected)
    assert "| `task0` |" in (folder / "README.md").read_text()  # mean ω per source
