"""Smoke tests of the benchmark scripts' measuring pieces (the full runs live in scripts/)."""

import importlib.util
import sys

import pytest
import torch


def _load(repo, name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", repo / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_meter_counts_real_tokens_of_the_timed_window_only(repo):
    from instructmt.data.collator import Seq2SeqCollator
    bench = _load(repo, "bench_train")
    meter = bench.Meter("seq2seq", "cpu", warmup=1, steps=3)
    collate = meter.wrap_collator(Seq2SeqCollator(pad_token_id=0))
    rows = lambda n_src, n_tgt: [{"source_ids": [5] * n_src, "labels": [6] * n_tgt, "task": "t"},  # noqa: E731
                                 {"source_ids": [5] * 2, "labels": [6], "task": "t"}]
    for n in (10, 4, 6, 8):  # the 4th batch is collated ahead but never trained (max steps 3)
        collate(rows(n, 3))
        meter.on_step()
    res = meter.result()
    # batches 2 and 3 (after the warm-up step): (4+2 + 3+1) and (6+2 + 3+1) real of (8+6) and (12+6)
    assert res["real_tokens"] == 10 + 12 and res["padded_tokens"] == 14 + 18
    assert res["steps_timed"] == 2 and res["padding_frac"] == pytest.approx(1 - 22 / 32)
    assert res["peak_rss_mb"] > 0 and res["real_tok_s_cpu"] > 0


def test_lora_flops_per_token_counts_the_llama_matmuls(repo, tmp_path):
    from transformers import LlamaConfig
    bench = _load(repo, "bench_train")
    LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(str(tmp_path))
    per_layer = 16 * 16 * 2 + 16 * 8 * 2 + 3 * 16 * 32
    assert bench.lora_flops_per_token(tmp_path, mean_len=10) == 4 * (2 * per_layer + 16 * 100) + 8 * 2 * 16 * 10
    cfg = bench.llama_1b_config(1000)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (2048, 16, 128256)


@pytest.mark.slow
def test_batched_sorted_generation_matches_the_naive_loop(repo):
    from transformers import T5Config, T5ForConditionalGeneration

    from instructmt.evaluation.generation import generate
    from instructmt.models.tiny import build_tokenizer
    bench = _load(repo, "bench_eval")
    texts = ["the cat sat on the mat", "numbers 1 2 3 4 5", "a dog ran far away", "Definition: Input: Output:"] * 5
    tok = build_tokenizer(texts, vocab_size=60)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, dropout_rate=0.0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))
    sources = [tok(t)["input_ids"] for t in ["the cat", "numbers 1 2 3 4 5 and a dog ran far", "a dog", "sat on the mat"]]
    naive = bench.naive_generate(model, tok, sources, max_new_tokens=5)
    assert generate(model, tok, "seq2seq", sources, batch_size=3, max_new_tokens=5, show_progress=False) == naive
    assert generate(model, tok, "seq2seq", sources, batch_size=3, max_new_tokens=5, sort_by_length=False,
                    show_progress=False) == naive
    lens = [len(s) for s in sources]
    # sorted: [longest, 3 next] then [shortest]; unsorted: first three together
    assert bench.padding_fraction(sources, 3, sort=True) < bench.padding_fraction(sources, 3, sort=False)
    assert bench.padding_fraction(sources, 1, sort=True) == 0.0 and max(lens) > min(lens)
