"""Declarative task / mixture YAML: validation with file+line, includes, path safety, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructmt.errors import InstructMTError, TaskFormatError
from instructmt.tasks.registry import load_path
from instructmt.tasks.yaml_spec import (
    SpecProblems, load_mixture_tasks, load_mixture_yaml, load_task_yaml, parse_task_yaml,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rows = [{"q": f"what is {i} plus 1", "a": str(i + 1), "k": f"r{i}"} for i in range(5)]
    _write(tmp_path / "data" / "add.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    _write(tmp_path / "data" / "multi.csv", "text,label\nred apple,\"fruit|food\"\nblue car,vehicle\n")
    return tmp_path


def test_single_task_with_field_mapping(data_dir):
    y = _write(data_dir / "add.yaml", """\
name: add_one
family: custom
source: data/add.jsonl
fields: {input: q, output: a, id: k}
definition: Add one to the number.
metrics: [exact_match]
max_instances: 3
""")
    (task,) = load_task_yaml(y)
    assert task.name == "add_one" and task.family == "custom"
    assert [i.id for i in task.instances] == ["r0", "r1", "r2"]
    assert task.instances[1].input == "what is 1 plus 1" and task.instances[1].outputs == ["2"]
    assert task.definition == "Add one to the number." and task.metrics == ["exact_match"]
    assert task.extra["spec"].endswith("add.yaml:1")


def test_output_separator_and_csv(data_dir):
    y = _write(data_dir / "m.yaml", """\
name: kinds
family: custom
source: data/multi.csv
fields: {input: text, output: label}
output_separator: "|"
""")
    (task,) = load_task_yaml(y)
    assert task.instances[0].outputs == ["fruit", "food"]
    assert task.instances[1].outputs == ["vehicle"]


def test_group_defaults_and_include(data_dir):
    _write(data_dir / "base.yaml", "family: custom\nmetrics: [rougeL]\nfields: {input: q, output: a}\n")
    y = _write(data_dir / "group.yaml", """\
include: base.yaml
metrics: [exact_match]
tasks:
  - name: first
    source: data/add.jsonl
  - name: second
    source: data/add.jsonl
    max_instances: 2
    metrics: [rougeL, exact_match]
""")
    first, second = load_task_yaml(y)
    assert first.family == "custom" and first.metrics == ["exact_match"]  # child beats include
    assert len(first.instances) == 5 and len(second.instances) == 2
    assert second.metrics == ["rougeL", "exact_match"]


def test_unknown_keys_are_all_reported_with_lines(data_dir):
    y = _write(data_dir / "bad.yaml", """\
family: custom
tasks:
  - name: a
    source: data/add.jsonl
    fields: {input: q, output: a}
    metric: [exact_match]
  - name: b
    sourse: data/add.jsonl
""")
    with pytest.raises(SpecProblems) as err:
        parse_task_yaml(y)
    msgs = [str(p) for p in err.value.problems]
    assert any("line 6" in m and "'metric'" in m and "did you mean 'metrics'" in m for m in msgs), msgs
    assert any("line 8" in m and "'sourse'" in m for m in msgs), msgs
    assert all(str(y) in m for m in msgs)


def test_malformed_yaml_names_line(tmp_path):
    y = _write(tmp_path / "broken.yaml", "family: custom\nsource: [unclosed\nname: x\n")
    with pytest.raises(TaskFormatError) as err:
        parse_task_yaml(y)
    assert "malformed YAML" in str(err.value) and err.value.line is not None


def test_unknown_format_metric_encoding_are_errors(data_dir):
    y = _write(data_dir / "f.yaml", """\
name: x
family: decanlp
source: data/add.jsonl
format: decanlp_squadd
metrics: [nf11]
encoding: qaa
""")
    with pytest.raises(SpecProblems) as err:
        parse_task_yaml(y)
    text = str(err.value)
    assert "did you mean 'decanlp_squad'" in text
    assert "unknown metric 'nf11'" in text and "did you mean 'nf1'" in text
    assert "unknown encoding 'qaa'" in text


def test_paths_may_not_escape_the_data_root(tmp_path, data_dir):
    outside = _write(tmp_path / "outside.jsonl", '{"q": "x", "a": "y"}\n')
    y = _write(data_dir / "inner" / "t.yaml", """\
name: esc
family: custom
source: ../data/add.jsonl
fields: {input: q, output: a}
""")
    with pytest.raises(TaskFormatError, match="escapes the data root"):
        load_task_yaml(y)
    # an ancestor named as data_root allows it
    y.write_text(y.read_text() + "data_root: ..\n")
    assert len(load_task_yaml(y)[0].instances) == 5
    y2 = _write(data_dir / "abs.yaml", f"name: a\nfamily: custom\nsource: {outside}\nfields: {{input: q, output: a}}\n")
    with pytest.raises(TaskFormatError, match="absolute path .* not allowed"):
        load_task_yaml(y2)
    y2.write_text(y2.read_text() + "allow_absolute: true\n")
    assert load_task_yaml(y2)[0].instances[0].outputs == ["y"]
    y3 = _write(data_dir / "root.yaml", "name: r\nfamily: custom\nsource: data/add.jsonl\ndata_root: data\n"
                                        "fields: {input: q, output: a}\n")
    with pytest.raises(TaskFormatError, match="must be a directory that contains this file"):
        load_task_yaml(y3)


def test_glob_source_and_family_format(tmp_path):
    shared = REPO.parent / "shared" / "data" / "decanlp" / "sst"
    if not shared.exists():
        pytest.skip("shared decaNLP samples absent")
    y = _write(tmp_path / "sst.yaml", f"""\
