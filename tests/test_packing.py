"""Packed (padding-free) causal batches train exactly what padded batches train: same loss, same
LoRA gradients, with our per-example SDPA and with transformers' own packed-SDPA mask."""

from __future__ import annotations

import pytest
import torch

from instructmt.data.collator import CausalCollator
from instructmt.data.packing import PackedCausalCollator, batch_to_device, is_packed
from instructmt.models.packed_attention import PACKED_ATTENTION, enable_packed_attention


def _tiny_llama(attn: str = "sdpa", vocab: int = 97):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=0, attn_implementation=attn)
    model = LlamaForCausalLM(cfg)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, init_lora_weights=False))
    return model.double()


def _rows(seed: int = 1, n: int = 4, vocab: int = 97):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        src = torch.randint(1, vocab, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
        tgt = torch.randint(1, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        rows.append({"source_ids": src, "labels": tgt, "task": "t"})
    return rows


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_packed_collator_layout():
    rows = [{"source_ids": [5, 6, 7], "labels": [8, 2], "task": "a"},
            {"source_ids": [9, 10], "labels": [11], "task": "a"}]
    b = PackedCausalCollator()(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 2, 9, 10, 11]]
    assert b["labels"].tolist() == [[-100, -100, -100, 8, 2, -100, -100, 11]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert b["cu_seq_lens_q"].tolist() == [0, 5, 8] and b["max_length_q"] == 5
    assert is_packed(b) and not is_packed(CausalCollator(0)(rows))
    assert batch_to_device(b, "cpu")["max_length_k"] == 5


@pytest.mark.parametrize("attn", ["ours", "transformers_sdpa"])
def test_packed_equals_padded(attn):
    rows = _rows()
    padded = CausalCollator(pad_token_id=0)(rows)
    packed = PackedCausalCollator()(rows)
    model = _tiny_llama()
    ref_loss, ref_grads = _loss_and_grads(model, padded)
    if attn == "ours":
        assert enable_packed_attention(model) == PACKED_ATTENTION
    else:  # transformers builds a block-diagonal mask from the restarting position ids, but only
        # without a KV cache: with the config's default use_cache=True it leaks across examples
        packed = {k: v for k, v in packed.items() if not k.startswith(("cu_seq", "max_length"))}
        packed["use_cache"] = False
    loss, grads = _loss_and_grads(model, packed)
    assert torch.allclose(loss, ref_loss, atol=1e-10), (loss, ref_loss)
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-10, rtol=1e-7), name


def test_packed_attention_keeps_padded_batches_and_generation():
    """After switching, ordinary padded batches and generation behave as with plain SDPA."""
    rows = _rows(seed=3)
    padded = CausalCollator(pad_token_id=0)(rows)
    model = _tiny_llama()
    ref = model(**padded).loss.detach()
    x = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()
    gen_ref = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    enable_packed_attention(model)
    assert torch.allclose(model(**padded).loss.detach(), ref, atol=1e-12)
    gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.tolist() == gen_ref.tolist()


def test_without_isolation_examples_leak():
    """Sanity check that the tests above can fail: a packed row without restarting positions or
    segment bounds attends across examples and gives a different loss."""
    rows = _rows()
    model = _tiny_llama()
    ref = model(**CausalCollator(pad_token_id=0)(rows)).loss.detach()
    packed = PackedCausalCollator()(rows)
    leaky = {"input_ids": packed["input_ids"], "labels": packed["labels"]}
    assert not torch.allclose(model(**leaky).loss.detach(), ref, atol=1e-6)


def test_trainer_packed_and_chunked_losses_equal_padded(tmp_path, repo):
    """The trainer's defaults (packed rows, target-only chunked loss) train exactly what padded
    batches with the model's own loss train: same per-step losses and same final adapter."""
    from safetensors.torch import load_file

    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import DataConfig, ModelConfig, TrainConfig
    from instructmt.training.trainer import train

    def run(name, **kw):
        cfg = TrainConfig(
            output_dir=str(tmp_path / name),
            model=ModelConfig(name_or_path="tiny-llama", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=300),
            data=DataConfig(tasks=[str(repo / "tasks" / "sample")], encoding="def", max_instances_per_task=8,
                            max_source_length=48, max_target_length=8),
            adapter=AdapterConfig(method="lora", r=4), max_steps=3, batch_size=4, learning_rate=1e-2,
            log_every=1, seed=3, **kw)
        res = train(cfg)
        return res.losses, load_file(str(res.model_dir / "adapter_model.safetensors"))

    ref_losses, ref_w = run("padded", packing=False, loss_chunk_size=0)
    losses, w = run("packed")
    assert losses == pytest.approx(ref_losses, abs=1e-5)
    for k in ref_w:
        assert torch.allclose(w[k], ref_w[k], atol=1e-5), k
