"""ScaLearn stage 2: ω shapes/counts per variant, merge, training touches only ω, save/load, dropout."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

from instructmt.adapters.base import AdapterConfig, get_adapter
from instructmt.adapters.scalearn import (VARIANTS, ScaLearnConfig, ScaLearnError, ScaLearnLinear,
                                          ScaLearnModel)
from instructmt.errors import ConfigError
from instructmt.models.tiny import tiny_t5_model

torch.set_num_threads(1)

RANKS = (2, 4, 3)  # different ranks on purpose: the layer pads them to one stacked tensor
INNER = 2 * 16     # num_heads * d_kv: output size of T5's q and v projections


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    return tiny_t5_model(101, seed=seed, dropout_rate=0.0).eval()


@pytest.fixture(scope="module")
def base_state():
    return tiny_t5().state_dict()


def fresh_base(state) -> T5ForConditionalGeneration:
    model = tiny_t5(seed=123)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, base_state):
    """Three PEFT LoRA adapters on q,v with random (non-zero) B so every delta matters."""
    root = tmp_path_factory.mktemp("sources")
    paths = []
    for i, r in enumerate(RANKS):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(fresh_base(base_state),
                                    LoraConfig(task_type="SEQ_2_SEQ_LM", r=r, lora_alpha=2 * r + i,
                                               target_modules=["q", "v"]))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        out = root / f"task{i}"
        peft_model.save_pretrained(str(out))
        paths.append(str(out))
    return paths


def batch():
    g = torch.Generator().manual_seed(7)
    return {"input_ids": torch.randint(1, 101, (3, 9), generator=g),
            "attention_mask": torch.ones(3, 9, dtype=torch.long),
            "labels": torch.randint(1, 101, (3, 5), generator=g)}


def adapted_q_v(model) -> list[str]:
    return [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("q", "v") and isinstance(m, torch.nn.Linear)]


def build(base_state, sources, variant, **kw) -> ScaLearnModel:
    return ScaLearnModel(fresh_base(base_state), ScaLearnConfig(sources=sources, variant=variant, **kw))


def expected_count(variant: str, n_modules: int, n_sources: int) -> int:
    """Formula from the ScaLearn paper, transposed to LoRA on q,v (both output INNER features)."""
    return {"scalearn": n_modules * n_sources * INNER,   # (L, N, d)
            "uniform": n_modules * n_sources,            # (L, N, 1)
            "pp": 2 * n_sources * INNER,                 # (N, d) per module type (q, v)
            "uniform-pp": n_sources}[variant]            # (N,)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trainable_parameter_count_matches_formula(base_state, sources, variant, capsys):
    n_modules = len(adapted_q_v(tiny_t5()))
    assert n_modules == 12  # encoder 2x(q,v) + decoder 2x(self q,v + cross q,v)
    model = build(base_state, sources, variant)
    want = expected_count(variant, n_modules, len(sources))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == want
    assert model.num_trainable_parameters() == want
    model.print_trainable_parameters()
    assert f"trainable ω params: {want:,}" in capsys.readouterr().out


def test_omega_init_is_normal_around_two_over_n(base_state, sources):
    model = build(base_state, sources, "scalearn")
    omega = torch.cat([p.flatten() for p in model.omega.values()])
    assert abs(omega.mean().item() - 2 / 3) < 2e-4
    assert 5e-4 < omega.std().item() < 2e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merge_matches_unmerged_outputs(base_state, sources, variant):
    model = build(base_state, sources, variant).eval()
    with torch.no_grad():
        for p in model.omega.values():  # move away from the near-constant init
            p.uniform_(-1.0, 1.5)
        b = batch()
        unmerged = model(**b).logits
        plain = fresh_base(base_state)(**b).logits
        merged = model.merge_and_unload()(**b).logits
    assert not torch.allclose(unmerged, plain, atol=1e-3)  # the deltas do change the output
    assert isinstance(merged, torch.Tensor) and not any(isinstance(m, ScaLearnLinear) for m in model.modules())
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


def test_merge_then_unmerge_restores_base_weights(base_state, sources):
    model = build(base_state, sources, "scalearn")
    before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    model.merge()
    changed = [k for k, v in model.base_model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == 12
    assert all(k.endswith((".q.base_layer.weight", ".v.base_layer.weight")) for k in changed)
    model.unmerge()
    for k, v in model.base_model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def _train_steps(model, steps=3, lr=5e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("variant", ["scalearn", "uniform-pp"])
def test_training_updates_only_omega(base_state, sources, variant):
    model = build(base_state, sources, variant)
    base_before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    layers = model.scalearn_layers()
    sources_before = {n: (l.lora_A.clone(), l.lora_B.clone(), l.scaling.clone()) for n, l in layers.items()}
    omega_before = {k: v.detach().clone() for k, v in model.omega.items()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.omega.values()}
    _train_steps(model)
    for k, v in model.base_model.state_dict().items():
        assert torch.equal(v, base_before[k]), k
    for n, layer in layers.items():
        a, b, s = sources_before[n]
        assert torch.equal(layer.lora_A, a) and torch.equal(layer.lora_B, b) and torch.equal(layer.scaling, s)
    assert all(not torch.equal(model.omega[k], omega_before[k]) for k in omega_before)
    assert all(p.grad is None for p in model.base_model.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_then_load_gives_identical_outputs(tmp_path, base_state, sources, variant):
    model = _train_steps(build(base_state, sources, variant))
    model.save_pretrained(tmp_path / "sl")
    assert sorted(p.name for p in (tmp_path / "sl").iterdir()) == ["scalearn_config.json",
                                                                   "scalearn_omega.safetensors"]
    reloaded = ScaLearnModel.from_pretrained(fresh_base(base_state), tmp_path / "sl").eval()
    assert reloaded.scalearn_config.variant == variant
    assert reloaded.source_names == ["task0", "task1", "task2"]
    b = batch()
    with torch.no_grad():
        assert torch.equal(model(**b).logits, reloaded(**b).logits)


def test_load_refuses_changed_source(tmp_path, base_state, sources):
    import shutil
    copies = []
    for p in sources:
        dst = tmp_path / "src" / p.rsplit("/", 1)[-1]
        shutil.copytree(p, dst)
        copies.append(str(dst))
    build(base_state, copies, "uniform").save_pretrained(tmp_path / "sl")
    shutil.copy(f"{sources[0]}/adapter_model.safetensors", f"{copies[1]}/adapter_model.safetensors")
    with pytest.raises(ScaLearnError, match="task1.*changed since"):
        ScaLearnModel.from_pretrained(fresh_base(base_state), tmp_path / "sl")


def test_omega_dropout_only_in_training(base_state, sources):
    model = build(base_state, sources, "scalearn")
    layer = next(iter(model.scalearn_layers().values()))
    assert layer.omega_dropout == pytest.approx(0.3)
    x = torch.randn(4, 6, 32)
    layer.eval()
    with torch.no_grad():
        e1, e2 = layer(x), layer(x)
        expected = layer.base_layer(x) + x @ layer.delta_weight().T
    assert torch.equal(e1, e2)
    torch.testing.assert_close(e1, expected, atol=1e-5, rtol=1e-5)
    layer.train()
    torch.manual_seed(0)
    with torch.no_grad():
        t1, t2 = layer(x), layer(x)
    assert not torch.allclose(t1, e1) and not torch.allclose(t1, t2)
    # Uniform++ trains without ω dropout by default
    upp = build(base_state, sources, "uniform-pp")
    assert all(l.omega_dropout == 0.0 for l in upp.scalearn_layers().values())
    upp_layer = next(iter(upp.scalearn_layers().values()))
    with torch.no_grad():
        assert torch.equal(upp_layer.train()(x), upp_layer.eval()(x))


def test_fixed_omega_matches_peft_cat_weighted_adapter(base_state, sources):
    """With ω ≡ w, ScaLearn equals peft's add_weighted_adapter(combination_type='cat', weights=w)."""
    w = 1 / len(sources)
    ours = build(base_state, sources, "uniform-pp", init_mean=w, init_std=0.0).eval()
    peft_model = PeftModel.from_pretrained(fresh_base(base_state), sources[0], adapter_name="s0")
    for i, p in enumerate(sources[1:], start=1):
        peft_model.load_adapter(p, adapter_name=f"s{i}")
    names = [f"s{i}" for i in range(len(sources))]
    peft_model.add_weighted_adapter(names, [w] * len(names), "avg", combination_type="cat")
    peft_model.set_adapter("avg")
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**b).logits, peft_model.eval()(**b).logits, atol=1e-5, rtol=1e-5)


