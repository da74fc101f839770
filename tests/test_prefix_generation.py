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
