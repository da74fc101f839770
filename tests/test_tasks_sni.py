import json

import datasets
import pytest

from instructmt.errors import RegistryError, TaskFormatError
from instructmt.tasks import TaskRegistry, load_path
from instructmt.tasks.natural_instructions import (load_jsonl_file, load_niv1_file, load_sni_directory,
                                                   load_sni_file, tasks_from_dataset)


def test_loads_every_real_sni_task(shared_data):
    tasks, train, test = load_sni_directory(shared_data / "sni" / "tasks", shared_data / "sni" / "splits")
    assert len(tasks) == 68
    assert len(train) == 48 and len(test) == 20
    t = {t.name: t for t in tasks}["task1498_24hour_to_12hour_clock"]
    assert t.definition.startswith("You are given a time in 24-Hours format")
    assert t.categories and t.instances[0].id.startswith("task1498-")
    assert all(isinstance(o, str) for i in t.instances for o in i.outputs)
    assert t.positive_examples[0].explanation


def test_definition_as_plain_string_and_multiple_outputs(tmp_path):
    f = tmp_path / "task001_x.json"
    f.write_text(json.dumps({"Definition": "Say hi", "Categories": ["Title Generation"],
                             "Positive Examples": [{"input": "a", "output": "b", "explanation": "c"}],
                             "Negative Examples": [], "Instances": [{"id": "i1", "input": "x", "output": ["y", "z"]}]}))
    [t] = load_sni_file(f)
    assert t.definition == "Say hi" and t.instances[0].outputs == ["y", "z"]
    assert t.category_key == "title_generation"


@pytest.mark.parametrize("payload,field", [
    ({"Instances": [{"id": "a", "input": "x", "output": ["y"]}]}, "Definition"),
    ({"Definition": ["d"]}, "Instances"),
    ({"Definition": ["d"], "Instances": [{"id": "a", "input": "x", "output": []}]}, "Instances[0].output"),
    ({"Definition": ["d"], "Instances": [{"id": "a", "input": 3, "output": ["y"]}]}, "Instances[0].input"),
    ({"Definition": [5], "Instances": [{"id": "a", "input": "x", "output": ["y"]}]}, "Definition[0]"),
    ({"Definition": ["d"], "Positive Examples": "oops", "Instances": [{"id": "a", "input": "x", "output": "y"}]},
     "Positive Examples"),
])
def test_malformed_sni_names_file_task_and_field(tmp_path, payload, field):
    f = tmp_path / "task002_bad.json"
    f.write_text(json.dumps(payload))
    with pytest.raises(TaskFormatError) as e:
        load_sni_file(f)
    msg = str(e.value)
    assert str(f) in msg and "task002_bad" in msg and repr(field) in msg


def test_malformed_json_reports_line(tmp_path):
    f = tmp_path / "task003_broken.json"
    f.write_text('{\n "Definition": ["d"],\n "Instances": [\n')
    with pytest.raises(TaskFormatError, match=r"line \d+: malformed JSON"):
        load_sni_file(f)


def test_directory_with_one_bad_file_fails_loudly(tmp_path):
    good = {"Definition": ["d"], "Instances": [{"id": "a", "input": "x", "output": ["y"]}]}
    (tmp_path / "task010_good.json").write_text(json.dumps(good))
    (tmp_path / "task011_bad.json").write_text(json.dumps({"Definition": ["d"]}))
    with pytest.raises(TaskFormatError, match="task011_bad"):
        load_path(tmp_path)


def test_niv1_format_skips_dash_fields(tmp_path):
    f = tmp_path / "subtask001_quoref_question_generation.json"
    f.write_text(json.dumps({
        "Title": "Writing questions", "Prompt": "Ask a question.", "Definition": "Write a question.",
        "Things to Avoid": "-", "Emphasis & Caution": "Be short.",
        "Examples": {"Positive Examples": [{"input": "p", "output": "q", "reason": "r"}],
                     "Negative Examples": [{"input": "p", "output": "bad", "reason": "r2", "suggestion": "-"}]},
        "Instances": [{"input": "ctx", "output": ["q1", "q2"]}]}))
    [t] = load_path(f)
    assert t.definition == "Write a question.\nEmphasis & Caution: Be short."
    assert "Things to avoid" not in t.definition
    assert t.positive_examples[0].explanation == "r" and t.negative_examples[0].output == "bad"
    assert t.instances[0].outputs == ["q1", "q2"] and t.instances[0].id


def test_jsonl_and_dataset_give_the_same_tasks(tmp_path):
    recs = [{"task": "t_a", "id": "1", "input": "x", "output": "y", "definition": "Do A", "categories": ["C"]},
            {"task": "t_a", "id": "2", "input": "x2", "outputs": ["y2", "y3"]},
            {"task_name": "t_b", "id": "1", "inputs": "u", "targets": "v", "definition": "Do B"}]
    f = tmp_path / "mix.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in recs))
    from_file = load_path(f)
    from_ds = tasks_from_dataset(datasets.Dataset.from_list(
        [{"task": r.get("task") or r.get("task_name"), "id": r["id"], "input": r.get("input") or r.get("inputs"),
          "outputs": r.get("outputs") or [r.get("output") or r.get("targets")],
          "definition": r.get("definition")} for r in recs]))
    for tasks in (from_file, from_ds):
        by = {t.name: t for t in tasks}
        assert by["t_a"].definition == "Do A" and len(by["t_a"].instances) == 2
        assert by["t_a"].instances[1].outputs == ["y2", "y3"]
        assert by["t_b"].instances[0].outputs == ["v"]


def test_jsonl_errors_name_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"task": "t", "input": "x", "output": "y"}\n{"task": "t", "input": "x"}\n')
    with pytest.raises(TaskFormatError, match=r"line 2.*'output'"):
        load_jsonl_file(f)


def test_registry_rejects_duplicates_and_suggests(repo):
    tasks = load_path(repo / "tasks" / "sample")
    reg = TaskRegistry(tasks)
    with pytest.raises(RegistryError, match="duplicate task name"):
        reg.add(tasks[0])
    with pytest.raises(RegistryError, match="did you mean 'task907_max_number'"):
        reg.get("task907_max_numbr")


def test_bundled_sample_tasks_are_reproducible(repo, tmp_path):
    import subprocess, sys, filecmp
    subprocess.run([sys.executable, str(repo / "scripts" / "make_sample_tasks.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    committed = sorted(p.name for p in (repo / "tasks" / "sample").glob("*.json"))
    assert len(committed) >= 12
    for name in committed:
        assert filecmp.cmp(tmp_path / name, repo / "tasks" / "sample" / name, shallow=False), name
