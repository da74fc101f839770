"""Hostile task files: every entry of tests/data/bad/ is rejected by `instructmt tasks validate` with
an error naming the file (and task and field where there is one), exit code 1 and no traceback;
every entry of tests/data/warn/ loads and says what it did."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from instructmt.cli import main
from instructmt.errors import InstructMTError, SplitOverlapError, TaskFormatError
from instructmt.tasks.registry import load_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BAD = HERE / "data" / "bad"
WARN = HERE / "data" / "warn"

# entry -> fragments its ERROR line(s) must hold (besides the file name). Each names the task and
# the field where the format has them.
EXPECTED = {
    "task001_malformed_json.json": ["line 4", "malformed JSON"],
    "task002_missing_definition.json": ["task 'task002_missing_definition'", "field 'Definition'", "missing"],
    "task003_missing_instances.json": ["task 'task003_missing_instances'", "field 'Instances'", "missing"],
    "task004_empty_output_list.json": ["field 'Instances[1].output'", "has no reference output"],
    "task005_no_instances.json": ["field 'Instances'", "has no instances"],
    "task006_input_is_a_number.json": ["field 'Instances[1].input'", "expected a string, got int"],
    "task007_output_is_an_object.json": ["field 'Instances[0].output'", "got dict"],
    "task008_definition_is_a_number.json": ["field 'Definition'", "expected a string, got int"],
    "task009_instances_is_a_dict.json": ["field 'Instances'", "expected a list, got dict"],
    "task010_top_level_list.json": ["task 'task010_top_level_list'", "expected a JSON object at top level"],
    "task011_non_utf8.json": ["not valid UTF-8"],
    "task012_duplicate_instance_ids.json": ["field 'Instances[1].id'", "duplicate instance id 'x-0'"],
    "task013_example_missing_output.json": ["field 'Positive Examples[0]'", "missing key 'output'"],
    "task014_categories_is_a_number.json": ["field 'Categories'", "expected a list of strings"],
    "task015_instance_missing_output.json": ["field 'Instances[0]'", "missing key 'output'"],
    "task016_output_list_holds_null.json": ["field 'Instances[0].output[1]'", "got NoneType"],
    "task017_empty_definition_list.json": ["field 'Definition'", "is an empty list"],
    "task018_empty_file.json": ["malformed JSON"],
    "task019_instance_is_a_string.json": ["field 'Instances[0]'", "expected an object, got str"],
    "task020_empty_instance_id.json": ["field 'Instances[0].id'", "is empty"],
    "records_missing_input.jsonl": ["line 2", "task 'recs_a'", "field 'input'"],
    "records_malformed_line.jsonl": ["line 2", "malformed JSON"],
    "records_non_utf8.jsonl": ["not valid UTF-8"],
    "records_output_is_a_number.jsonl": ["task 'recs_d'", "field 'output'", "got int"],
    "records_task_name_empty.jsonl": ["field 'task'", "is empty"],
    "records_duplicate_ids.jsonl": ["line 2", "task 'recs_e'", "field 'id'", "duplicate instance id '1'"],
    "duplicate_names": ["task name 'dup_task' is also produced by", "part_one.jsonl"],
    "yaml_duplicate_task_names.yaml": ["task name 'same_name' declared more than once"],
    "yaml_unknown_key.yaml": ["line 7", "unknown key 'metrcs'", "did you mean 'metrics'"],
    "yaml_wrong_type.yaml": ["line 7", "'max_instances' must be a int", "line 8", "'metrics' must be a list of strings"],
    "yaml_malformed.yaml": ["malformed YAML"],
    "yaml_missing_family.yaml": ["task 'no_family'", "missing required key 'family'"],
    "yaml_unknown_metric_and_encoding.yaml": ["unknown metric 'exact_macth'", "unknown encoding 'def+pos2+bogus'"],
    "yaml_path_escapes_root.yaml": ["line 4", "escapes the data root"],
    "yaml_absolute_path.yaml": ["absolute path '/etc/hostname'", "not allowed"],
    "mixture_unknown_key.yaml": ["line 6", "unknown key 'temprature'", "did you mean 'temperature'"],
    "mixture_bad_values.yaml": ["temperature must be a number in [0.01, 100], got 0",
                                "cap must be an integer in [1, 2147483647], got -3",
                                "entries[0].rate must be a number in [0, 1000000], got -1"],
    "mixture_entry_matches_nothing.yaml": ["entry 'no_such_task_*' matches no task"],
    "reactions_not_a_reaction.csv": ["line 3", "field 'reactants>reagents>production'", "not a reaction SMILES"],
    "reactions_missing_reactants.csv": ["line 2", "not a reaction SMILES"],
    "chebi_missing_field.txt": ["line 3", "expected 3 tab-separated fields, got 2"],
    "chebi_empty_smiles.txt": ["line 3", "field 'SMILES'", "empty SMILES"],
    "actions_paragraph_not_text.jsonl": ["line 2", "needs 'paragraph' and 'actions'"],
    "sst_label_not_integer.csv": ["line 3", "field 'label'", "not an integer"],
    "sst_label_out_of_range.csv": ["line 3", "label 7 out of range"],
    "nli_missing_sentence2.jsonl": ["line 2", "field 'sentence2'", "missing key"],
    "squad_question_without_answers.json": ["field 'data[0].paragraphs[0].qas[0]'", "question has no answers"],
    "box_instances_without_output": ["task 'Fever_YesNo'", "field 'output'", "needs input and output columns"],
    # without BoX's "Definition:" key the file is not recognised as BoX (nor as anything else)
    "box_missing_definition.json": ["unrecognised task file format"],
    "not_a_task_file.dat": ["unrecognised task file format"],
    "yaml_non_utf8.yaml": ["not valid UTF-8 (byte 46)"],
    "yaml_fields_source_not_utf8.yaml": ["sst_non_utf8.csv", "task 'sentiment'", "not valid UTF-8"],
    "sst_non_utf8.csv": ["not valid UTF-8 (byte 32)"],
    "chebi_non_utf8.txt": ["not valid UTF-8 (byte 53)"],
    "reactions_non_utf8.csv": ["not valid UTF-8 (byte 65)"],
    "nli_record_not_an_object.jsonl": ["line 2", "record is not an object (int)"],
    "actions_record_not_an_object.jsonl": ["line 2", "record is not an object (list)"],
    # round two (issue 19), written by scripts/make_bad_inputs_round2.py
    "task021_duplicate_instances_key.json": ["duplicate key 'Instances'"],
    "task022_duplicate_output_key_in_instance.json": ["duplicate key 'output'"],
    "task023_duplicate_definition_key.json": ["duplicate key 'Definition'"],
    "task024_deep_nesting.json": ["nested too deeply"],
    "task025_input_nested_500_deep.json": ["field 'Positive Examples[0].input'", "expected a string, got list"],
    "task026_lone_surrogate_input.json": ["field 'Instances[1].input'", "lone surrogate escape \\ud800"],
    "task027_lone_surrogate_definition.json": ["field 'Definition[0]'", "lone surrogate escape \\udfff"],
    "task028_lone_surrogate_output.json": ["field 'Instances[1].output[0]'", "lone surrogate escape \\udc00"],
    "task029_lone_surrogate_example.json": ["field 'Positive Examples[0].explanation'", "lone surrogate"],
    "task030_all_empty_outputs.json": ["field 'Instances[0].output'", "every reference output of instance 'e-0' is empty"],
    "task031_whitespace_only_outputs.json": ["field 'Instances[1].output'", "instance 'w-1' is empty"],
    "task032_empty_string_output.json": ["field 'Instances[0].output'", "is empty"],
    "task033_utf16_with_bom.json": ["not valid UTF-8 (byte 0)"],
    "task034_cp1252.json": ["not valid UTF-8 (byte 41)"],
    "task035_utf8_bom.json": ["line 1", "malformed JSON: Unexpected UTF-8 BOM"],
    "directory_with_utf16_task": ["task037_utf16.json", "not valid UTF-8 (byte 0)"],
    "task038_nan_input.json": ["field 'Positive Examples[0].input'", "expected a string, got float"],
    "task039_huge_number_id.json": ["field 'Instances[0].id'", "expected a string, got float"],
    "task040_output_nested_list.json": ["field 'Instances[0].output[0]'", "expected a string, got list"],
    "records_duplicate_key.jsonl": ["line 2", "duplicate key 'output'"],
    "records_lone_surrogate.jsonl": ["line 1", "field 'input'", "lone surrogate escape \\ud800"],
    "records_deep_nesting.jsonl": ["nested too deeply"],
    "records_all_empty_output.jsonl": ["task 'recs_i'", "every reference output of instance 'recs_i-0' is empty"],
    "records_utf16.jsonl": ["not valid UTF-8 (byte 0)", "UTF-16 byte-order mark"],
    "nli_lone_surrogate.jsonl": ["line 1", "field 'sentence2'", "lone surrogate escape \\udc80"],
    "nli_duplicate_key.jsonl": ["line 1", "duplicate key 'sentence2'"],
    "actions_duplicate_key.jsonl": ["line 1", "duplicate key 'actions'"],
    "chebi_utf16.txt": ["not valid UTF-8 (byte 0)"],
    "mixture_rate_nan.yaml": ["line 5", "entries[0].rate must be a number in [0, 1000000], got nan"],
    "mixture_rate_inf.yaml": ["line 5", "entries[0].rate must be a number in [0, 1000000], got inf"],
    "mixture_rate_overflow.yaml": ["entries[0].rate must be a number in [0, 1000000]", "(400 digits)"],
    "mixture_all_rates_zero.yaml": ["every entry's rate is 0"],
    "mixture_default_rate_zero.yaml": ["every entry's rate is 0"],
    "mixture_temperature_tiny.yaml": ["temperature must be a number in [0.01, 100], got 1e-300"],
    "mixture_temperature_nan.yaml": ["temperature must be a number in [0.01, 100], got nan"],
    "mixture_temperature_inf.yaml": ["temperature must be a number in [0.01, 100], got inf"],
    "mixture_cap_huge.yaml": ["cap must be an integer in [1, 2147483647]", "(30 digits)"],
    "mixture_alias_bomb.yaml": ["aliases expand to more than 1,000,000 nodes"],
    "yaml_alias_bomb.yaml": ["aliases expand to more than 1,000,000 nodes"],
    "yaml_huge_max_instances.yaml": ["task 'huge'", "max_instances must be an integer in [1, 2147483647]"],
    "yaml_negative_max_instances.yaml": ["line 4", "max_instances must be an integer in [1, 2147483647], got -5"],
    "yaml_lone_surrogate.yaml": ["surrogate escape \\ud800 at definition"],
    "yaml_duplicate_key.yaml": ["line 3", "duplicate key 'family'"],
}

BAD_ENTRIES = sorted(p.name for p in BAD.iterdir() if not p.name.startswith("."))
WARN_ENTRIES = sorted(p.name for p in WARN.iterdir() if not p.name.startswith("."))


def validate(capsys, *paths):
    rc = main(["tasks", "validate", *map(str, paths)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_every_bad_entry_has_an_expectation():
    assert BAD_ENTRIES == sorted(EXPECTED), "add the new bad input to EXPECTED (or remove the stale entry)"


@pytest.mark.parametrize("entry", BAD_ENTRIES)
def test_validate_rejects_bad_input_naming_file_task_and_field(entry, capsys):
    path = BAD / entry
    rc, out, err = validate(capsys, path)
    assert rc == 1, out
    assert "Traceback" not in out + err
    errors = [ln for ln in out.splitlines() if ln.startswith("ERROR ")]
    assert errors, out
    assert all(str(path) in ln for ln in errors), errors  # the file (or a file under the directory)
    text = "\n".join(errors)
    for fragment in EXPECTED[entry]:
        assert fragment in text, f"{fragment!r} not in {text}"
    assert out.rstrip().endswith(f"{len(errors)} problem" + ("s" if len(errors) != 1 else ""))


@pytest.mark.parametrize("entry", [e for e in BAD_ENTRIES if (BAD / e).is_file()])
def test_loaders_raise_only_instructmt_errors(entry):
    """The library path (load_path) fails with our error class, never a stray exception."""
    with pytest.raises(InstructMTError) as info:
        load_path(BAD / entry)
    assert str(BAD) in str(info.value) or entry in str(info.value)  # the file at fault (a YAML's source, say)


def test_duplicate_names_are_refused_when_loading_the_directory():
    with pytest.raises(InstructMTError, match="duplicate task name 'dup_task'"):
        from instructmt.tasks.registry import TaskRegistry
        TaskRegistry(load_path(BAD / "duplicate_names"))


def test_whole_bad_directory_at_once_reports_every_entry(capsys):
    rc, out, err = validate(capsys, BAD)
    assert rc == 1 and "Traceback" not in out + err
    for entry in BAD_ENTRIES:
        if entry in ("not_a_task_file.dat", "box_missing_definition.json"):
            # inside a directory a file of no known format is skipped, with the reason
            assert f"SKIP  {BAD / entry}: no known task format" in out
        elif entry == "sst_non_utf8.csv":  # a YAML declares it and reports its error
            assert f"SKIP  {BAD / entry}: declared in {BAD / 'yaml_fields_source_not_utf8.yaml'}" in out
        else:
            assert f"ERROR {BAD / entry}" in out, entry
    assert "0 files loaded" not in out  # the YAMLs' valid sources still load


# --- a task both seen and held out -----------------------------------------------------------
def test_task_both_seen_and_held_out_is_refused_by_resolve_tasks():
    from instructmt.config import DataConfig
    from instructmt.training.task_setup import resolve_tasks
    data = DataConfig(tasks=[str(REPO / "tasks" / "sample")], seen=["task901_uppercase_words", "task951_min_number"],
                      held_out=["task951_min_number"])
    with pytest.raises(SplitOverlapError, match="both seen and held out: task951_min_number"):
        resolve_tasks(data)


def test_task_both_seen_and_held_out_via_train_cli(tmp_path, capsys):
    cfg = tmp_path / "overlap.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  tasks: [{REPO / 'tasks' / 'sample'}]\n"
                   "  seen: [task901_uppercase_words, task951_min_number]\n  held_out: [task951_min_number]\n")
    rc = main(["train", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip() == "instructmt train: error: 1 task(s) are both seen and held out: task951_min_number"
    assert not (tmp_path / "run" / "model").exists()


def test_mixture_matching_a_test_split_task_is_refused(tmp_path):
    """A mixture whose entries match a task its source's splits/test_tasks.txt holds out must not
    silently train on it."""
    from instructmt.config import DataConfig
    from instructmt.training.task_setup import resolve_tasks
    mix = tmp_path / "leaky.yaml"
    mix.write_text(f"mixture: leaky\nallow_absolute: true\nsources: [{REPO / 'tasks' / 'sample'}]\n"
                   "entries: ['task90*', 'task951_min_number']\n")
    with pytest.raises(SplitOverlapError, match="task951_min_number"):
        resolve_tasks(DataConfig(tasks=[str(mix)]))
    mix.write_text(f"mixture: clean\nallow_absolute: true\nsources: [{REPO / 'tasks' / 'sample'}]\n"
                   "entries: ['task90*']\n")
    split = resolve_tasks(DataConfig(tasks=[str(mix)]))
    assert "task951_min_number" in [t.name for t in split.held_out]
    assert all(t.name.startswith("task90") for t in split.seen)


# --- inputs that only warn -------------------------------------------------------------------
WARN_NOTES = {
    "chebi_unparseable_smiles.txt": ["1 SMILES RDKit cannot parse, kept as text", "line 3 'C1CC('"],
    "reactions_unparseable_smiles.csv": ["1 reactions hold SMILES RDKit cannot parse, kept as text", "line 3"],
    # says what it did when tokenized (below), not when validated
    "task990_huge_input.json": [],
}


def test_every_warn_entry_has_an_expectation():
    assert WARN_ENTRIES == sorted(WARN_NOTES)


@pytest.mark.parametrize("entry", WARN_ENTRIES)
def test_warn_inputs_load_and_say_what_they_did(entry, capsys):
    pytest.importorskip("rdkit") if "smiles" in entry else None
    rc, out, err = validate(capsys, WARN / entry)
    assert rc == 0, out
    assert "Traceback" not in out + err and "ERROR" not in out
    notes = [ln for ln in out.splitlines() if ln.startswith("NOTE ")]
    for fragment in WARN_NOTES[entry]:
        assert any(fragment in n for n in notes), (fragment, notes)


def _huge_split():
    from instructmt.tasks.registry import TaskRegistry
    from instructmt.training.task_setup import TaskSplit
    huge = load_path(WARN / "task990_huge_input.json")[0]
    other = load_path(REPO / "tasks" / "sample" / "task951_min_number.json")[0]
    assert len(huge.instances[0].input) > 40_000
    return TaskSplit(TaskRegistry([huge, other]), [huge], [other])


def test_huge_instance_is_truncated_with_a_warning_in_training_and_eval(tmp_path, caplog):
    """A ~46 KB input must not crash training or evaluation: it is cut to max_source_length, and
    the log says how many prompts were truncated."""
    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import DataConfig, ModelConfig, TrainConfig
    from instructmt.evaluation.runner import evaluate_tasks
    from instructmt.models.loading import load_run
    from instructmt.training.trainer import train

    split = _huge_split()
    cfg = TrainConfig(output_dir=str(tmp_path / "run"),
                      model=ModelConfig(name_or_path="tiny-t5", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=150),
                      data=DataConfig(tasks=[str(WARN / "task990_huge_input.json")], encoding="def+pos1",
                                      max_source_length=40, max_target_length=8),
                      adapter=AdapterConfig(method="lora", r=2), max_steps=2, batch_size=4, log_every=1, seed=1)
    with caplog.at_level(logging.WARNING, logger="instructmt.data.tokenize"):
        res = train(cfg, split)
    assert res.steps == 2 and res.model_dir is not None
    assert any(re.fullmatch(r"\d+ prompt\(s\) longer than max_source_length=40 were truncated", r.getMessage())
               for r in caplog.records)
    caplog.clear()
    model, tok, meta = load_run(res.model_dir)
    with caplog.at_level(logging.WARNING, logger="instructmt.data.tokenize"):
        metrics = evaluate_tasks(model, tok, [split.seen[0]], kind=meta["kind"], output_dir=tmp_path / "eval",
                                 encoding="def+pos1", max_source_length=40, max_new_tokens=4, max_instances=3,
                                 batch_size=4)
    assert any("truncated" in r.getMessage() for r in caplog.records)
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and 0 <= metrics["exact_match"] <= 100
