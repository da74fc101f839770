"""Quantized once-for-all LoRA: quantization, packing, decoupled LoRA training, sampling, search, export."""

from __future__ import annotations

import json

import pytest
import torch

from instructmt.adapters.base import AdapterConfig, get_adapter
from instructmt.adapters.qfa import (BitSampler, QFALinear, TriangularSchedule, avg_bits, export_subnet,
                                     gptq_quantize, load_subnet, max_entropy_probs, pack_codes,
                                     parse_configuration, qfa_layers, rtn_quantize, set_configuration,
                                     state_of, unpack_codes, uniform_configuration, weight_bytes)
from instructmt.adapters.qfa.quant import packed_nbytes
from instructmt.adapters.qfa.search import Budget, search, write_search_report
from instructmt.errors import ConfigError
from instructmt.models.tiny import tiny_t5_model

torch.set_num_threads(1)


def tiny_t5(seed: int = 0):
    return tiny_t5_model(120, seed=seed, eos_token_id=1, dropout_rate=0.0)


def batch(seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, 120, (n, 10), generator=g),
            "attention_mask": torch.ones(n, 10, dtype=torch.long),
            "labels": torch.randint(2, 120, (n, 5), generator=g)}


def qfa_model(**options):
    return get_adapter("qfa").apply(tiny_t5(), AdapterConfig(method="qfa", r=4, alpha=8, options=options), [])


# ----------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rtn_error_within_half_a_step(bits):
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(bits)) * 0.2  # 80 columns: the last group of 32 is padded
    q = rtn_quantize(w, bits, group_size=32)
    err = (w - q.dequantize()).abs()
    scale = q.scales.float().repeat_interleave(32, dim=1)[:, :80]
    assert torch.all(err <= scale / 2 + 1e-6)
    # and the step really is the group's range over 2^b - 1 levels
    assert float(err.max()) > 0
    assert torch.all(q.zeros.float() >= 0) and torch.all(q.zeros.float() <= 2 ** bits - 1)


