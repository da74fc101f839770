"""`instructmt tasks list|show|validate` over real samples, bundled tasks and broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructmt.cli import main
from instructmt.commands.tasks import scan, skip_reason

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.skipif(not SHARED.exists(), reason="shared data samples absent")
def test_validate_passes_over_every_shared_sample(capsys):
    rc, out, err = run(capsys, "tasks", "validate", str(SHARED))
    assert rc == 0, out[-3000:]
    assert "ERROR" not in out and "Traceback" not in out + err
    # every family is recognised
    for fmt in ("[sni_json]", "[box_instructions]", "[chebi20_tsv]", "[uspto_csv]", "[decanlp_squad]",
                "[decanlp_sst]", "[decanlp_nli]", "[decanlp_woz]", "[decanlp_wikisql]", "[decanlp_mwsc]",
                "[decanlp_cnn_dailymail]"):
        assert fmt in out, fmt
    # files skipped, with the reason
    assert "SKIP  " + str(SHARED / "decanlp" / "README.md") + ": README" in out
    assert str(SHARED / "box" / "LICENSE") + ": license" in out
    assert str(SHARED / "sni" / "manifest.tsv") + ": manifest" in out
    assert "url_list_all_train.txt: URL list" in out
    assert "official_test_tasks.txt: task split list" in out
    # BoX has instructions only; WikiSQL misses its tables: notes, not failures
    assert "32 BoX tasks have instructions but no instance file" in out
    assert "dev.tables.jsonl not found" in out
    assert " 0 problems" in out


def test_validate_passes_over_bundled_tasks(capsys):
    rc, out, _ = run(capsys, "tasks", "validate", str(REPO / "tasks"), str(Path(__file__).parent / "data" / "decanlp"))
    assert rc == 0, out[-3000:]
    assert "families/decanlp.yaml  [task_yaml] 4 tasks" in out
    assert "declared in" in out and "Dosage_Extraction" in out
    assert "[decanlp_qasrl]" in out and "[decanlp_qazre]" in out and "[decanlp_iwslt]" in out


def test_bad_yaml_fails_with_file_and_line_and_reports_everything(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"q": "a", "a": "b"}\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: custom\ntasks:\n  - name: x\n    source: d.jsonl\n    fields: {input: q, output: a}\n"
                   "    metrcs: [exact_match]\n  - name: y\n    source: ../escape.jsonl\n")
    broken = tmp_path / "broken.json"
    broken.write_text('{"Definition": "x", "Instances": [}')
    rc, out, err = run(capsys, "tasks", "validate", str(tmp_path))
    assert rc == 1
    assert "Traceback" not in out + err
    assert f"file {bad} line 6" in out and "'metrcs'" in out
    assert f"file {bad} line 7" in out and "escapes the data root" in out
    assert f"ERROR {broken}" in out and "malformed JSON" in out
    assert "3 problems" in out


def test_explicit_unknown_file_is_a_problem_but_in_a_directory_it_is_skipped(tmp_path, capsys):
    odd = tmp_path / "notes.dat"
    odd.write_text("hello")
    rc, out, _ = run(capsys, "tasks", "validate", str(odd))
    assert rc == 1 and "unrecognised task file format" in out
    (tmp_path / "README.md").write_text("# hi")
    (tmp_path / "t.jsonl").write_text(json.dumps({"task": "t", "input": "i", "output": "o"}) + "\n")
    rc, out, _ = run(capsys, "tasks", "validate", str(tmp_path))
    assert rc == 0 and "notes.dat: no known task format" in out and "README.md: README" in out


def test_list_and_family_filter(capsys):
    rc, out, _ = run(capsys, "tasks", "list", str(REPO / "tasks" / "families"), "--family", "box")
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("box_")]
    assert sorted(ln.split()[0] for ln in lines) == ["box_Drug_Class", "box_Fever_YesNo", "box_Gene_NER"]
    assert "3 tasks" in out


def test_show_renders_a_prompt(capsys):
    rc, out, _ = run(capsys, "tasks", "show", "decanlp_squad_sample", "--tasks", str(REPO / "tasks" / "families"))
    assert rc == 0
    assert "family:      decanlp" in out and "metrics:     nf1, nem (headline: nf1)" in out
    assert "--- prompt (instance fam0000, encoding qa):\nContext: " in out and "Question: Where does" in out
    rc, _, err = run(capsys, "tasks", "show", "decanlp_squad_sampel", "--tasks", str(REPO / "tasks" / "families"))
    assert rc == 1 and "did you mean 'decanlp_squad_sample'" in err


def test_skip_reasons():
    assert skip_reason(Path("LICENSE.MolT5")) == "license"
    assert skip_reason(Path("x/README.md")) == "README"
    assert skip_reason(Path("manifest.tsv")) == "manifest"


def test_scan_reports_duplicate_task_names(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "t.jsonl").write_text(json.dumps({"task": "same", "input": "i", "output": "o"}) + "\n")
    res = scan([tmp_path])
    assert any("task name 'same' is also produced by" in msg for _, msg in res.problems)
