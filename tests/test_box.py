"""BoX loader: the 32-task instructions file, instance files beside it, instruction-only tasks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from instructmt.errors import TaskFormatError
from instructmt.tasks import box
from instructmt.tasks.registry import detect_format, load_path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "box" / "BoX_instructions.json"
BUNDLED = REPO / "tasks" / "families" / "box"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="shared BoX instructions absent")


@needs_shared
def test_reads_all_32_tasks_with_colon_key():
    instr = box.read_instructions(SHARED)
    assert len(instr) == 32 and "AnatEM" in instr and "HoC" in instr
    anat = instr["AnatEM"]
    assert anat.definition.startswith("In this task, you are given a small paragraph")
    assert anat.examples[0].output == "cells <Anatomy>" and anat.examples[0].explanation
    assert anat.prompt.startswith("Given an input")
    assert detect_format(SHARED).name == "box_instructions"


@needs_shared
def test_without_instance_files_every_task_is_instruction_only():
    assert load_path(SHARED) == []
    assert len(box.instruction_only_tasks(SHARED)) == 32


@needs_shared
def test_instance_file_beside_instructions(tmp_path):
    shutil.copy(SHARED, tmp_path / "BoX_instructions.json")
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "NCBI.csv").write_text(
        "Input,Output\nMutations cause breast cancer and colon cancer .,\"breast cancer <Disease>, colon cancer <Disease>\"\n"
        "No disease here .,None\n")
    tasks = load_path(tmp_path / "BoX_instructions.json")
    assert [t.name for t in tasks] == ["NCBI"]
    t = tasks[0]
    assert t.family == "box" and t.categories == ["Named Entity Recognition"]
    assert t.metrics[0] == "box_rougeL" and len(t.positive_examples) >= 1
    first = t.instances[0]
    assert first.outputs == ["breast cancer <Disease>, colon cancer <Disease>"]  # trained on whole
    assert first.fields["answers"] == ["breast cancer <Disease>", "colon cancer <Disease>"]
    assert "NCBI" not in box.instruction_only_tasks(tmp_path / "BoX_instructions.json")
    assert len(box.instruction_only_tasks(tmp_path / "BoX_instructions.json")) == 31
    assert "BoX instances of task 'NCBI'" in box.companion_of(tmp_path / "instances" / "NCBI.csv")


def test_jsonl_and_tsv_instances(tmp_path):
    (tmp_path / "i.json").write_text(json.dumps({
        "A": {"Definition:": "Do A.", "Examples": [], "Prompt": ""},
        "B": {"Definition:": "Do B.", "Examples": [{"input": "x", "output": "y", "explanation": "z"}]}}))
    (tmp_path / "A.jsonl").write_text('{"input": "q1", "output": ["a1", "a2"]}\n')
    (tmp_path / "B.tsv").write_text("input\toutput\nq2\tb1, b2\n")
    a, b = box.load_box(tmp_path / "i.json")
    assert a.instances[0].outputs == ["a1", "a2"]
    assert b.instances[0].outputs == ["b1, b2"] and b.instances[0].fields["answers"] == ["b1", "b2"]
    assert b.positive_examples[0].explanation == "z"


def test_definition_without_colon_is_explained(tmp_path):
    (tmp_path / "i.json").write_text(json.dumps({"T": {"Definition": "x", "Examples": []}}))
    with pytest.raises(TaskFormatError, match="'Definition:' with a colon"):
        box.read_instructions(tmp_path / "i.json")


def test_bad_instance_columns_name_the_file(tmp_path):
    (tmp_path / "i.json").write_text(json.dumps({"T": {"Definition:": "x", "Examples": []}}))
    (tmp_path / "T.csv").write_text("sentence,gold\na,b\n")
    with pytest.raises(TaskFormatError) as err:
        box.load_box(tmp_path / "i.json")
    assert "T.csv" in str(err.value) and "needs input and output columns" in str(err.value)


def test_bundled_box_sample():
    from instructmt.tasks.yaml_spec import load_task_yaml
    tasks = {t.name: t for t in load_task_yaml(REPO / "tasks" / "families" / "box.yaml")}
    assert set(tasks) == {"box_Gene_NER", "box_Drug_Class", "box_Fever_YesNo"}
    assert box.instruction_only_tasks(BUNDLED / "BoX_instructions.json") == ["Dosage_Extraction"]
    ner = tasks["box_Gene_NER"]
    two = next(i for i in ner.instances if len(i.fields["answers"]) == 2)
    assert ", " in two.outputs[0] and all(a.endswith("<Gene>") for a in two.fields["answers"])
