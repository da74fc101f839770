"""Shared-prefix greedy decoding gives what `model.generate` gives one prompt at a time."""

from __future__ import annotations

import pytest
import torch

from instructmt.evaluation.prefix_generation import generate_token_ids, group_by_prefix


def _tiny_llama(vocab: int = 61):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return LlamaForCausalLM(cfg).double().eval()


def _prompts():
    g = torch.Generator().manual_seed(2)
    shared = torch.randint(2, 61, (24,), generator=g).tolist()
    other = torch.randint(2, 61, (20,), generator=g).tolist()
    out = []
    for n in (1, 3, 6, 2, 9):  # one task: a shared definition, instances of different lengths
        out.append(shared + torch.randint(2, 61, (n,), generator=g).tolist())
    for n in (4, 1):
        out.append(other + torch.randint(2, 61, (n,), generator=g).tolist())
    out.append(torch.randint(2, 61, (7,), generator=g).tolist())  # shares nothing
    return out


def _naive(model, prompts, stop, max_new):
    res = []
    for p in prompts:
        x = torch.tensor([p])
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                           pad_token_id=0, eos_token_id=stop)
        res.append(y[0, len(p):].tolist())
    return res


def test_group_by_prefix_keeps_a_suffix_token():
    groups = group_by_prefix([[5] * 20 + [1], [5] * 20 + [2, 3], [5] * 20, [7, 8]], min_prefix=4)
    by_members = {tuple(sorted(g.members)): g.prefix for g in groups}
    assert by_members[(0, 1, 2)] == [5] * 19  # the shortest prompt keeps its last token
    assert by_members[(3,)] == []
    # a short prefix common to all (a chat template's system turn) does not merge two tasks
    system = [9] * 20
    task_a, task_b = system + [1] * 60, system + [2] * 60
    groups = group_by_prefix([task_a + [3], task_b + [4], task_a + [5, 6], task_b + [7]])
    assert sorted(tuple(sorted(g.members)) for g in groups) == [(0, 2), (1, 3)]
    assert all(len(g.prefix) == 80 for g in groups)


@pytest.mark.slow  # ~40 s on the shared 2-core machine (the first `generate` call's imports)
def test_shared_prefix_decoding_equals_one_prompt_at_a_time():
    model = _tiny_llama()
    prompts = _prompts()
    # pick a stop token that some prompts emit early, so rows finish at different steps
    stop = _naive(model, prompts[1:2], stop=None, max_new=8)[0][2]
    ref = _naive(model, prompts, stop=stop, max_new=8)
    assert len({len(r) for r in ref}) > 1, "test needs rows that stop at different steps"
    # batch 3: some groups decode alone, some merged; batch 8: every group in one decode batch,
    # caches of different lengths left-padded together
    for share, batch in ((True, 3), (True, 8), (False, 3)):
        got = generate_token_ids(model, prompts, pad_id=0, stop_ids={stop}, batch_size=batch, max_new_tokens=8,
                                 share_prefix=share)
        assert got == ref, (share, batch)


def test_newline_stop():
    model = _tiny_llama()
    prompts = _prompts()
    free_run = _naive(model, prompts, stop=None, max_new=8)
    newline = free_run[0][3]  # pretend this token is a newline
    got = generate_token_ids(model, prompts, pad_id=0, stop_ids=set(), newline_ids=frozenset({newline}),
                             batch_size=4, max_new_tokens=8)
    for row, full in zip(got, free_run):
        # stops at the first newline after the first token, else runs like the free run
        cut = next((k + 1 for k, t in enumerate(full) if t == newline and k > 0), len(full))
        assert row == full[:cut]


def _reference_attention(q, keys, values, visible):
    """Plain softmax attention of one row: q (heads, q, d); keys/values (kv_heads, n, d)."""
    per_kv = q.shape[0] // keys.shape[0]
    k = keys.repeat_interleave(per_kv, 0)
    v = values.repeat_interleave(per_kv, 0)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v


