"""Tokenization cache: a second call with the same inputs loads from disk instead of re-tokenizing;
a changed tokenizer, encoding, length limit or instance is a miss."""

import dataclasses

import pytest

from instructmt.data import tokenize as tk
from instructmt.data.tokenize import EncodeSpec, tokenize_pairs
from instructmt.tasks.registry import load_path


@pytest.fixture(scope="module")
def tasks(repo):
    return [t for t in load_path(str(repo / "tasks" / "sample"))][:3]


@pytest.fixture(scope="module")
def tokenizers(tasks):
    from instructmt.models.tiny import build_tokenizer
    texts = [t.definition for t in tasks] + [i.input for t in tasks for i in t.instances] + \
        [o for t in tasks for i in t.instances for o in i.outputs] + ["Definition: Input: Output: Positive Example"] * 5
    return build_tokenizer(texts, vocab_size=200), build_tokenizer(texts, vocab_size=150)


@pytest.fixture
def count_encodes(monkeypatch):
    calls = []
    real = tk.render_and_encode_sources

    def counting(pairs, tokenizer, spec):
        calls.append(len(pairs))
        return real(pairs, tokenizer, spec)
    monkeypatch.setattr(tk, "render_and_encode_sources", counting)
    return calls


def _pairs(tasks, per_task=4):
    return [(t, i) for t in tasks for i in t.instances[:per_task]]


SPEC = EncodeSpec("seq2seq", "def", max_source_length=64, max_target_length=12)


def test_second_call_loads_from_cache_with_identical_content(tasks, tokenizers, tmp_path, count_encodes):
    tok = tokenizers[0]
    first = tokenize_pairs(_pairs(tasks), tok, SPEC, cache_dir=tmp_path)
    second = tokenize_pairs(_pairs(tasks), tok, SPEC, cache_dir=tmp_path)
    assert count_encodes == [12]  # tokenized once
    assert second.to_dict() == first.to_dict()
    assert first["task"][0] == tasks[0].name and len(first) == 12
    assert len(list((tmp_path / "tokenized").iterdir())) == 1


def test_changed_inputs_re_tokenize(tasks, tokenizers, tmp_path, count_encodes):
    tok, other_tok = tokenizers
    tokenize_pairs(_pairs(tasks), tok, SPEC, cache_dir=tmp_path)
    assert len(count_encodes) == 1
    tokenize_pairs(_pairs(tasks), other_tok, SPEC, cache_dir=tmp_path)  # different tokenizer
    assert len(count_encodes) == 2
    tokenize_pairs(_pairs(tasks), tok, dataclasses.replace(SPEC, encoding="def+pos2"), cache_dir=tmp_path)
    assert len(count_encodes) == 3
    tokenize_pairs(_pairs(tasks), tok, dataclasses.replace(SPEC, max_source_length=32), cache_dir=tmp_path)
    assert len(count_encodes) == 4

    t0 = tasks[0]
    changed_inst = dataclasses.replace(t0.instances[0], outputs=["no"])
    pairs = _pairs(tasks)
    pairs[0] = (t0, changed_inst)
    ds = tokenize_pairs(pairs, tok, SPEC, cache_dir=tmp_path)  # one instance's reference changed
    assert len(count_encodes) == 5
    assert ds["target_ids"][0][0] == tok("no", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    changed_task = dataclasses.replace(t0, definition=t0.definition + " Be brief.")
    tokenize_pairs([(changed_task, i) for _, i in _pairs(tasks)[:4]] + _pairs(tasks)[4:], tok, SPEC,
                   cache_dir=tmp_path)  # a task definition changed: the prompts change
    assert len(count_encodes) == 6
    # and every earlier variant is still a hit
    tokenize_pairs(_pairs(tasks), other_tok, SPEC, cache_dir=tmp_path)
    tokenize_pairs(pairs, tok, SPEC, cache_dir=tmp_path)
    assert len(count_encodes) == 6


def test_changed_eos_token_is_a_miss(tasks, tokenizers, tmp_path, count_encodes):
    import copy
    tok = tokenizers[0]
    tokenize_pairs(_pairs(tasks), tok, SPEC, cache_dir=tmp_path)
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok2.unk_token  # targets end with eos_token_id: cached targets would be wrong
    ds = tokenize_pairs(_pairs(tasks), tok2, SPEC, cache_dir=tmp_path)
    assert len(count_encodes) == 2
    assert all(t[-1] == tok2.eos_token_id for ts in ds["target_ids"] for t in ts)


def test_no_cache_dir_never_writes_and_default_follows_the_module_setting(tasks, tokenizers, tmp_path,
                                                                         count_encodes, monkeypatch):
    tok = tokenizers[0]
    tokenize_pairs(_pairs(tasks), tok, SPEC, cache_dir=None)
    tokenize_pairs(_pairs(tasks), tok, SPEC, cache_dir=None)
    assert len(count_encodes) == 2
    monkeypatch.setattr(tk, "DEFAULT_CACHE", tmp_path / "redirected")
    tokenize_pairs(_pairs(tasks), tok, SPEC)
    tokenize_pairs(_pairs(tasks), tok, SPEC)
    assert len(count_encodes) == 3
    assert (tmp_path / "redirected" / "tokenized").is_dir()


def test_chunked_tokenization_equals_one_call(tasks, tokenizers, monkeypatch):
    """The mixture is tokenized in chunks (bounded memory); the rows are the same as in one call."""
    whole = tokenize_pairs(_pairs(tasks), tokenizers[0], SPEC, cache_dir=None).to_dict()
    monkeypatch.setattr(tk, "TOKENIZE_CHUNK", 5)  # 12 pairs: chunks of 5, 5, 2
    assert tokenize_pairs(_pairs(tasks), tokenizers[0], SPEC, cache_dir=None).to_dict() == whole