def test_fewer_bits_means_larger_error():
    w = torch.randn(64, 64)
    errs = [float((w - rtn_quantize(w, b).dequantize()).pow(2).mean()) for b in (2, 3, 4)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_pack_unpack_roundtrip(bits):
    codes = torch.randint(0, 2 ** bits, (1003,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(1003, bits)
    assert torch.equal(unpack_codes(packed, bits, 1003), codes)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([0, 8]), 3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_storage_is_bits_per_param_plus_group_params(bits):
    out_f, in_f, gs = 96, 128, 32
    q = rtn_quantize(torch.randn(out_f, in_f), bits, group_size=gs)
    expected = bits * out_f * in_f / 8 + out_f * (in_f // gs) * 2 * 2  # fp16 scale + fp16 zero
    assert abs(q.nbytes - expected) <= 0.05 * expected
    assert q.packed.numel() == bits * out_f * in_f // 8  # 3 bits really is 3/8 byte per weight


def test_gptq_reconstructs_xw_better_than_rtn():
    torch.manual_seed(1)
    w = torch.randn(48, 64)
    # correlated calibration inputs (as real activations are): GPTQ uses that structure
    x = torch.randn(1024, 12) @ torch.randn(12, 64) + 0.1 * torch.randn(1024, 64)
    h = x.t() @ x
    for bits in (2, 3, 4):
        e_rtn = float((x @ (w - rtn_quantize(w, bits).dequantize()).t()).pow(2).mean())
        e_gptq = float((x @ (w - gptq_quantize(w, h, bits).dequantize()).t()).pow(2).mean())
        assert e_gptq <= e_rtn
        assert e_gptq < 0.8 * e_rtn


# ----------------------------------------------------------------------------- the supernet
def test_apply_replaces_linears_and_drops_fp_weights():
    model = qfa_model()
    layers = qfa_layers(model)
    assert len(layers) == 2 * 6 + 2 * 10  # enc: q,k,v,o,wi,wo; dec: + cross-attention q,k,v,o
    assert state_of(model).units == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    for layer in layers.values():
        assert not layer.pending and layer.fp_weight is None
        assert set(layer.lora_A) == {"2", "3", "4"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    # no float copy of a quantized weight remains anywhere in the model
    assert not any(n.endswith(("q.weight", "wi.weight", "wo.weight")) for n in dict(model.named_parameters()))


def test_only_the_sampled_loras_change_in_a_step():
    model = qfa_model(period=6, seed=3)
    method = get_adapter("qfa")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(4):
        method.on_step(model, step)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        model(**batch(step)).loss.backward()
        opt.step()
        opt.zero_grad()
        for name, layer in qfa_layers(model).items():
            for key in layer.lora_A:
                changed = any(not torch.equal(before[f"{name}.lora_{ab}.{key}"], getattr(layer, f"lora_{ab}")[key])
                              for ab in "AB")
                assert changed == (key == str(layer.active_bits)), (step, name, key)


def test_shared_lora_is_used_by_every_bit_width():
    model = qfa_model(shared_lora=True)
    layer = next(iter(qfa_layers(model).values()))
    assert set(layer.lora_A) == {"shared"}
    get_adapter("qfa").on_step(model, 0)
    model(**batch()).loss.backward()
    assert layer.lora_A["shared"].grad is not None or layer.lora_B["shared"].grad is not None


def test_single_bit_width_is_a_qlora_style_run():
    model = qfa_model(bits=[4])
    assert state_of(model).config.sampling == "fixed"
    rec = get_adapter("qfa").on_step(model, 5)
    assert rec["qfa_mean_bits"] == 4.0
    assert all(set(layer.lora_A) == {"4"} for layer in qfa_layers(model).values())


def test_gptq_calibrates_on_first_forward_without_a_hook():
    model = qfa_model(quantizer="gptq")
    assert all(layer.pending for layer in qfa_layers(model).values())
    model(**batch())
    assert not any(layer.pending for layer in qfa_layers(model).values())
    assert state_of(model).quantized_with == "gptq"


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown QFA option 'bitz'"):
        qfa_model(bitz=[2])


# ----------------------------------------------------------------------------- sampling
def test_max_entropy_probs_hit_the_target_mean():
    for target in (2.0, 2.3, 3.0, 3.7, 4.0):
        p = max_entropy_probs(target, [2, 3, 4])
        assert abs(sum(p) - 1) < 1e-9
        assert abs(sum(pi * b for pi, b in zip(p, (2, 3, 4))) - target) < 1e-6
    assert max(abs(x - 1 / 3) for x in max_entropy_probs(3.0, [2, 3, 4])) < 1e-6


def test_triangular_wave():
    s = TriangularSchedule(2, 4, period=100)
    assert s.target(0) == 4 and s.target(50) == 2 and s.target(100) == 4
    assert abs(s.target(25) - 3) < 1e-9


def test_realised_mean_bits_follow_the_wave():
    sampler = BitSampler([f"l{i}" for i in range(200)], [2, 3, 4], mode="balanced", period=40, seed=0)
    devs = []
    for step in range(80):
        config = sampler.sample(step)
        realised = sum(config.values()) / len(config)
        devs.append(abs(realised - sampler.schedule.target(step)))
    assert max(devs) < 0.25
    # extremes of the wave are really visited (uniform sampling would stay near 3)
    lows = [sum(sampler.sample(20).values()) / 200 for _ in range(3)]
    assert all(v < 2.1 for v in lows)
    uniform = BitSampler([f"l{i}" for i in range(200)], [2, 3, 4], mode="uniform", seed=0)
    assert all(abs(sum(uniform.sample(s).values()) / 200 - 3) < 0.2 for s in (0, 20, 40))


def test_on_step_logs_realised_bits_history():
    model = qfa_model(period=4)
    recs = [get_adapter("qfa").on_step(model, s) for s in range(4)]
    assert [r["qfa_target_bits"] for r in recs] == [4.0, 3.0, 2.0, 3.0]
    assert recs[2]["qfa_mean_bits"] == 2.0  # target 2 → every layer at 2 bits
    assert len(state_of(model).history) == 4


# ----------------------------------------------------------------------------- configurations / memory
def test_parse_configuration_forms(tmp_path):
    model = qfa_model()
    units = state_of(model).units
    assert parse_configuration(model, "4,3,2,4") == dict(zip(units, [4, 3, 2, 4]))
    assert parse_configuration(model, "3") == {u: 3 for u in units}
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"config": dict(zip(units, [2, 2, 4, 4]))}))
    assert parse_configuration(model, str(f)) == dict(zip(units, [2, 2, 4, 4]))
    with pytest.raises(ConfigError, match="has 2 bit-widths"):
        parse_configuration(model, "4,3")
    with pytest.raises(ConfigError, match="bit-width 5"):
        parse_configuration(model, "5")


def test_memory_accounting_scales_with_bits():
    model = qfa_model()
    b2, b3, b4 = (weight_bytes(model, uniform_configuration(model, b)) for b in (2, 3, 4))
    assert b2 < b3 < b4
    n = sum(v["in"] * v["out"] for v in state_of(model).linears.values())
    groups = sum(v["out"] * v["in"] // 32 for v in state_of(model).linears.values())
    assert b3 == 3 * n // 8 + groups * 4
    assert avg_bits(model, uniform_configuration(model, 3)) == 3


# ----------------------------------------------------------------------------- save / export
def _trained(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for s in range(steps):
        get_adapter("qfa").on_step(model, s)
        model(**batch(s)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_supernet_save_load_roundtrip(tmp_path):
    model = _trained(qfa_model(period=3))
    method = get_adapter("qfa")
    method.save(model, tmp_path)
    loaded = method.load(tiny_t5(seed=9), tmp_path).eval()
    config = parse_configuration(model, "2,4,3,2")
    set_configuration(model, config)
    set_configuration(loaded, config)
    with torch.no_grad():
        assert torch.equal(model(**batch()).logits, loaded(**batch()).logits)
    assert (tmp_path / "qfa_bit_history.jsonl").exists()


def test_export_loads_and_matches_the_supernet(tmp_path):
    model = _trained(qfa_model(period=3))
    config = parse_configuration(model, "4,2,3,2")
    meta = export_subnet(model, config, tmp_path / "sub")
    deployed, _, dmeta = load_subnet(tmp_path / "sub")
    set_configuration(model, config)
    b = batch(7)
    with torch.no_grad():
        assert torch.allclose(model(**b).logits, deployed(**b).logits, atol=1e-6)
        g1 = model.generate(input_ids=b["input_ids"], max_new_tokens=6, do_sample=False)
        g2 = deployed.generate(input_ids=b["input_ids"], max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)
    # the deployed layers hold only the chosen bit-width and its LoRA
    for name, layer in qfa_layers(deployed).items():
        assert layer.bits == (dmeta["layer_bits"][name],) and list(layer.lora_A) == [str(layer.bits[0])]
    assert meta["weight_bytes"] == weight_bytes(model, config)
    fp_bytes = sum(v["in"] * v["out"] * 4 for v in meta["linears"].values())
    assert meta["weight_bytes"] < fp_bytes / 6  # ≤ 4-bit codes + group params vs fp32


# ----------------------------------------------------------------------------- search
def _synthetic_evaluator(model, weights):
    units = state_of(model).units

    def evaluate(config):  # a loss: each unit costs weights[u] per bit below 4
        return sum(weights[u] * (4 - config[u]) for u in units)
    return evaluate


@pytest.mark.parametrize("n_initial,exhaustive", [(100, True), (20, False)])
def test_search_ranks_sensitivity_and_respects_budget(tmp_path, n_initial, exhaustive):
    model = qfa_model()
    units = state_of(model).units
    weights = dict(zip(units, [1.0, 0.1, 0.5, 0.02]))
    result = search(model, _synthetic_evaluator(model, weights), Budget.parse("3"), metric_name="loss",
                    higher_is_better=False, n_initial=n_initial, n_refine=10, progress=False)
    assert result.exhaustive is exhaustive
    ranked = sorted(result.sensitivity, key=result.sensitivity.get, reverse=True)
    assert ranked[0] == units[0] and ranked[-1] == units[3]
    assert result.best is not None and result.best.avg_bits <= 3
    assert result.best.config[units[0]] == 4  # the most sensitive layer keeps its bits
    front = result.pareto()
    assert all(a.avg_bits <= b.avg_bits and a.score <= b.score for a, b in zip(front, front[1:]))
    paths = write_search_report(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["best"]["config"] == result.best.config and data["pareto"]
    assert "| config | avg bits |" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000


def test_budget_parsing():
    assert Budget.parse("3") == Budget("bits", 3.0)
    assert Budget.parse("2.5bits") == Budget("bits", 2.5)
    assert Budget.parse("0.05MB") == Budget("mb", 0.05)
    with pytest.raises(ConfigError):
        Budget.parse("lots")


def test_qfa_linear_forward_matches_dequantized_plus_lora():
    lin = torch.nn.Linear(40, 24)
    q = QFALinear(40, 24, (2, 3, 4), r=4, alpha=8, group_size=16, bias=lin.bias, weight=lin.weight)
    q.quantize_from(lin.weight)
    torch.nn.init.normal_(q.lora_B["3"])
    q.active_bits = 3
    x = torch.randn(5, 40)
    w3 = rtn_quantize(lin.weight, 3, 16).dequantize()
    expected = x @ w3.t() + lin.bias + 2.0 * (x @ q.lora_A["3"].t() @ q.lora_B["3"].t())
    assert torch.allclose(q(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------- end to end (spine + CLI)
@pytest.mark.slow
def test_train_search_export_eval_end_to_end(tmp_path, capsys):
    from pathlib import Path

    from instructmt.cli import main
    from instructmt.config import load_config
    from instructmt.evaluation.generation import generate
    from instructmt.models.loading import load_run
    from instructmt.training.trainer import train

    tasks = Path(__file__).resolve().parents[1] / "tasks" / "sample"
    run = tmp_path / "run"
    cfg = load_config(None, [f"output_dir={run}", f"data.tasks=[{tasks}]", "adapter.method=qfa", "max_steps=4",
                             "batch_size=4", "model.tiny_d_model=32", "model.tiny_vocab_size=300",
                             "data.max_instances_per_task=8", "data.max_source_length=96", "log_every=1",
                             "adapter.options={quantizer: gptq, period: 4}"])
    train(cfg)
    history = [json.loads(x) for x in (run / "model" / "qfa_bit_history.jsonl").read_text().splitlines()]
    assert [h["qfa_target_bits"] for h in history] == [4.0, 3.0, 2.0, 3.0]

    assert main(["qfa", "search", "--run", str(run), "--budget", "3", "--val-per-task", "1",
                 "--n-initial", "4", "--n-refine", "2", "--tasks", str(tasks)]) == 0
    report = json.loads((run / "qfa_search" / "qfa_search.json").read_text())
    assert report["best"]["avg_bits"] <= 3 and report["validation"]["instances"] == 14
    assert main(["qfa", "export", "--run", str(run), "--config", str(run / "qfa_search" / "qfa_search.json"),
                 "--output", str(tmp_path / "deploy")]) == 0
    assert "exported" in capsys.readouterr().out

    deployed, tok, meta = load_run(tmp_path / "deploy")  # loads like any run → `instructmt eval` works
    assert meta["method"] == "qfa_subnet"
    assert all(len(layer.bits) == 1 for layer in qfa_layers(deployed).values())
    supernet, _, _ = load_run(run)
    set_configuration(supernet, report["best"]["config"])
    ids = [tok("Rewrite in upper case: cat dog")["input_ids"]]
    assert generate(deployed, tok, "seq2seq", ids, max_new_tokens=5, show_progress=False) == \
        generate(supernet, tok, "seq2seq", ids, max_new_tokens=5, show_progress=False)


def test_loading_a_state_dict_skips_recalibration():
    trained = _trained(qfa_model(period=3))
    fresh = qfa_model(quantizer="gptq", period=3)  # pending: would calibrate on its first forward
    fresh.load_state_dict(trained.state_dict())   # e.g. accelerate's checkpoint resume
    assert not any(layer.pending for layer in qfa_layers(fresh).values())
    config = parse_configuration(trained, "3,2,4,3")
    set_configuration(trained, config)
    set_configuration(fresh.eval(), config)
    with torch.no_grad():
        assert torch.equal(trained(**batch()).logits, fresh(**batch()).logits)


def test_quantized_base_reuses_one_gptq_calibration(tmp_path):
    """One GPTQ pass, many runs: a fresh wrap with `quantized_base` gets the same codes, needs no
    calibration, and a single-bit (QLoRA-style) run takes just its bit-width from the file."""
    src = qfa_model(quantizer="gptq")
    src(**batch())  # calibrates
    get_adapter("qfa").save(src, tmp_path / "base")
    for bits in ([2, 3, 4], [3]):
        model = qfa_model(quantizer="gptq", bits=bits, quantized_base=str(tmp_path / "base"))
        assert not any(layer.pending for layer in qfa_layers(model).values())
        assert state_of(model).quantized_with == "gptq"
        for name, layer in qfa_layers(model).items():
            for b in bits:
                assert torch.equal(layer.quantized(b).packed, qfa_layers(src)[name].quantized(b).packed)
    with pytest.raises(ConfigError, match="quantized_base"):
        qfa_model(quantized_base=str(tmp_path / "missing"))


def test_dequantized_weight_cache_gives_identical_outputs():
    from instructmt.adapters.qfa import cache_dequantized_weights
    model = _trained(qfa_model(period=3))
    set_configuration(model, parse_configuration(model, "2,4,3,2"))
    with torch.no_grad():
        ref = model(**batch()).logits
        cache_dequantized_weights(model)
        first, second = model(**batch()).logits, model(**batch()).logits
        set_configuration(model, parse_configuration(model, "4,4,4,4"))
        other = model(**batch()).logits
        cache_dequantized_weights(model, False)
        uncached = model(**batch()).logits
    assert torch.equal(ref, first) and torch.equal(first, second)
    assert torch.equal(other, uncached) and not torch.equal(other, ref)
    assert all(layer._dequant_cache is None for layer in qfa_layers(model).values())
