"""decaNLP converters: each original format -> (context, question, answer) with decaNLP's questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructmt.errors import TaskFormatError
from instructmt.prompts.render import PromptRenderer
from instructmt.tasks import decanlp
from instructmt.tasks.registry import detect_format, load_path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "decanlp"
FIXTURES = Path(__file__).parent / "data" / "decanlp"
BUNDLED = REPO / "tasks" / "families" / "decanlp"

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="shared decaNLP samples absent")


def _one(path):
    (task,) = load_path(path)
    return task


@needs_shared
def test_squad_v2_and_v11():
    t = _one(SHARED / "squad" / "squad_v2.0_dev_first500q.json")
    assert detect_format(SHARED / "squad" / "squad_v2.0_dev_first500q.json").name == "decanlp_squad"
    assert len(t.instances) == 496 and t.metrics == ["nf1", "nem"] and t.encoding == "qa"
    first = t.instances[0]
    assert first.fields["question"] == "In what country is Normandy located?"
    assert first.outputs == ["France"]  # four identical answers, deduplicated
    assert first.input == f"Context: {first.fields['context']} Question: In what country is Normandy located?"
    unanswerable = [i for i in t.instances if i.outputs == ["unanswerable"]]
    assert 0 < len(unanswerable) < len(t.instances)
    v11 = _one(SHARED / "squad" / "allennlp_fixture_squad_v1.1.json")
    assert len(v11.instances) == 5 and v11.instances[0].outputs == ["Saint Bernadette Soubirous"]


@needs_shared
def test_sst_binary_and_fine():
    t = _one(SHARED / "sst" / "train_binary_sent.csv")
    assert len(t.instances) == 400
    assert t.instances[0].fields["question"] == "Is this review negative or positive?"
    assert t.instances[0].outputs == ["positive"] and t.instances[1].outputs == ["negative"]
    fine = _one(SHARED / "sst" / "decanlp_local_train_fine_sent.csv")
    assert fine.extra["fine_grained"] and fine.instances[0].outputs == ["very positive"]
    assert fine.instances[3].outputs == ["neutral"]


@needs_shared
def test_cnn_dailymail_directory_is_one_task():
    d = SHARED / "cnn_dailymail"
    stories = sorted(d.glob("*.story"))
    assert detect_format(stories[0]).name == "decanlp_cnn_dailymail"
    assert detect_format(stories[1]) is None  # covered by the first story's task
    assert "part of the CNN/DailyMail story set" in decanlp.companion_of(stories[1])
    t = _one(stories[0])
    assert len(t.instances) == 20 and t.metrics == ["avg_rouge"]
    inst = t.instances[0]
    assert inst.fields["question"] == "What is the summary?"
    assert inst.outputs[0].startswith("President Bush to address the Veterans of Foreign Wars on Wednesday.")
    assert "@highlight" not in inst.fields["context"] and "@highlight" not in inst.outputs[0]


def test_story_to_qa_fixes_periods_and_nfkc():
    article, summary = decanlp.story_to_qa("First line\n\nSecond line!\n\n@highlight\n\nA point\n\n@highlight\n\nﬁne")
    assert article == "First line. Second line!"
    assert summary == "A point. fine."


@needs_shared
def test_snli_jsonl():
    t = _one(SHARED / "snli" / "snli.jsonl")
    inst = t.instances[0]
    assert inst.fields["context"] == 'Premise: "A person on a horse jumps over a broken down airplane."'
    assert inst.fields["question"] == ('Hypothesis: "A person is training his horse for a competition." '
                                       '-- entailment, neutral, or contradiction?')
    assert inst.outputs == ["neutral"] and t.metrics == ["em"]


def test_multinli_fixture_skips_no_gold():
    t = _one(FIXTURES / "multinli" / "multinli_1.0_dev_matched.jsonl")
    assert len(t.instances) == 6 and t.extra["skipped_no_gold"] == 1
    assert [i.outputs[0] for i in t.instances[:3]] == ["entailment", "neutral", "contradiction"]


def test_qazre_fixture():
    t = _one(FIXTURES / "zre" / "dev.0")
    assert detect_format(FIXTURES / "zre" / "dev.0").name == "decanlp_qazre"
    q = [(i.fields["question"], i.outputs) for i in t.instances]
    assert q[0] == ("Where did Marta Lind study?", ["Uppsala University"])
    assert q[2] == ("Who is Tomas Berg married to?", ["unanswerable"])
    assert q[3][1] == ["carpenter, painter"]
    assert t.metrics[0] == "corpus_f1"


def test_qasrl_fixture():
    t = _one(FIXTURES / "srl" / "wiki1.dev.qa")
    assert len(t.instances) == 5
    first = t.instances[0]
    assert first.fields["context"] == "The committee approved the new budget on Friday."
    assert first.fields["question"] == "who approved something?" and first.outputs == ["The committee"]
    assert t.instances[1].outputs == ["the new budget", "budget"]
    assert t.instances[4].fields["question"] == "how long was something delayed?"


def test_iwslt_fixture_drops_tag_lines():
    src = FIXTURES / "iwslt" / "train.tags.en-de.en"
    assert detect_format(src).name == "decanlp_iwslt"
    assert detect_format(src.with_suffix(".de")) is None
    t = _one(src)
    assert [(i.fields["context"], i.outputs[0]) for i in t.instances] == [
        ("Thank you very much.", "Vielen Dank."), ("The house is small.", "Das Haus ist klein."),
        ("I like to read books.", "Ich lese gern Bücher.")]
    assert t.instances[0].fields["question"] == "Translate from English to German" and t.metrics == ["bleu"]


def test_iwslt_line_mismatch_is_an_error(tmp_path):
    (tmp_path / "x.en").write_text("a\nb\n")
    (tmp_path / "x.de").write_text("a\n")
    with pytest.raises(TaskFormatError, match="2 source lines but 1"):
        decanlp.load_iwslt(tmp_path / "x.en")


@needs_shared
def test_woz_delta_states():
    t = _one(SHARED / "woz" / "woz_train_en.json")
    answers = [i.outputs[0] for i in t.instances[:5]]
    assert answers == ["food: eritrean;", "food: chinese;", "area: east;", "; postcode, phone, address", "None"]
    third = t.instances[2]
    assert third.fields["context"].startswith("area -- ") and third.id == "woz_en_0_2"
    assert t.metrics == ["dsem"]


@needs_shared
def test_wikisql_without_tables_uses_placeholders_and_notes():
    t = _one(SHARED / "wikisql" / "dev.jsonl")
    assert t.extra["notes"] and "dev.tables.jsonl not found" in t.extra["notes"][0]
    inst = t.instances[0]
    assert inst.outputs == ["SELECT col3 FROM table WHERE col5 = Butler CC (KS)"]
    assert inst.fields["question"] == "What is the translation from English to SQL?"
    with pytest.raises(TaskFormatError, match="dev.tables.jsonl is missing"):
        decanlp.load_wikisql(SHARED / "wikisql" / "dev.jsonl", require_tables=True)


def test_wikisql_with_tables():
    t = decanlp.load_wikisql(BUNDLED / "wikisql" / "dev.jsonl")[0]
    inst = t.instances[0]
    assert not t.extra["notes"]
    assert inst.fields["context"].startswith("The table has columns Player, Team, Points, Year and key words MAX, MIN,")
    assert inst.fields["context"].endswith(" -- What team does Ada play for?")
    assert inst.outputs == ["SELECT Team FROM table WHERE Player = Ada"]
    agg = next(i for i in t.instances if "highest" in i.fields["context"])
    assert agg.outputs[0].startswith("SELECT MAX Points FROM table WHERE Team = ")


def test_wikisql_record_header_fallback(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "who?", "header": ["Name", "Age"], '
                                      '"sql": {"sel": 0, "conds": [[1, 1, 30]], "agg": 0}}\n')
    t = decanlp.load_wikisql(tmp_path / "q.jsonl")[0]
    assert t.instances[0].outputs == ["SELECT Name FROM table WHERE Age > 30"] and not t.extra["notes"]


@needs_shared
def test_mwsc_schema():
    t = _one(SHARED / "mwsc" / "schema.txt")
    assert len(t.instances) == 264
    a, b = t.instances[0], t.instances[1]
    assert a.fields["context"] == "The city councilmen refused the demonstrators a permit because they feared violence."
    assert a.fields["question"] == "Who feared violence? councilmen or demonstrators?" and a.outputs == ["councilmen"]
    assert "advocated" in b.fields["context"] and b.outputs == ["demonstrators"]
    assert sum(i.fields["split"] == "test" for i in t.instances) == 100


def test_bad_sst_header_names_file(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("label,sentence\n1,fine\nz,bad\n")
    with pytest.raises(TaskFormatError) as err:
        decanlp.load_sst(p)
    assert str(p) in str(err.value) and "line 3" in str(err.value)


def test_qa_encoding_renders_context_and_question():
    t = _one(FIXTURES / "zre" / "dev.0")
    inst = t.instances[0]
    rendered = PromptRenderer("def+pos2").render(t, inst)  # the task forces its own `qa` encoding
    assert rendered == ("Context: Marta Lind studied chemistry at Uppsala University before moving to Oslo. "
                        "Question: Where did Marta Lind study?") == inst.input


def test_bundled_decanlp_yaml():
    from instructmt.tasks.yaml_spec import load_task_yaml
    tasks = {t.name: t for t in load_task_yaml(REPO / "tasks" / "families" / "decanlp.yaml")}
    assert set(tasks) == {"decanlp_squad_sample", "decanlp_sst_sample", "decanlp_mnli_sample", "decanlp_wikisql_sample"}
    assert all(t.family == "decanlp" and t.encoding == "qa" for t in tasks.values())
    assert any(i.outputs == ["unanswerable"] for i in tasks["decanlp_squad_sample"].instances)


def test_iwslt_xml_release_layout(tmp_path):
    seg = '<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<doc docid="1">\n<seg id="1"> {} </seg>\n<seg id="2"> {} </seg>\n</doc>\n</mteval>\n'
    (tmp_path / "IWSLT16.TED.tst2013.en-de.en.xml").write_text(seg.format("Hello there.", "Good night."))
    (tmp_path / "IWSLT16.TED.tst2013.en-de.de.xml").write_text(seg.format("Hallo.", "Gute Nacht."))
    t = _one(tmp_path / "IWSLT16.TED.tst2013.en-de.en.xml")
    assert [(i.fields["context"], i.outputs[0]) for i in t.instances] == [("Hello there.", "Hallo."),
                                                                          ("Good night.", "Gute Nacht.")]