def test_registered_method_apply_save_load(tmp_path, base_state, sources):
    method = get_adapter("scalearn")
    cfg = AdapterConfig(method="scalearn", options={"sources": sources, "variant": "pp"})
    model = method.apply(fresh_base(base_state), cfg, ["target"])
    assert isinstance(model, ScaLearnModel) and model.num_trainable_parameters() == 2 * 3 * INNER
    method.save(model, tmp_path / "m")
    again = method.load(fresh_base(base_state), tmp_path / "m")
    b = batch()
    with torch.no_grad():
        assert torch.equal(model.eval()(**b).logits, again.eval()(**b).logits)
        gen = again.generate(input_ids=b["input_ids"], max_new_tokens=3)
    assert gen.shape[0] == 3


def test_errors_name_the_problem(tmp_path, base_state, sources):
    with pytest.raises(ConfigError, match="unknown ScaLearn variant 'uniformpp'.*uniform-pp"):
        ScaLearnConfig(sources=sources, variant="uniformpp")
    with pytest.raises(ScaLearnError, match="no adapter_config.json"):
        build(base_state, [sources[0], str(tmp_path / "nowhere")], "scalearn")
    with pytest.raises(ConfigError, match="options.sources"):
        get_adapter("scalearn").apply(fresh_base(base_state), AdapterConfig(method="scalearn"), [])
    wide = T5ForConditionalGeneration(T5Config(d_model=48, d_ff=64, num_layers=2, num_heads=2, d_kv=16,
                                               vocab_size=101, decoder_start_token_id=0, pad_token_id=0))
    with pytest.raises(ScaLearnError, match="task0.*base linear is 48->32"):
        ScaLearnModel(wide, ScaLearnConfig(sources=sources))


SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "tasks" / "sample"


@pytest.mark.slow
def test_cli_per_task_stage1_then_transfer(tmp_path):
    """`instructmt train --per-task` writes one PEFT adapter per task on a shared base; `instructmt
    transfer` trains ω on the target, scores its held-back instances and reloads via load_run."""
    import json

    from instructmt.cli import main
    from instructmt.models.loading import load_pretrained, load_run

    if not SAMPLE.is_dir():
        pytest.skip("bundled sample tasks missing")
    run = tmp_path / "stage1"
    tasks = ["task903_first_word", "task952_second_word"]
    common = ["--set", "model.tiny_d_model=32", "--set", "model.tiny_vocab_size=300", "--set",
              "data.holdback_per_seen_task=6", "--set", "data.max_instances_per_task=16", "--set",
              "data.max_target_length=8", "--set", "log_every=1"]
    rc = main(["train", "--model", "tiny-t5", "--tasks", str(SAMPLE), "--seen", *tasks, "--held-out",
               "task904_last_word", "--adapter", "lora", "--per-task", "--output", str(run), "--max-steps", "2",
               "--batch-size", "4", "--encoding", "def", *common])
    assert rc == 0
    index = json.loads((run / "adapters" / "index.json").read_text())
    assert sorted(index["adapters"]) == sorted(tasks)
    base, _, _ = load_pretrained(index["base_model"])
    peft_model = PeftModel.from_pretrained(base, index["adapters"][tasks[0]])  # a plain PEFT adapter
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) > 0

    out = tmp_path / "transfer"
    rc = main(["transfer", "--from", str(run), "--sources", ",".join(tasks), "--target", tasks[1],
               "--variant", "uniform", "--output", str(out), "--set", "max_steps=2", "--set", "batch_size=4"])
    assert rc == 0
    summary = json.loads((out / "transfer.json").read_text())
    assert summary["trainable_parameters"] == 12 * 2  # 12 adapted q/v modules x 2 sources
    assert summary["sources"] == tasks and summary["steps"] == 2
    assert 0.0 <= summary["exact_match"] <= 100.0
    assert (out / "eval" / "metrics.json").is_file()
    model, _, meta = load_run(out / "model")
    assert isinstance(model, ScaLearnModel) and meta["method"] == "scalearn"
    assert model.scalearn_config.variant == "uniform"


def test_deepcopy_keeps_its_own_omega(base_state, sources):
    """Layers reach ω through the model's bank; a deep copy must use the copy's ω, not the original's."""
    model = build(base_state, sources, "pp").eval()
    clone = copy.deepcopy(model)
    b = batch()
    with torch.no_grad():
        before = model(**b).logits
        for p in clone.omega.values():
            p.mul_(-3.0)
        assert torch.equal(model(**b).logits, before)
        assert not torch.allclose(clone(**b).logits, before)


def test_single_source_with_unit_omega_equals_peft_lora(tmp_path, base_state):
    """ω ≡ 1 on one source reproduces that PEFT adapter exactly, including rsLoRA and alpha_pattern
    scaling and a per-module rank_pattern."""
    torch.manual_seed(5)
    cfg = LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=6, target_modules=["q", "v"], use_rslora=True,
                     alpha_pattern={"v": 3}, rank_pattern={"q": 2})
    peft_model = get_peft_model(fresh_base(base_state), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "src"))
    ours = build(base_state, [str(tmp_path / "src")], "uniform-pp", init_mean=1.0, init_std=0.0).eval()
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**b).logits, peft_model.eval()(**b).logits, atol=1e-5, rtol=1e-5)


def test_layer_follows_model_dtype(base_state, sources):
    """`.to(bfloat16)` moves ω, the frozen sources and the base together; outputs stay close to fp32."""
    model = build(base_state, sources, "scalearn").eval()
    layer = next(iter(model.scalearn_layers().values()))
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = layer(x)
        model.to(torch.bfloat16)
        out = layer(x.to(torch.bfloat16))
    assert layer.lora_A.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