family: decanlp
name: sst
source: {shared}/*_binary_sent.csv
allow_absolute: true
format: decanlp_sst
""")
    tasks = load_task_yaml(y)
    assert sorted(t.name for t in tasks) == ["sst_decanlp_sst_dev_binary_sent", "sst_decanlp_sst_train_binary_sent"]
    assert all(t.encoding == "qa" and t.metrics == ["em"] for t in tasks)


def test_missing_source_and_empty_glob(data_dir):
    y = _write(data_dir / "n.yaml", "name: n\nfamily: custom\nsource: data/nope.jsonl\nfields: {input: q, output: a}\n")
    with pytest.raises(TaskFormatError, match="source not found"):
        load_task_yaml(y)
    y.write_text("name: n\nfamily: custom\nsource: data/*.nope\nfields: {input: q, output: a}\n")
    with pytest.raises(TaskFormatError, match="matches no file"):
        load_task_yaml(y)


def test_load_path_handles_task_yaml(data_dir):
    _write(data_dir / "add.yaml", "name: add\nfamily: custom\nsource: data/add.jsonl\nfields: {input: q, output: a}\n")
    (task,) = load_path(data_dir / "add.yaml")
    assert task.name == "add"


def test_datasets_source_local_folder(data_dir):
    y = _write(data_dir / "ds.yaml", """\
name: from_datasets
family: custom
datasets: {path: data, split: train}
fields: {input: q, output: a}
""")
    (data_dir / "data" / "multi.csv").unlink()  # one file type per datasets folder
    (task,) = load_task_yaml(y)
    assert len(task.instances) == 5 and task.instances[0].outputs == ["1"]


def test_mixture_yaml(tmp_path, data_dir):
    _write(data_dir / "tasks.yaml", """\
family: custom
fields: {input: q, output: a}
tasks:
  - {name: big, source: data/add.jsonl}
  - {name: small, source: data/add.jsonl, max_instances: 1}
""")
    m = _write(data_dir / "mix.yaml", """\
mixture: demo
sources: [tasks.yaml]
rate: examples_proportional
cap: 4
temperature: 2
entries: ["big", {pattern: "sm*"}]
""")
    spec = load_mixture_yaml(m)
    assert spec.name == "demo" and spec.cap == 4 and spec.temperature == 2.0
    assert spec.entries == [("big", None), ("sm*", None)]
    spec2, tasks = load_mixture_tasks(m)
    rates = spec2.rates(tasks)
    # min(5, 4) ** 0.5 = 2 vs 1 ** 0.5 = 1
    assert rates == pytest.approx({"big": 2 / 3, "small": 1 / 3})
    fixed = _write(data_dir / "fixed.yaml", "mixture: f\nsources: [tasks.yaml]\nentries:\n  - {pattern: big, rate: 3}\n"
                                            "  - {pattern: small, rate: 1}\n")
    spec3, tasks3 = load_mixture_tasks(fixed)
    assert spec3.rates(tasks3) == pytest.approx({"big": 0.75, "small": 0.25})
    bad = _write(data_dir / "bad_mix.yaml", "mixture: b\nrate: sometimes\ntemperature: 0\ncapp: 3\n")
    with pytest.raises(SpecProblems) as err:
        load_mixture_yaml(bad)
    text = str(err.value)
    assert "rate must be a number or 'examples_proportional'" in text and "temperature must be a number in [0.01, 100]" in text
    assert "line 4" in text and "'capp'" in text


def test_bundled_four_family_mixture():
    path = REPO / "tasks" / "mixtures" / "four_families.yaml"
    if not (REPO / "tasks" / "sample").exists():
        pytest.skip("SNI sample tasks not generated")
    spec, tasks = load_mixture_tasks(path)
    families = {t.family for t in tasks}
    assert {"natural_instructions", "decanlp", "box", "molecular"} <= families
    assert spec.cap == 100 and spec.temperature == 2.0
    assert not any(t.name.startswith("task95") for t in tasks)  # held-out SNI tasks are not mixed in
    rates = spec.rates(tasks)
    assert sum(rates.values()) == pytest.approx(1.0) and len(rates) == len(tasks)


def test_errors_are_instructmt_errors(tmp_path):
    y = _write(tmp_path / "x.yaml", "family: custom\n")
    with pytest.raises(InstructMTError, match="needs 'source'"):
        load_task_yaml(y)
