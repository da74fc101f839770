"""Property-based tests (hypothesis): loaders fail only with TaskFormatError, prompts of any text and
length stay within the token budget, and the metrics keep their bounds and invariants."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from instructmt.data.tokenize import EncodeSpec, encode_sources, source_length_fn
from instructmt.errors import TaskFormatError
from instructmt.evaluation.metrics import get_metric, rougeL_instance, sni_exact_match_instance
from instructmt.prompts.render import PromptRenderer, parse_encoding
from instructmt.tasks.natural_instructions import load_sni_file, sni_task_from_dict, tasks_from_records
from instructmt.tasks.schema import Example, Instance, Task

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=25)  # the slowest strategies / metrics

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
SNI_KEYS = ["Definition", "Instances", "Positive Examples", "Negative Examples", "Categories", "Input_language",
            "input", "output", "id", "explanation"]


def valid_sni() -> dict:
    return {"Definition": ["Output the last word."], "Categories": ["Program Execution"],
            "Positive Examples": [{"input": "a b", "output": "b", "explanation": "last"}],
            "Negative Examples": [], "Instances": [{"id": "i-0", "input": "a b", "output": ["b"]}]}


# --- loaders ---------------------------------------------------------------------------------
@FEWER
@given(st.dictionaries(st.sampled_from(SNI_KEYS) | st.text(max_size=8), json_values, max_size=6) | json_values)
def test_sni_dict_of_anything_gives_a_task_or_task_format_error(data):
    try:
        task = sni_task_from_dict(data, name="task1_prop", path="prop.json")
    except TaskFormatError as e:
        assert "prop.json" in str(e)
    else:
        assert isinstance(task, Task) and task.instances
        assert all(isinstance(o, str) for i in task.instances for o in i.outputs)


@SETTINGS
@given(st.data())
def test_sni_dict_with_one_field_replaced_gives_a_task_or_task_format_error(data):
    """Near-valid files are the common case: one field of a good task replaced by anything."""
    d = valid_sni()
    where = data.draw(st.sampled_from(["Definition", "Categories", "Positive Examples", "Instances",
                                       "Instances.0", "Instances.0.input", "Instances.0.output",
                                       "Instances.0.id", "Positive Examples.0.output"]))
    value = data.draw(json_values)
    node = d
    parts = where.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    try:
        task = sni_task_from_dict(d, name="task2_prop", path="near.json")
    except TaskFormatError as e:
        assert "near.json" in str(e) and "task2_prop" in str(e)
    else:
        assert task.name == "task2_prop"


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["task", "input", "output", "outputs", "id", "definition",
                                                 "categories", "positive_examples"]), json_values, max_size=6)
                | json_values, max_size=5))
def test_flat_records_of_anything_give_tasks_or_task_format_error(records):
    try:
        tasks = tasks_from_records(records if isinstance(records, list) else [records], path="recs.jsonl")
    except TaskFormatError as e:
        assert "recs.jsonl" in str(e)
    else:
        assert tasks and all(t.instances for t in tasks)


_TMP = Path(tempfile.mkdtemp(prefix="instructmt-props-"))


@SETTINGS
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_sni_file_of_any_bytes_gives_a_task_or_task_format_error(raw):
    path = _TMP / "task3_bytes.json"
    path.write_bytes(raw)
    try:
        load_sni_file(path)
    except TaskFormatError as e:
        assert str(path) in str(e)


# files of each family: a valid first line (so the format is detected), then anything
FAMILY_HEADS = {
    "sst.csv": "label,sentence\n", "chebi.txt": "CID\tSMILES\tdescription\n",
    "reactions.csv": "id,class,reactants>reagents>production\n",
    "nli.jsonl": '{"sentence1": "a", "sentence2": "b", "gold_label": "neutral"}\n',
    "actions.jsonl": '{"paragraph": "a", "actions": "b"}\n',
    "squad.json": '{"data": [{"paragraphs": [{"context": "c", "qas": ',
    "records.jsonl": '{"task": "t", "input": "a", "output": "b"}\n',
}
family_tails = st.lists(st.sampled_from(list('a1,\t>\n"{}[]:. -') + ['"answers"', '"question"', '"text"', '"id"',
                                                                       "null", "5", '"x"', "\xe9"]),
                        max_size=40).map("".join)


@SETTINGS
@given(st.sampled_from(sorted(FAMILY_HEADS)), family_tails)
def test_family_files_with_any_body_give_tasks_or_task_format_error(name, body):
    from instructmt.tasks.registry import load_path
    path = _TMP / name
    path.write_text(FAMILY_HEADS[name] + body, encoding="utf-8")
    try:
        tasks = load_path(path)
    except TaskFormatError as e:
        assert str(path) in str(e)
    else:
        assert all(t.instances for t in tasks)


# --- prompt renderer within the token budget -------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from instructmt.models.tiny import build_tokenizer
    corpus = ["Definition: Positive Example Input: Output: Explanation: Now complete the following example -",
              "The quick brown fox jumps over the lazy dog 0123456789.", "Ünïcödé ßtrings ünd 漢字 テキスト 😀"] * 5
    return build_tokenizer(corpus, vocab_size=120)


any_text = st.text(max_size=80) | st.builds(lambda s, k: s * k, st.text(min_size=1, max_size=12),
                                            st.integers(1, 300))  # up to a few thousand characters
examples = st.lists(st.builds(Example, input=any_text, output=any_text, explanation=any_text), max_size=3)


@SETTINGS
@given(definition=any_text, inp=any_text, pos=examples, neg=examples, budget=st.sampled_from([8, 32, 128, 512]),
       encoding=st.sampled_from(["def", "def+pos2", "def+pos2+neg2+expl", "pos1", "name+def+pos1"]),
       kind=st.sampled_from(["seq2seq", "causal"]))
def test_prompts_of_any_text_fit_the_token_budget(tokenizer, definition, inp, pos, neg, budget, encoding, kind):
    task = Task(name="task4_prop", family="natural_instructions", definition=definition,
                instances=[Instance(id="i", input=inp, outputs=["x"])], positive_examples=pos, negative_examples=neg)
    length = source_length_fn(tokenizer)
    renderer = PromptRenderer(encoding, length_fn=length, max_source_length=budget)
    prompt = renderer.render(task, task.instances[0])
    assert isinstance(prompt, str) and inp.strip() in prompt  # the template trims, as Tk-Instruct does
    no_examples = replace(parse_encoding(encoding), num_pos=0, num_neg=0)
    bare = PromptRenderer(no_examples).render(task, task.instances[0])
    if length(bare) <= budget:  # examples are only added while the prompt still fits
        assert length(prompt) <= budget
    ids = encode_sources([prompt], tokenizer, EncodeSpec(kind, encoding, budget, 8))[0]
    assert 0 < len(ids) <= budget
    if kind == "seq2seq":
        assert ids[-1] == tokenizer.eos_token_id  # truncation keeps the end-of-sequence token


# --- metrics ---------------------------------------------------------------------------------
words = st.lists(st.sampled_from(["the", "cat", "Cat", "sat", "on", "a", "mat", "1", "2", ".", ",", "ünï", "漢字"]),
                 max_size=8).map(" ".join)
strings = words | st.text(max_size=30)
references = st.lists(strings, min_size=1, max_size=4)


@FEWER
@given(st.lists(st.tuples(strings, references), min_size=1, max_size=5))
def test_corpus_metrics_are_within_0_and_100(pairs):
    preds = [p for p, _ in pairs]
    refs = [r for _, r in pairs]
    for name in ("exact_match", "rougeL"):
        score = get_metric(name).compute(preds, refs)
        assert 0.0 <= score <= 100.0 + 1e-9, (name, score)


@SETTINGS
@given(strings, strings)
def test_exact_match_is_symmetric_for_a_single_reference(a, b):
    assert sni_exact_match_instance(a, [b]) == sni_exact_match_instance(b, [a])
    assert sni_exact_match_instance(a, [a]) == 1.0


@SETTINGS
@given(strings, references, strings)
def test_adding_a_reference_never_lowers_the_score(pred, refs, extra):
    for fn in (sni_exact_match_instance, rougeL_instance):
        before, after = fn(pred, refs), fn(pred, refs + [extra])
        assert after >= before - 1e-12, fn.__name__
        assert 0.0 <= before <= 1.0


@SETTINGS
@given(strings, references)
def test_score_is_the_max_over_references(pred, refs):
    for fn in (sni_exact_match_instance, rougeL_instance):
        assert fn(pred, refs) == pytest.approx(max(fn(pred, [r]) for r in refs))


@SETTINGS
@given(st.text(alphabet="abcdefghij ", min_size=1, max_size=40))
def test_a_prediction_equal_to_its_reference_scores_full_marks(text):
    assume(any(ch.isalpha() for ch in text))
    assert sni_exact_match_instance(text, [text]) == 1.0
    assert rougeL_instance(text, [text]) == pytest.approx(1.0)