def test_decode_attention_equals_attention_over_prefix_plus_tail():
    import types

    from instructmt.evaluation.shared_prefix_attention import (SharedPrefixLayout, TailBucket,
                                                                shared_prefix_attention)
    g = torch.Generator().manual_seed(0)
    kv, heads, d, new = 2, 6, 8, 3
    prefix_lens = [5, 9, 0]              # the third group has no shared prefix
    group_of_row = [0, 1, 0, 2, 1, 1]    # rows in any order; slots are assigned per group
    tails = [7, 6, 4, 4, 2, 1]           # each row's own suffix, in two buckets: rows 0-1 and 2-5
    bucket_rows, widths = [range(0, 2), range(2, 6)], [7, 4]
    rows, longest = len(group_of_row), max(prefix_lens)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    pk, pv = randn(3, kv, longest, d), randn(3, kv, longest, d)
    own_k = [randn(kv, n, d) for n in tails]
    own_v = [randn(kv, n, d) for n in tails]
    slots, seen, slot_of_row = 3, [0, 0, 0], []
    for grp in group_of_row:
        slot_of_row.append(grp * slots + seen[grp])
        seen[grp] += 1
    hidden = torch.tensor([[j >= prefix_lens[grp] for j in range(longest)] for grp in group_of_row])
    prefix_bias = torch.zeros(hidden.shape, dtype=torch.float64).masked_fill(hidden, float("-inf"))
    buckets = []
    for rng, width in zip(bucket_rows, widths):
        k = torch.full((len(rng), kv, width + new + 1, d), 1e3, dtype=torch.float64)  # unwritten: never read
        v = k.clone()
        pad = torch.zeros(len(rng), width + new + 1, dtype=torch.bool)
        for i, r in enumerate(rng):
            k[i, :, :width - tails[r]] = v[i, :, :width - tails[r]] = 0
            k[i, :, width - tails[r]:width], v[i, :, width - tails[r]:width] = own_k[r], own_v[r]
            pad[i, :width - tails[r]] = True
        bias = torch.zeros(pad.shape, dtype=torch.float64).masked_fill(pad, float("-inf"))
        buckets.append(TailBucket(rng.start, rng.stop, width, [k], [v], bias[:, None, None, None]))
    layout = SharedPrefixLayout([pk], [pv], torch.tensor(slot_of_row), slots, prefix_bias[:, None, None, None],
                                buckets)
    for step in range(new):  # each step appends one key/value per row, then attends to everything so far
        q, nk, nv = randn(rows, heads, 1, d), randn(rows, kv, 1, d), randn(rows, kv, 1, d)
        out, _ = shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q, nk, nv, None, scaling=d ** -0.5,
                                         shared_prefix=layout)
        layout.generated += 1
        for r, grp in enumerate(group_of_row):
            own_k[r], own_v[r] = torch.cat([own_k[r], nk[r]], 1), torch.cat([own_v[r], nv[r]], 1)
            p = prefix_lens[grp]
            keys, values = torch.cat([pk[grp, :, :p], own_k[r]], 1), torch.cat([pv[grp, :, :p], own_v[r]], 1)
            ref = _reference_attention(q[r], keys, values, torch.ones(1, keys.shape[1], dtype=torch.bool))
            torch.testing.assert_close(out[r].transpose(0, 1), ref, rtol=1e-10, atol=1e-10)
    # finished rows leave: the others attend as before
    layout.keep_rows(torch.tensor([0, 3, 5]))
    assert [(b.start, b.end) for b in layout.buckets] == [(0, 1), (1, 3)]
    q, nk, nv = randn(3, heads, 1, d), randn(3, kv, 1, d), randn(3, kv, 1, d)
    out, _ = shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q, nk, nv, None, scaling=d ** -0.5,
                                     shared_prefix=layout)
    for i, r in enumerate([0, 3, 5]):
        p = prefix_lens[group_of_row[r]]
        keys = torch.cat([pk[group_of_row[r], :, :p], own_k[r], nk[i]], 1)
        values = torch.cat([pv[group_of_row[r], :, :p], own_v[r], nv[i]], 1)
        ref = _reference_attention(q[i], keys, values, torch.ones(1, keys.shape[1], dtype=torch.bool))
        torch.testing.assert_close(out[i].transpose(0, 1), ref, rtol=1e-10, atol=1e-10)


