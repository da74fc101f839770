"""MHR / Poly adapters: parity with peft Poly and with the formula, MHR-z/μ, save/load, generation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, PolyConfig, TaskType, get_peft_model
from torch.distributions import RelaxedBernoulli
from transformers import T5ForConditionalGeneration

from instructmt.adapters.base import AdapterConfig, get_adapter
from instructmt.adapters.mhr import (MHRConfig, RoutingError, add_task, apply_mhr, load_mhr, mhr_layers,
                                     routing_probabilities, save_mhr, set_adaptation_mode, set_gumbel, to_lora,
                                     write_routing_report)
from instructmt.errors import ConfigError
from instructmt.models.tiny import tiny_t5_model

torch.set_num_threads(1)
TARGETS = ["q", "k", "v", "o"]


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    return tiny_t5_model(120, seed=seed, eos_token_id=1, dropout_rate=0.0)


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Give B and the router non-trivial values so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "poly_lora_B" in name or "poly_lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "module_logits" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0)


def batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(2, 120, (n, 9), generator=g), torch.randint(2, 120, (n, 5), generator=g))


def make_mhr(n_tasks=3, n_skills=4, n_splits=2, r=4, seed=0, **kw) -> PeftModel:
    cfg = MHRConfig(n_tasks=n_tasks, n_skills=n_skills, n_splits=n_splits, r=r, target_modules=TARGETS, **kw)
    model = apply_mhr(tiny_t5(seed), cfg)
    randomize(model)
    return model


@pytest.mark.parametrize("n_splits", [1, 4])
def test_matches_peft_poly_with_same_weights(n_splits):
    ours = make_mhr(n_splits=n_splits).eval()
    peft_poly = get_peft_model(tiny_t5(0), PolyConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, n_tasks=3, n_skills=4,
                                                      n_splits=n_splits, target_modules=TARGETS)).eval()
    assert type(peft_poly.base_model).__name__ == "PolyModel"  # stock peft outside our context
    missing = peft_poly.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys
    x, y = batch()
    for ids in ([0, 1, 1, 2], [2, 2, 2, 2]):
        t = torch.tensor(ids)
        a = ours(input_ids=x, labels=y, task_ids=t).logits
        b = peft_poly(input_ids=x, labels=y, task_ids=t).logits
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    base = tiny_t5(0)(input_ids=x, labels=y).logits
    assert not torch.allclose(a, base, atol=1e-3)  # the adapter really acts


def reference_layer(layer, x, task_ids, adapter="default"):
    """The formula written out per example with loops over heads and skills."""
    A, B = layer.poly_lora_A[adapter], layer.poly_lora_B[adapter]
    h, k, _, r = A.shape
    logits = layer.poly_router[adapter].module_logits
    out = []
    for row, tid in zip(x, task_ids.tolist()):
        z = torch.sigmoid(logits[tid].view(h, k))
        alpha = z / (z.sum(-1, keepdim=True) + 1e-12)
        a_heads = [sum(alpha[q, s] * A[q, s] for s in range(k)) for q in range(h)]
        b_heads = [sum(alpha[q, s] * B[q, s] for s in range(k)) for q in range(h)]
        a_hat = torch.cat(a_heads, dim=0)          # concatenated along d_in
        b_hat = torch.cat(b_heads, dim=1)          # concatenated along d_out
        out.append(layer.base_layer(row) + row @ a_hat @ b_hat / r)
    return torch.stack(out)


def test_layer_forward_equals_formula():
    model = make_mhr(n_splits=4).eval()
    _, layer = mhr_layers(model)[0]
    x = torch.randn(5, 7, layer.in_features)
    with torch.no_grad():
        for ids in ([0, 2, 1, 2, 0], [1] * 5):
            t = torch.tensor(ids)
            torch.testing.assert_close(layer(x, task_ids=t), reference_layer(layer, x, t), rtol=1e-5, atol=1e-5)


def test_batched_mixing_gives_the_same_gradients_as_per_layer_mixing():
    grads = []
    for batched in (True, False):
        model = make_mhr(gumbel=False).train()
        model.base_model.__dict__["mhr_group_mixing"] = batched
        x, y = batch()
        model(input_ids=x, labels=y, task_ids=torch.tensor([2, 0, 2, 1])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for n, g in grads[0].items() if "module_logits" in n)


def test_gumbel_sampling_is_relaxed_bernoulli():
    logits = torch.randn(3, 2, 4)
    torch.manual_seed(7)
    ours = routing_probabilities(logits, sample=True)
    torch.manual_seed(7)
    z = RelaxedBernoulli(temperature=torch.tensor(1.0), logits=logits).rsample()
    torch.testing.assert_close(ours, z / (z.sum(-1, keepdim=True) + 1e-12), rtol=1e-5, atol=1e-6)


def test_gumbel_switch():
    model = make_mhr().train()
    x, y = batch()
    t = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        noisy = [model(input_ids=x, labels=y, task_ids=t).logits for _ in range(2)]
        assert not torch.allclose(noisy[0], noisy[1])
        set_gumbel(model, False)
        train_plain = model(input_ids=x, labels=y, task_ids=t).logits
        eval_plain = model.eval()(input_ids=x, labels=y, task_ids=t).logits
    torch.testing.assert_close(train_plain, eval_plain)


def test_mu_equals_lora_initialised_at_average_skills():
    model = make_mhr(n_splits=2).eval()
    x, y = batch()
    # reference LoRA built independently: per head, average A and B over skills; concatenate heads
    ref = get_peft_model(tiny_t5(0), LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=1,
                                                target_modules=TARGETS))
    with torch.no_grad():
        for name, layer in mhr_layers(model):
            key = name.split("base_model.model.", 1)[1]
            A, B = layer.poly_lora_A["default"], layer.poly_lora_B["default"]
            a_mean = torch.cat([A[q].mean(0) for q in range(A.shape[0])], dim=0)   # (d_in, r)
            b_mean = torch.cat([B[q].mean(0) for q in range(B.shape[0])], dim=1)   # (r, d_out)
            mod = ref.base_model.model.get_submodule(key)
            mod.lora_A["default"].weight.copy_(a_mean.T)
            mod.lora_B["default"].weight.copy_(b_mean.T)
    t = torch.tensor([0, 1, 2, 1])
    # MHR with equal router logits (α = 1/K) equals the averaged LoRA too
    uniform = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in mhr_layers(uniform):
            layer.poly_router["default"].module_logits.zero_()
        routed_uniform = uniform(input_ids=x, labels=y, task_ids=t).logits
    mu = to_lora(model).eval()
    assert type(mu.base_model).__name__ == "LoraModel"
    with torch.no_grad():
        got = mu(input_ids=x, labels=y).logits
        want = ref.eval()(input_ids=x, labels=y).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, routed_uniform, rtol=1e-4, atol=1e-5)
    trainable = [n for n, p in mu.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_mhr_z_updates_only_the_router():
    model = make_mhr(n_tasks=2).train()
    new_id = add_task(model, "held_out", seed=0)
    assert new_id == 2
    set_adaptation_mode(model, "mhr-z")
    method = get_adapter("mhr")
    groups = method.param_groups(model, lr=1e-2)
    assert [g["name"] for g in groups] == ["router"] and groups[0]["lr"] == 0.1
    opt = torch.optim.AdamW(groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = batch()
    model(input_ids=x, labels=y, task_ids=torch.full((4,), new_id)).loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    for n, old in before.items():
        if "poly_lora" in n or "poly_" not in n:
            assert torch.equal(old, after[n]), n  # skills and base weights untouched
        else:
            assert torch.equal(old[:2], after[n][:2]), n                    # old task rows untouched
            assert not torch.equal(old[2], after[n][2]), n                  # new task row learned


def test_param_groups_give_router_its_own_lr():
    cfg = AdapterConfig(method="mhr", r=4, target_modules=TARGETS,
                        options={"n_skills": 2, "n_splits": 2, "router_lr": 0.05})
    model = get_adapter("mhr").apply(tiny_t5(), cfg, ["a", "b"])
    groups = {g["name"]: g for g in get_adapter("mhr").param_groups(model, lr=1e-3)}
    assert groups["router"]["lr"] == 0.05 and groups["adapters"]["lr"] == 1e-3
    n_router = sum(p.numel() for p in groups["router"]["params"])
    assert n_router == len(mhr_layers(model)) * 2 * 2 * 2  # T * h * K per layer


def test_save_load_identical_logits(tmp_path):
    model = make_mhr(gumbel=False).eval()
    add_task(model, "extra", seed=3)
    x, y = batch()
    t = torch.tensor([0, 3, 1, 3])
    with torch.no_grad():
        want = model(input_ids=x, labels=y, task_ids=t).logits
    save_mhr(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["n_tasks"] == 4
    loaded = load_mhr(tiny_t5(0), tmp_path).eval()
    assert type(loaded.base_model).__name__ == "MHRTuner"
    assert all(not layer.mhr_gumbel for _, layer in mhr_layers(loaded))
    stock = PeftModel.from_pretrained(tiny_t5(0), str(tmp_path)).eval()  # plain peft reads it as Poly
    assert type(stock.base_model).__name__ == "PolyModel"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x, labels=y, task_ids=t).logits, want, rtol=0, atol=0)
        torch.testing.assert_close(stock(input_ids=x, labels=y, task_ids=t).logits, want, rtol=1e-5, atol=1e-5)


def test_generate_routes_each_example_by_its_task():
    model = make_mhr().eval()
    x, _ = batch()
    t = torch.tensor([0, 1, 2, 1])
    kw = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    together = model.generate(input_ids=x, task_ids=t, **kw)
    for i in range(4):
        alone = model.generate(input_ids=x[i:i + 1], task_ids=t[i:i + 1], **kw)
        for step_together, step_alone in zip(together.scores, alone.scores):
            torch.testing.assert_close(step_together[i], step_alone[0], rtol=1e-4, atol=1e-4)
    swapped = model.generate(input_ids=x, task_ids=torch.tensor([2, 0, 1, 0]), **kw)
    assert not torch.allclose(swapped.scores[0], together.scores[0])  # the task id changes generation
    beams = model.generate(input_ids=x, task_ids=t, max_new_tokens=6, num_beams=3, do_sample=False)
    assert beams.shape[0] == 4  # beam search expands the batch; task ids follow their example


def test_divisibility_and_task_id_errors():
    with pytest.raises(ConfigError, match="n_splits=3 must divide d_in and d_out"):
        apply_mhr(tiny_t5(), MHRConfig(n_tasks=2, n_splits=3, target_modules=TARGETS))
    model = make_mhr(n_tasks=2)
    x, y = batch()
    with pytest.raises(RoutingError, match="out of range"):
        model(input_ids=x, labels=y, task_ids=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(RoutingError, match="pass task_ids"):
        model(input_ids=x, labels=y)
    with pytest.raises(ConfigError, match="one routing head"):
        get_adapter("poly").apply(tiny_t5(), AdapterConfig(method="poly", options={"n_splits": 2}), ["a"])


def test_routing_report(tmp_path):
    model = make_mhr(n_tasks=3, n_skills=4)
    payload = write_routing_report(model, ["alpha", "beta", "gamma"], tmp_path)
    assert (tmp_path / "routing_heatmap.png").stat().st_size > 0
    assert (tmp_path / "task_similarity.png").stat().st_size > 0
    saved = json.loads((tmp_path / "routing.json").read_text())
    assert saved["task_names"] == ["alpha", "beta", "gamma"]
    assert len(saved["routing_mean"]) == 3 and len(saved["routing_mean"][0]) == 4
    for i, row in enumerate(payload["task_similarity"]):
        assert row[i] == pytest.approx(1.0, abs=1e-5)
    for row in saved["routing_mean"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-4)


def test_reorder_tasks_gives_new_task_row_zero_and_keeps_learned_rows(tmp_path):
    from instructmt.adapters.mhr import reorder_tasks

    model = make_mhr(n_tasks=3, task_names=["a", "b", "c"], gumbel=False).eval()
    x, y = batch()
    with torch.no_grad():
        before_b = model(input_ids=x, labels=y, task_ids=torch.full((4,), 1)).logits
    order = reorder_tasks(model, ["new", "b"])
    assert order == ["new", "b", "a", "c"]
    _, layer = mhr_layers(model)[0]
    assert layer.poly_router["default"].module_logits.shape[0] == 4
    assert layer.poly_router["default"].module_logits[0].abs().max() <= 1e-3  # fresh row U(±1e-3)
    with torch.no_grad():
        after_b = model(input_ids=x, labels=y, task_ids=torch.full((4,), 1)).logits
    torch.testing.assert_close(after_b, before_b)


def test_adaptation_methods_load_from_a_trained_checkpoint(tmp_path):
    trained = make_mhr(n_tasks=2, task_names=["a", "b"], gumbel=False)
    save_mhr(trained, tmp_path)
    cfg = AdapterConfig(method="mhr", options={"init_from": str(tmp_path), "adapt_mode": "mhr-z"})
    adapted = get_adapter("mhr").apply(tiny_t5(0), cfg, ["held_out"])
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("module_logits" in n for n in trainable)
    assert adapted.peft_config["default"].n_tasks == 3
    mu_cfg = AdapterConfig(method="mhr-mu", options={"init_from": str(tmp_path)})
    mu = get_adapter("mhr-mu").apply(tiny_t5(0), mu_cfg, ["held_out"])
    assert not get_adapter("mhr-mu").routed
    x, y = batch()
    with torch.no_grad():
        uniform = copy.deepcopy(trained).eval()
        for _, layer in mhr_layers(uniform):
            layer.poly_router["default"].module_logits.zero_()
        want = uniform(input_ids=x, labels=y, task_ids=torch.zeros(4, dtype=torch.long)).logits
        torch.testing.assert_close(mu.eval()(input_ids=x, labels=y).logits, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="init_from"):
        get_adapter("mhr-mu").apply(tiny_t5(0), AdapterConfig(method="mhr-mu"), ["x"])


@pytest.mark.slow
def test_adapt_command_end_to_end(tmp_path, monkeypatch):
    """Train a tiny multi-task MHR run with the spine trainer, then adapt it (mhr-z, zero-shot MHR-μ)."""
    from pathlib import Path

    from instructmt.workflows.adapt import adapt_run, evaluate_adapted
    from instructmt.config import load_config
    from instructmt.models.loading import load_run
    from instructmt.training.trainer import train

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    seen = ["task901_uppercase_words", "task903_first_word"]
    cfg = load_config(None, [f"output_dir={tmp_path / 'mt'}", "model.name_or_path=tiny-t5", "model.tiny_d_model=32",
                             "model.tiny_layers=1", "model.tiny_vocab_size=300", "data.tasks=tasks/sample",
                             f"data.seen={','.join(seen)}", "data.held_out=task951_min_number",
                             "data.max_instances_per_task=8", "data.max_source_length=128",
                             "data.max_target_length=16", "max_steps=2", "batch_size=4", "adapter.method=mhr",
                             "adapter.r=2", "adapter.target_modules=q,v"])
    cfg.adapter.options = {"n_skills": 2, "n_splits": 2}
    run = train(cfg)
    adapted = adapt_run(run.output_dir, ["task951_min_number"], "mhr-z", output=str(tmp_path / "z"), shots=4,
                        steps=2, batch_size=4)
    model, _, meta = load_run(adapted)
    assert meta["method"] == "mhr" and meta["task_names"] == ["task951_min_number"]
    assert meta["adapt_mode"] == "mhr-z" and (adapted / "base").is_dir()
    from instructmt.adapters.mhr import mhr_config_of
    assert mhr_config_of(model).task_names == ["task951_min_number"] + seen  # new task is router row 0
    metrics = evaluate_adapted(adapted, ["task951_min_number"], tmp_path / "z_eval", shots=4, max_instances=2)
    assert metrics["num_instances"] == 2
    zero = adapt_run(run.output_dir, ["task951_min_number"], "mhr-mu-zeroshot", output=str(tmp_path / "mu0"))
    mu_model, _, mu_meta = load_run(zero)
    assert mu_meta["method"] == "mhr-mu" and type(mu_model.base_model).__name__ == "LoraModel"
