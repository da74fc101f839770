"""Every command, given a path that does not exist or a bad flag value, answers with one line
`instructmt <cmd>: error: ...` and exit code 1 (our errors) or 2 (argparse), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from instructmt.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "tasks" / "sample")
NOPE = "/nonexistent/instructmt-path"

# (argv, exit code, fragment of the error line). {tmp} is a fresh temporary directory.
CASES = [
    # tasks
    (["tasks", "list", NOPE], 1, "no such file or directory"),
    (["tasks", "show", "x", "--tasks", NOPE], 1, "no such file or directory"),
    (["tasks", "show", "no_such_task", "--tasks", SAMPLE], 1, "unknown task 'no_such_task'"),
    (["tasks", "show", "task951_min_number", "--tasks", SAMPLE, "--instance", "x"], 2, "invalid int value"),
    # prompt
    (["prompt", "show", "x", "--tasks", NOPE], 1, "no such file or directory"),
    (["prompt", "show", "task951_min_number", "--tasks", SAMPLE, "--encoding", "bogus"], 1, "unknown encoding"),
    (["prompt", "show", "task951_min_number", "--tasks", SAMPLE, "--instance", "999"], 1, "out of range"),
    (["prompt", "show", "task951_min_number", "--tasks", SAMPLE, "--tokenizer", NOPE], 1, "cannot load tokenizer"),
    (["prompt", "show", "task951_min_number", "--max-source-length", "many"], 2, "invalid int value"),
    # train
    (["train", "--tasks", NOPE, "--output", "{tmp}/run"], 1, "no such file or directory"),
    (["train", "--config", NOPE + ".yaml"], 1, "cannot read config"),
    (["train", "--model", NOPE, "--output", "{tmp}/run"], 1, "does not exist"),
    (["train", "--set", "no_equals_sign"], 1, "must look like key.sub=value"),
    (["train", "--set", "max_steps=abc"], 1, "expected int, got 'abc'"),
    (["train", "--set", "data.bogus_key=1"], 1, "unknown key 'bogus_key'"),
    (["train", "--max-steps", "x"], 2, "invalid int value: 'x'"),
    (["train", "--lr", "fast"], 2, "invalid float value"),
    (["train", "--mixed-precision", "fp8"], 2, "invalid choice"),
    (["train", "--tasks", SAMPLE, "--adapter", "bogus", "--output", "{tmp}/run"], 1, "unknown adapter method 'bogus'"),
    (["train", "--tasks", SAMPLE, "--seen", "no_such_task", "--output", "{tmp}/run"], 1, "unknown task 'no_such_task'"),
    # eval
    (["eval", "--model", NOPE, "--output", "{tmp}/eval"], 1, "is not an instructmt model directory"),
    (["eval", "--model", SAMPLE, "--output", "{tmp}/eval"], 1, "is not an instructmt model directory"),
    (["eval", "--model", NOPE, "--output", "{tmp}/eval", "--max-instances", "x"], 2, "invalid int value"),
    (["eval", "--model", NOPE, "--output", "{tmp}/eval", "--demos", "psychic"], 2, "invalid choice"),
    (["eval", "--output", "{tmp}/eval"], 2, "the following arguments are required: --model"),
    # demo
    (["demo", "--tasks", NOPE, "--output", "{tmp}/demo"], 1, "no such file or directory"),
    (["demo", "--steps", "x"], 2, "invalid int value"),
    # publish
    (["publish", NOPE, "--repo-id", "me/run", "--dry-run"], 1, "does not exist"),
    (["publish", SAMPLE, "--repo-id", "me/run", "--dry-run"], 1, "is not a run directory"),
    (["publish", NOPE, "--repo-id", "me/run", "--tokenizer", "sometimes"], 2, "invalid choice"),
    # transfer
    (["transfer", "--from", NOPE, "--sources", "a", "--target", "b"], 1, "not found under"),
    (["transfer", "--sources", "a", "--target", "b", "--variant", "bogus"], 2, "invalid choice"),
    (["transfer", "--from", NOPE, "--sources", "a", "--target", "b", "--lr", "x"], 2, "invalid float value"),
    # qfa
    (["qfa", "search", "--run", NOPE, "--budget", "3"], 1, "is not an instructmt model directory"),
    (["qfa", "export", "--run", NOPE, "--config", "3", "--output", "{tmp}/q"], 1,
     "is not an instructmt model directory"),
    (["qfa", "search", "--run", NOPE, "--budget", "3", "--metric", "vibes"], 2, "invalid choice"),
    # retrieve
    (["retrieve", "query", "--tasks", NOPE, "--task", "x", "--input", "y"], 1, "no such file or directory"),
    (["retrieve", "build-index", "--tasks", NOPE, "--retriever", "{tmp}/r"], 1, "no such file or directory"),
    (["retrieve", "train", "--tasks", NOPE, "--lm", NOPE, "--output", "{tmp}/r"], 1, "no such file or directory"),
    (["retrieve", "query", "--tasks", SAMPLE, "--task", "task951_min_number", "--input", "1 2", "--demos", "udr",
      "--retriever", NOPE], 1, "is not a saved retriever"),
    (["retrieve", "query", "--tasks", SAMPLE, "--task", "x", "--input", "y", "-k", "few"], 2, "invalid int value"),
    # adapt
    (["adapt", "--from", NOPE, "--task", "x", "--output", "{tmp}/a"], 1, "is not a trained run"),
    (["adapt", "--from", NOPE, "--task", "x", "--output", "{tmp}/a", "--mode", "magic"], 2, "invalid choice"),
    (["adapt", "--from", NOPE, "--task", "x", "--output", "{tmp}/a", "--shots", "x"], 2, "invalid int value"),
]


def _ids():
    return [" ".join(a)[:70] for a, _, _ in CASES]


def _call(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_every_command_is_covered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    covered = {argv[0] for argv, _, _ in CASES}
    missing = sorted(set(sub.choices) - covered)
    assert not missing, f"add rows for {missing} to tests/test_cli_errors.py::CASES"


@pytest.mark.parametrize("argv, code, fragment", CASES, ids=_ids())
def test_bad_path_or_flag_is_one_error_line(argv, code, fragment, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc, out, err = _call(argv, capsys)
    assert rc == code, (rc, out[-500:], err[-1500:])
    assert "Traceback" not in out + err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1, err
    cmd = argv[0]
    assert errors[0].startswith(f"instructmt {cmd}"), errors[0]  # "instructmt qfa search: error: ..." for argparse
    assert err.rstrip().splitlines()[-1] == errors[0]  # the error is the last thing said
    assert fragment in errors[0], errors[0]


def test_no_command_prints_help_and_exits_2(capsys):
    rc, out, _ = _call([], capsys)
    assert rc == 2 and "usage: instructmt" in out


@pytest.mark.slow
def test_the_installed_entry_point_says_the_same():
    """Through `python -m instructmt` (the console script's path): exit code and one line."""
    proc = subprocess.run([sys.executable, "-m", "instructmt", "eval", "--model", NOPE, "--output", NOPE],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"instructmt eval: error: {NOPE} is not an instructmt model directory " \
                                  "(no instructmt_run.json)"