def test_packed_prefill_attention_equals_attention_per_piece():
    import types

    from instructmt.evaluation.shared_prefix_attention import PackedPrefill, Piece, shared_prefix_attention
    g = torch.Generator().manual_seed(1)
    kv, heads, d = 2, 6, 8
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    prefixes = [(randn(1, kv, 5, d), randn(1, kv, 5, d)), (randn(1, kv, 3, d), randn(1, kv, 3, d)), None]
    spans = [(0, 4, 0), (4, 5, 1), (5, 11, 0), (11, 14, 2)]  # (start, end, prefix); the last has none
    q, k, v = randn(1, heads, 14, d), randn(1, kv, 14, d), randn(1, kv, 14, d)
    layout = PackedPrefill([Piece(s, e, *([[prefixes[p][0]], [prefixes[p][1]]] if prefixes[p] else [[], []]))
                            for s, e, p in spans])
    out, _ = shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q, k, v, None, scaling=d ** -0.5,
                                     shared_prefix=layout)
    assert layout.keys[0] is k and layout.values[0] is v  # captured for the caller: no cache needed
    for s, e, p in spans:
        pk, pv = prefixes[p] if prefixes[p] else (k[:, :, :0], v[:, :, :0])
        keys, values = torch.cat([pk[0], k[0, :, s:e]], 1), torch.cat([pv[0], v[0, :, s:e]], 1)
        n, plen = e - s, pk.shape[2]
        visible = torch.cat([torch.ones(n, plen, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()], 1)
        ref = _reference_attention(q[0, :, s:e], keys, values, visible)
        torch.testing.assert_close(out[0, s:e].transpose(0, 1), ref, rtol=1e-10, atol=1e-10)


def test_tail_buckets_minimise_padding_plus_bucket_cost():
    from instructmt.evaluation.shared_prefix_generation import tail_buckets
    assert tail_buckets([10, 9, 9, 2, 1], extra=0, bucket_cells=0) == [range(0, 1), range(1, 3), range(3, 4),
                                                                       range(4, 5)]
    assert tail_buckets([10, 9, 9, 2, 1], extra=0, bucket_cells=5) == [range(0, 3), range(3, 5)]
    assert tail_buckets([10, 9, 9, 2, 1], extra=0, bucket_cells=100) == [range(0, 5)]
    assert tail_buckets([], extra=3, bucket_cells=5) == []


def _prompts_with_common_root():
    """Two tasks whose prompts all open with the same 18-token system turn."""
    g = torch.Generator().manual_seed(5)
    system = torch.randint(2, 61, (18,), generator=g).tolist()
    task_a, task_b = (system + torch.randint(2, 61, (n,), generator=g).tolist() for n in (30, 26))
    return [task + torch.randint(2, 61, (n,), generator=g).tolist()
            for task, n in ((task_a, 3), (task_b, 5), (task_a, 1), (task_b, 2), (task_a, 7), (task_b, 4))]


@pytest.mark.slow  # several generate loops on a tiny model
def test_every_decoding_layout_equals_one_prompt_at_a_time(monkeypatch):
    from instructmt.evaluation import prefix_generation, shared_prefix_generation
    model = _tiny_llama()
    for prompts in (_prompts(), _prompts_with_common_root()):
        stop = _naive(model, prompts[1:2], stop=None, max_new=8)[0][2]
        ref = _naive(model, prompts, stop=stop, max_new=8)

        def run(**kw):
            return generate_token_ids(model, prompts, pad_id=0, stop_ids={stop}, max_new_tokens=8, **kw)
        assert run(batch_size=16) == ref                          # every row in one decode batch
        assert run(batch_size=2, decode_batch_size=3) == ref      # groups split over decode batches
        monkeypatch.setattr(shared_prefix_generation, "PREFILL_TOKENS", 6)
        assert run(batch_size=16) == ref                          # suffixes packed a few at a time
        monkeypatch.undo()
        monkeypatch.setattr(shared_prefix_generation, "BUCKET_CELLS", 0)
        assert run(batch_size=16) == ref                          # a tail bucket per suffix length
        monkeypatch.undo()
        monkeypatch.setattr(prefix_generation, "supports_shared_prefix_attention", lambda m: False)
        assert run(batch_size=3) == ref                           # the copy-the-prefix fallback
        monkeypatch.undo()
    assert model.config._attn_implementation != "instructmt_shared_prefix"  # switched back


def test_peft_lora_model_decodes_like_its_generate():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False)).eval()
    prompts = _prompts_with_common_root()
    ref = _naive(model, prompts, stop=None, max_new=6)
    assert generate_token_ids(model, prompts, pad_id=0, stop_ids=set(), max_new_tokens=6) == ref


def test_attention_switch_is_restored_on_error():
    from instructmt.evaluation.shared_prefix_attention import shared_prefix_attention_on
    model = _tiny_llama()
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError):
        with shared_prefix_attention_on(model):
            assert model.config._attn_implementation == "instructmt_shared_prefix"
            # a call without a layout is plain SDPA: same logits as before the switch
            x = torch.tensor([[3, 4, 5, 6]])
            inside = model(input_ids=x).logits
            raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    torch.testing.assert_close(inside, model(input_ids=x).logits)


def test_which_models_get_shared_prefix_attention():
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config

    from instructmt.evaluation.shared_prefix_attention import supports_shared_prefix_attention as ok
    small = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
    assert ok(_tiny_llama())
    assert ok(type("M", (), {"config": Qwen2Config(**small)})())            # no sliding window by default
    assert not ok(MistralForCausalLM(MistralConfig(**small, sliding_window=8)))  # windowed attention differs
    assert not ok(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)))


def test_edge_sizes():
    model = _tiny_llama()
    prompts = _prompts_with_common_root()
    assert generate_token_ids(model, [], pad_id=0, stop_ids=set(), max_new_tokens=4) == []
    ref = _naive(model, prompts, stop=None, max_new=1)
    assert generate_token_ids(model, prompts, pad_id=0, stop_ids=set(), max_new_tokens=1) == ref
    single = [[5]]  # a one-token prompt shares nothing: its whole prompt is its suffix
    assert generate_token_ids(model, single, pad_id=0, stop_ids=set(), max_new_tokens=3) == \
        _naive(model, single, stop=None, max_new=3)
