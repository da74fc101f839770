"""Hostile use of every command (issue 19): each case runs the CLI and asserts exit non-zero, exactly
one message line on stderr that names the key or path, no traceback, and every file that existed
before (the run, the tasks, earlier reports, bystander files) byte-identical afterwards.

Classes: outputs that would destroy something (1), concurrent writers (2), numbers out of range
(3), OS and file errors (4: damaged run files, full / read-only output through monkeypatched
writers), task-directory edge cases (5), YAML bombs (6), publish dry-run (7)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from instructmt.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tasks" / "sample"
TASKS = ("task901_uppercase_words", "task902_reverse_word_order", "task951_min_number")


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def workspace(tmp_path_factory, worker_id) -> Path:
    """tasks/ (three sample tasks + splits), run/ (a 2-step tiny LoRA run with a checkpoint),
    report/ (an eval report of that run), bystander.txt. Built once per pytest run and shared by
    the xdist workers (under a file lock); no test may change it — each asserts it did not."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # this run's folder, shared by its workers
    ws = root / "cli_misuse_workspace"
    with FileLock(str(root / "cli_misuse_workspace.lock")):
        if not (ws / ".ready").exists():
            shutil.rmtree(ws, ignore_errors=True)
            _build_workspace(ws)
            (ws / ".ready").write_text("")
    return ws


def _build_workspace(ws: Path) -> None:
    from instructmt.adapters.base import AdapterConfig
    from instructmt.config import DataConfig, ModelConfig, TrainConfig
    from instructmt.evaluation.runner import evaluate_tasks
    from instructmt.models.loading import load_run
    from instructmt.tasks.registry import load_path
    from instructmt.training.trainer import train

    tasks = ws / "tasks"
    (tasks / "splits").mkdir(parents=True)
    for name in TASKS:
        shutil.copy(SAMPLE / f"{name}.json", tasks / f"{name}.json")
    (tasks / "splits" / "train_tasks.txt").write_text("task901_uppercase_words\ntask902_reverse_word_order\n")
    (tasks / "splits" / "test_tasks.txt").write_text("task951_min_number\n")
    cfg = TrainConfig(output_dir=str(ws / "run"),
                      model=ModelConfig(name_or_path="tiny-t5", tiny_d_model=32, tiny_layers=1, tiny_vocab_size=200),
                      data=DataConfig(tasks=[str(tasks)], encoding="def", max_instances_per_task=16,
                                      max_source_length=48, max_target_length=6),
                      adapter=AdapterConfig(method="lora", r=2), max_steps=2, batch_size=8, save_every=1,
                      log_every=1, seed=3)
    train(cfg)
    model, tok, meta = load_run(ws / "run" / "model")
    evaluate_tasks(model, tok, load_path(tasks / "task951_min_number.json"), kind=meta["kind"],
                   output_dir=ws / "report", max_instances=2, max_new_tokens=2, max_source_length=48,
                   show_progress=False)
    (ws / "bystander.txt").write_text("do not touch\n")


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (the per-test tokenization cache, tmp_path/cache, aside)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink() and "cache" not in p.relative_to(root).parts[:1]:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_run(ws: Path, tmp: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(ws / "run", dst)
    return dst


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


PROGRESS = re.compile(r"\d+%\|.*\|")  # a tqdm bar (loading weights, saving the token cache, training)


def message_lines(err: str) -> list[str]:
    """stderr lines that are messages: not progress bars, not empty."""
    lines = [ln.split("\r")[-1].strip() for ln in err.splitlines()]
    return [ln for ln in lines if ln and not PROGRESS.search(ln)]


def assert_refused(argv, fragments, capsys, roots, *, strict: bool = True) -> str:
    """Exit non-zero, one `instructmt <cmd>: error:` line naming `fragments`, no traceback, and
    no file under `roots` created, changed or removed."""
    before = snapshot(*roots)
    rc, out, err = call(argv, capsys)
    assert rc not in (0, None), (out[-800:], err[-800:])
    assert "Traceback" not in out + err
    lines = message_lines(err)
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1, err
    if strict:
        assert lines == errors, f"more than the one message line on stderr: {lines}"
    else:
        assert lines[-1] == errors[0], lines
    assert errors[0].startswith(f"instructmt {argv[0]}")
    for f in fragments:
        assert str(f) in errors[0], f"{f!r} not in {errors[0]}"
    assert snapshot(*roots) == before, "a file that existed before was changed, removed or added"
    return errors[0]


def eval_argv(ws: Path, output, *extra) -> list:
    return ["eval", "--model", ws / "run", "--tasks", ws / "tasks" / "task951_min_number.json",
            "--output", output, "--max-instances", "2", "--max-new-tokens", "2", *extra]


def train_argv(ws: Path, output, *extra) -> list:
    return ["train", "--tasks", ws / "tasks", "--output", output, "--max-steps", "1", "--batch-size", "8",
            "--set", "model.tiny_d_model=32", "--set", "model.tiny_layers=1", "--set", "model.tiny_vocab_size=200",
            "--set", "data.max_source_length=48", "--set", "data.max_target_length=6", *extra]


# --- class 1: outputs that would destroy something -----------------------------------------------
OUTPUT_CASES = [
    ("eval_output_is_run", lambda ws: eval_argv(ws, ws / "run"), ["is a training run directory"]),
    ("eval_output_is_model", lambda ws: eval_argv(ws, ws / "run" / "model"),
     ["would overwrite part of the training run"]),
    ("eval_output_in_model", lambda ws: eval_argv(ws, ws / "run" / "model" / "eval"),
     ["lies inside a model directory"]),
    ("eval_output_is_checkpoint", lambda ws: eval_argv(ws, ws / "run" / "checkpoints" / "step-1"),
     ["lies inside a checkpoint directory"]),
    ("eval_output_is_checkpoints_dir", lambda ws: eval_argv(ws, ws / "run" / "checkpoints"),
     ["would overwrite part of the training run"]),
    ("eval_output_is_existing_file", lambda ws: eval_argv(ws, ws / "bystander.txt"), ["is an existing file"]),
    ("eval_output_is_run_config", lambda ws: eval_argv(ws, ws / "run" / "config.yaml"), ["is an existing file"]),
    ("eval_output_holds_the_run", lambda ws: eval_argv(ws, ws), ["--output"]),
    ("eval_output_is_tasks_dir", lambda ws: ["eval", "--model", ws / "run", "--tasks", ws / "tasks",
                                             "--output", ws / "tasks"], ["overlaps the input"]),
    ("eval_output_in_tasks_dir", lambda ws: ["eval", "--model", ws / "run", "--tasks", ws / "tasks",
                                             "--output", ws / "tasks" / "report"], ["overlaps the input"]),
    ("eval_output_is_task_file", lambda ws: eval_argv(ws, ws / "tasks" / "task951_min_number.json"),
     ["is an existing file"]),
    ("eval_output_is_foreign_dir", lambda ws: eval_argv(ws, ws / "tasks" / "splits"),
     ["not an instructmt report directory"]),
    ("train_output_is_existing_file", lambda ws: train_argv(ws, ws / "bystander.txt"), ["is an existing file"]),
    ("train_output_is_existing_run", lambda ws: train_argv(ws, ws / "run"), ["already holds a training run",
                                                                              "--resume"]),
    ("train_output_in_model", lambda ws: train_argv(ws, ws / "run" / "model" / "again"),
     ["lies inside a model directory"]),
    ("train_output_is_tasks", lambda ws: train_argv(ws, ws / "tasks"), ["overlaps the input"]),
    ("train_output_is_report", lambda ws: train_argv(ws, ws / "report"), ["exists and is not empty"]),
    ("publish_output_is_file", lambda ws: ["publish", ws / "run", "--repo-id", "me/x", "--dry-run",
                                           "--output", ws / "bystander.txt"], ["is an existing file"]),
    ("publish_output_is_model", lambda ws: ["publish", ws / "run", "--repo-id", "me/x", "--dry-run",
                                            "--output", ws / "run" / "model"],
     ["would overwrite part of the training run"]),
    ("qfa_export_output_is_model", lambda ws: ["qfa", "export", "--run", ws / "run", "--config", "3",
                                               "--output", ws / "run" / "model"],
     ["would overwrite part of the training run"]),
    ("qfa_search_output_is_file", lambda ws: ["qfa", "search", "--run", ws / "run", "--budget", "3",
                                              "--output", ws / "bystander.txt"], ["is an existing file"]),
    ("adapt_output_is_source_run", lambda ws: ["adapt", "--from", ws / "run", "--task", "task951_min_number",
                                               "--output", ws / "run"], ["overlaps the input"]),
    ("retrieve_train_output_is_file", lambda ws: ["retrieve", "train", "--tasks", ws / "tasks", "--lm", ws / "run",
                                                  "--output", ws / "bystander.txt"], ["is an existing file"]),
    ("retrieve_train_output_is_tasks", lambda ws: ["retrieve", "train", "--tasks", ws / "tasks", "--lm",
                                                   ws / "run", "--output", ws / "tasks"], ["overlaps the input"]),
]


@pytest.mark.parametrize("name, make, fragments", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_output_that_would_destroy_something_is_refused(name, make, fragments, workspace, capsys):
    assert_refused(make(workspace), fragments, capsys, [workspace])


def test_existing_report_is_replaced_only_when_it_is_ours(workspace, tmp_path, capsys):
    """A report directory with our marker is replaced (exit 0); the run beside it is untouched."""
    out = tmp_path / "report"
    shutil.copytree(workspace / "report", out)
    (out / "metrics.json").write_text("{}")  # an older report
    run_before = snapshot(workspace / "run")
    rc, _, err = call(eval_argv(workspace, out), capsys)
    assert rc == 0, err
    assert json.loads((out / "metrics.json").read_text())["num_instances"] == 2.0
    assert (out / ".instructmt-report").is_file()
    assert snapshot(workspace / "run") == run_before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temp or moved-aside folder left


def test_help_states_the_output_rules(capsys):
    for cmd in ("eval", "train"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "Refused when it is an existing file" in text
        assert "at once is refused" in text
    assert ".instructmt-report" in " ".join(_help("eval").split())


def _help(cmd: str) -> str:
    from instructmt.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[cmd].format_help()


# --- class 3: numbers ----------------------------------------------------------------------------
NUMBER_CASES = [
    (["--batch-size", "0"], ["batch_size (--batch-size)", "[1, 1048576]", "got 0"]),
    (["--batch-size", "-4"], ["batch_size (--batch-size)", "got -4"]),
    (["--grad-accum", "0"], ["grad_accum (--grad-accum)", "got 0"]),
    (["--rank", "0"], ["adapter.r (--rank)", "got 0"]),
    (["--rank", "-2"], ["adapter.r (--rank)"]),
    (["--max-steps", "0"], ["max_steps (--max-steps)", "got 0"]),
    (["--max-steps", "-1"], ["max_steps (--max-steps)"]),
    (["--seed", "-1"], ["seed (--seed)", "[0, 4294967295]"]),
    (["--seed", "99999999999999999999999"], ["seed (--seed)", "[0, 4294967295]"]),
    (["--lr", "nan"], ["learning_rate (--lr)", "got nan"]),
    (["--lr", "0"], ["learning_rate (--lr)"]),
    (["--epochs", "inf"], ["epochs (--epochs)", "got inf"]),
    (["--save-every", "-3"], ["save_every (--save-every)"]),
    (["--set", "data.temperature=0"], ["data.temperature", "[0.01, 100]", "got 0"]),
    (["--set", "data.temperature=1e-30"], ["data.temperature", "got 1e-30"]),
    (["--set", "data.temperature=.nan"], ["data.temperature", "got nan"]),
    (["--set", "data.temperature=.inf"], ["data.temperature", "got inf"]),
    (["--set", "data.mixing_cap=0"], ["data.mixing_cap", "got 0"]),
    (["--set", "data.max_instances_per_task=0"], ["data.max_instances_per_task", "got 0"]),
    (["--set", "data.max_target_length=-1"], ["data.max_target_length"]),
    (["--set", "batch_size=2.5"], ["batch_size (--batch-size)", "got 2.5"]),
    (["--set", "batch_size=true"], ["batch_size (--batch-size)", "got True"]),
    (["--set", "max_steps=1e400"], ["max_steps", "expected int, got '1e400'"]),
    (["--set", "warmup_steps=" + "9" * 50], ["warmup_steps", "(50 digits)"]),
    (["--set", "resume=5"], ["resume must be true or false"]),
    (["--set", "adapter.dropout=1.5"], ["adapter.dropout", "[0, 0.99]"]),
    (["--set", "seed.x=1"], ["seed (--seed)"]),
]


@pytest.mark.parametrize("flags, fragments", NUMBER_CASES, ids=[" ".join(f)[:40] for f, _ in NUMBER_CASES])
def test_train_number_out_of_range_names_key_and_range(flags, fragments, workspace, tmp_path, capsys):
    assert_refused(train_argv(workspace, tmp_path / "new_run", *flags), fragments, capsys, [workspace, tmp_path])


OTHER_COMMAND_NUMBERS = [
    (["adapt", "--from", "{run}", "--task", "task951_min_number", "--output", "{tmp}/a", "--shots", "0"],
     ["shots (--shots)", "got 0"]),
    (["adapt", "--from", "{run}", "--task", "task951_min_number", "--output", "{tmp}/a", "--steps", "-1"],
     ["steps (--steps)"]),
    (["adapt", "--from", "{run}", "--task", "task951_min_number", "--output", "{tmp}/a", "--lr", "inf"],
     ["lr (--lr)", "got inf"]),
    (["qfa", "search", "--run", "{run}", "--budget", "3", "--n-initial", "0"], ["n_initial (--n-initial)"]),
    (["qfa", "search", "--run", "{run}", "--budget", "3", "--val-per-task", "-2"], ["val_per_task (--val-per-task)"]),
    (["retrieve", "query", "--tasks", "{tasks}", "--task", "task951_min_number", "--input", "1 2", "-k", "0"],
     ["k (--k)", "got 0"]),
    (["retrieve", "train", "--tasks", "{tasks}", "--lm", "{run}", "--output", "{tmp}/r", "--list-size", "1"],
     ["list_size (--list-size)"]),
    (["retrieve", "build-index", "--tasks", "{tasks}", "--retriever", "{tmp}/r", "--ivf-threshold", "0"],
     ["ivf_threshold (--ivf-threshold)"]),
    (["prompt", "show", "task951_min_number", "--tasks", "{tasks}", "--max-source-length", "0"],
     ["max_source_length (--max-source-length)"]),
    (["tasks", "show", "task951_min_number", "--tasks", "{tasks}", "--instance", "-1"], ["instance (--instance)"]),
    (["transfer", "--sources", "a", "--target", "b", "--lr", "nan"], ["lr (--lr)", "got nan"]),
]


@pytest.mark.parametrize("argv, fragments", OTHER_COMMAND_NUMBERS,
                         ids=[" ".join(a[:2] + a[-2:]) for a, _ in OTHER_COMMAND_NUMBERS])
def test_other_commands_check_their_numbers(argv, fragments, workspace, tmp_path, capsys):
    subst = {"{run}": str(workspace / "run"), "{tasks}": str(workspace / "tasks"), "{tmp}": str(tmp_path)}
    def fill(arg: str) -> str:
        for key, value in subst.items():
            arg = arg.replace(key, value)
        return arg
    argv = [fill(a) for a in argv]
    assert_refused(argv, fragments, capsys, [workspace, tmp_path])


def test_yaml_config_numbers_are_checked_too(workspace, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("batch_size: 99999999999999999999\nseed: 3\n")
    assert_refused(["train", "--config", cfg, "--tasks", workspace / "tasks", "--output", tmp_path / "r"],
                   ["batch_size (--batch-size)", "[1, 1048576]", "got 99999999999999999999"], capsys, [workspace, tmp_path])


EVAL_NUMBER_CASES = [
    (["--max-instances", "0"], ["max_instances (--max-instances)", "got 0"]),
    (["--batch-size", "0"], ["batch_size (--batch-size)", "got 0"]),
    (["--max-new-tokens", "0"], ["max_new_tokens (--max-new-tokens)", "got 0"]),
    (["--max-new-tokens", "-5"], ["max_new_tokens (--max-new-tokens)"]),
    (["--k", "0"], ["k (--k)", "got 0"]),
    (["--seed", "-1"], ["seed (--seed)"]),
    (["--demo-budget", "0"], ["demo_budget (--demo-budget)"]),
]


@pytest.mark.parametrize("flags, fragments", EVAL_NUMBER_CASES, ids=[" ".join(f) for f, _ in EVAL_NUMBER_CASES])
def test_eval_number_out_of_range_names_flag_and_range(flags, fragments, workspace, tmp_path, capsys):
    # the later flag wins in argparse, so these override eval_argv's own values
    assert_refused(eval_argv(workspace, tmp_path / "ev", *flags), fragments, capsys, [workspace, tmp_path])
    assert not (tmp_path / "ev").exists()


def test_mixture_whose_rates_are_all_zero_is_refused_by_train(workspace, tmp_path, capsys):
    shutil.copytree(workspace / "tasks", tmp_path / "tasks")
    mix = tmp_path / "zero_mixture.yaml"
    mix.write_text("mixture: z\nsources: [tasks]\nentries:\n  - {pattern: 'task90*', rate: 0}\n")
    assert_refused(train_argv(workspace, tmp_path / "r", "--tasks", mix), ["every entry's rate is 0"],
                   capsys, [workspace, tmp_path])


# --- class 4: damaged files and OS errors --------------------------------------------------------
def _truncate(p: Path, n: int) -> None:
    p.write_bytes(p.read_bytes()[:n])


DAMAGE = [
    ("truncated_run_meta", lambda r: _truncate(r / "model" / "instructmt_run.json", 60),
     ["instructmt_run.json", "corrupted run metadata"]),
    ("run_meta_not_an_object", lambda r: (r / "model" / "instructmt_run.json").write_text("[1, 2]"),
     ["instructmt_run.json", "corrupted run metadata"]),
    ("corrupted_safetensors_header", lambda r: (r / "model" / "adapter_model.safetensors").write_bytes(
        b"\x50\x00\x00\x00\x00\x00\x00\x00{\"bad"), ["cannot load the model weights", "SafetensorError"]),
    ("truncated_base_weights", lambda r: _truncate(r / "model" / "base" / "model.safetensors", 100),
     ["cannot load the model weights"]),
    ("tokenizer_file_missing", lambda r: (r / "model" / "tokenizer.json").unlink(),
     ["tokenizer's vocabulary file is missing"]),
    ("tokenizer_vocab_empty", lambda r: _empty_vocab(r / "model" / "tokenizer.json"),
     ["cannot load the tokenizer"]),
]


def _empty_vocab(p: Path) -> None:
    data = json.loads(p.read_text())
    data["model"]["vocab"] = []
    p.write_text(json.dumps(data))


@pytest.mark.parametrize("name, damage, fragments", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_run_files_are_one_line_naming_the_path(name, damage, fragments, workspace, tmp_path, capsys):
    run = copy_run(workspace, tmp_path)
    damage(run)
    line = assert_refused(["eval", "--model", run, "--tasks", workspace / "tasks" / "task951_min_number.json",
                           "--output", tmp_path / "ev", "--max-instances", "1"], fragments, capsys,
                          [workspace, tmp_path])
    assert str(run) in line


def test_truncated_trainer_state_on_resume(workspace, tmp_path, capsys):
    run = copy_run(workspace, tmp_path)
    state = next((run / "checkpoints").glob("step-*")) / "trainer_state.json"
    _truncate(state, 10)
    assert_refused(train_argv(workspace, run, "--resume", "--max-steps", "3", "--rank", "2"),
                   [str(state), "corrupted checkpoint state", "--resume"], capsys, [workspace, tmp_path],
                   strict=False)


def test_split_file_not_utf8(workspace, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    shutil.copytree(workspace / "tasks", tasks)
    (tasks / "splits" / "test_tasks.txt").write_bytes(b"task951_min_\xe9number\n")
    assert_refused(train_argv(workspace, tmp_path / "r", "--tasks", tasks),
                   ["test_tasks.txt", "split file is not valid UTF-8"], capsys, [workspace, tmp_path])


def _fail_writes_under(monkeypatch, root: Path, err: int) -> None:
    """Every file opened for writing and every directory made under `root` fails with `err`
    (a full or read-only file system, seen through the writers' own calls)."""
    import builtins
    root = str(root)
    real_open, real_mkdir, real_os_mkdir = builtins.open, Path.mkdir, os.mkdir

    def under(p) -> bool:
        return os.path.abspath(os.fspath(p)).startswith(root)

    def fake_open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and under(file) and any(c in mode for c in "wax+"):
            raise OSError(err, os.strerror(err), os.fspath(file))
        return real_open(file, mode, *a, **kw)

    def fake_mkdir(self, *a, **kw):
        if under(self) and not self.exists():
            raise OSError(err, os.strerror(err), str(self))
        return real_mkdir(self, *a, **kw)

    def fake_os_mkdir(path, *a, **kw):
        if under(path) and not os.path.exists(path):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_os_mkdir(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(Path, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "mkdir", fake_os_mkdir)


@pytest.mark.parametrize("err, fragment", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"),
                                           (errno.EACCES, "permission denied")])
def test_eval_on_a_full_or_read_only_output_keeps_the_earlier_report(err, fragment, workspace, tmp_path,
                                                                     capsys, monkeypatch):
    out = tmp_path / "report"
    shutil.copytree(workspace / "report", out)
    _fail_writes_under(monkeypatch, tmp_path, err)
    line = assert_refused(eval_argv(workspace, out), [fragment], capsys, [workspace, tmp_path], strict=False)
    assert str(tmp_path) in line
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("err, fragment", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_resume_on_a_full_disk_leaves_the_earlier_run_unchanged(err, fragment, workspace, tmp_path, capsys,
                                                               monkeypatch):
    """Today's bug: a failed run on a full disk rewrote the earlier run's config.yaml and logs.jsonl."""
    run = copy_run(workspace, tmp_path)
    _fail_writes_under(monkeypatch, run, err)
    assert_refused(train_argv(workspace, run, "--resume", "--max-steps", "3", "--rank", "2"), [fragment, str(run)],
                   capsys,
                   [workspace, tmp_path], strict=False)


def test_train_into_a_read_only_parent(workspace, tmp_path, capsys, monkeypatch):
    _fail_writes_under(monkeypatch, tmp_path / "ro", errno.EROFS)
    assert_refused(train_argv(workspace, tmp_path / "ro" / "run"), ["read-only", str(tmp_path / "ro")],
                   capsys, [workspace, tmp_path])


# --- class 2: concurrent writers -----------------------------------------------------------------
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from instructmt.io_safety import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


@pytest.fixture
def other_writer():
    """Another process holding the output lock (as a running `eval` / `train` does)."""
    procs = []

    def start(target: Path, seconds: float = 60.0):
        p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(target), str(seconds)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_second_eval_on_the_same_output_is_refused(workspace, tmp_path, capsys, other_writer):
    out = tmp_path / "report"
    shutil.copytree(workspace / "report", out)
    other_writer(out)
    assert_refused(eval_argv(workspace, out), ["another instructmt process is writing", str(out)], capsys,
                   [workspace, tmp_path])


def test_second_train_on_the_same_output_is_refused(workspace, tmp_path, capsys, other_writer):
    run = copy_run(workspace, tmp_path)
    other_writer(run)
    assert_refused(train_argv(workspace, run, "--resume", "--save-every", "1"),
                   ["another instructmt process is writing", str(run)], capsys, [workspace, tmp_path])


def test_lock_is_released_and_leaves_no_file(tmp_path):
    from instructmt.io_safety import output_lock
    target = tmp_path / "out"
    with output_lock(target):
        assert (tmp_path / ".out.instructmt-lock").exists()
    assert list(tmp_path.iterdir()) == []
    with output_lock(target):  # and can be taken again
        pass


def test_temp_dirs_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from instructmt.io_safety import atomic_replace_dir
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)  # a pid that has exited
    stale = tmp_path / f".tmp-out-{dead}-deadbeef"
    stale.mkdir()
    (stale / "half.txt").write_text("half a report")
    live = tmp_path / f".tmp-out-{os.getpid()}-cafecafe"  # this process: still running, kept
    live.mkdir()
    atomic_replace_dir(tmp_path / "out", lambda d: (d / "a.txt").write_text("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])


def test_concurrent_atomic_writers_use_their_own_temp_dirs(tmp_path):
    """Two writers of one output at once (what the lock prevents at the CLI): neither sees the other's
    files, no traceback, and the output is one complete version."""
    from instructmt.io_safety import atomic_replace_dir
    barrier = threading.Barrier(2)
    temps, errors = [], []

    def writer(tag: str):
        def write(tmp: Path):
            temps.append(tmp)
            barrier.wait(timeout=10)
            for i in range(50):
                (tmp / f"part{i}.txt").write_text(tag)
            time.sleep(0.05)
        try:
            atomic_replace_dir(tmp_path / "out", write, marker=".instructmt-report")
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == 2 and not errors
    contents = {p.read_text() for p in (tmp_path / "out").glob("part*.txt")}
    assert len(contents) == 1 and len(list((tmp_path / "out").glob("part*.txt"))) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_two_eval_processes_racing_for_one_output(workspace, tmp_path):
    """Two real `instructmt eval` processes on one --output: each either writes a complete report or
    is refused in one line; never a traceback, never a half report."""
    out = tmp_path / "report"
    argv = [sys.executable, "-m", "instructmt"] + [str(a) for a in eval_argv(workspace, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert any(rc == 0 for rc, _ in results)
    for rc, err in results:
        assert "Traceback" not in err
        if rc != 0:
            assert "another instructmt process is writing" in err.strip().splitlines()[-1]
    assert json.loads((out / "metrics.json").read_text())["num_instances"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# --- class 5: task directories -------------------------------------------------------------------
def test_task_file_in_another_encoding_inside_a_directory_stops_training(workspace, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    shutil.copytree(workspace / "tasks", tasks)
    p = tasks / "task902_reverse_word_order.json"
    p.write_bytes(p.read_text(encoding="utf-8").encode("utf-16"))
    assert_refused(train_argv(workspace, tmp_path / "r", "--tasks", tasks),
                   [str(p), "not valid UTF-8", "convert the file to UTF-8"], capsys, [workspace, tmp_path])


def test_validate_exits_non_zero_for_an_unreadable_file_in_a_directory(tmp_path, capsys):
    shutil.copy(SAMPLE / "task901_uppercase_words.json", tmp_path / "task901_uppercase_words.json")
    (tmp_path / "notes.json").write_bytes('{"a": "caf\u00e9"}'.encode("latin-1"))
    rc, out, err = call(["tasks", "validate", tmp_path], capsys)
    assert rc == 1 and "Traceback" not in out + err
    assert f"ERROR {tmp_path / 'notes.json'}: not valid UTF-8" in out


def test_skipped_data_file_in_a_task_directory_is_loud(tmp_path, caplog):
    from instructmt.tasks.registry import load_path
    shutil.copy(SAMPLE / "task901_uppercase_words.json", tmp_path / "task901_uppercase_words.json")
    (tmp_path / "stray.json").write_text('{"not": "a task"}')
    with caplog.at_level("WARNING"):
        tasks = load_path(tmp_path)
    assert [t.name for t in tasks] == ["task901_uppercase_words"]
    assert f"skipped {tmp_path / 'stray.json'}: no known task format" in caplog.text


# --- class 6: YAML -------------------------------------------------------------------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_alias_bomb_config_fails_fast_in_one_line(workspace, tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB)
    t0 = time.time()
    assert_refused(["train", "--config", cfg, "--output", tmp_path / "r"],
                   [str(cfg), "aliases expand to more than 1,000,000 nodes"], capsys, [workspace, tmp_path])
    assert time.time() - t0 < 10


def test_oversized_config_is_refused(workspace, tmp_path, capsys):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("# " + "x" * (9 * 1024 * 1024) + "\nseed: 1\n")
    assert_refused(["train", "--config", cfg, "--output", tmp_path / "r"], [str(cfg), "byte limit"], capsys,
                   [workspace, tmp_path])


def test_config_not_utf8_and_surrogate_escape(workspace, tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"output_dir: caf\xe9\n")
    assert_refused(["train", "--config", bad], [str(bad), "not valid UTF-8"], capsys, [workspace, tmp_path])
    sur = tmp_path / "surrogate.yaml"
    sur.write_text('output_dir: "run\\ud800"\n')
    assert_refused(["train", "--config", sur], [str(sur), "surrogate escape \\ud800"], capsys, [workspace, tmp_path])


# --- class 7: publish dry run --------------------------------------------------------------------
@pytest.mark.parametrize("repo_id", ["me/a..b", "me/a--b", "me/name.git", "me/" + "n" * 97, "me/-x"])
def test_publish_dry_run_refuses_an_invalid_repo_id(repo_id, workspace, tmp_path, capsys):
    assert_refused(["publish", workspace / "run", "--repo-id", repo_id, "--dry-run", "--output", tmp_path / "o"],
                   ["--repo-id", repo_id[:20]], capsys, [workspace, tmp_path])


def test_publish_dry_run_refuses_a_run_missing_its_tokenizer(workspace, tmp_path, capsys):
    run = copy_run(workspace, tmp_path)
    (run / "model" / "tokenizer.json").unlink()
    assert_refused(["publish", run, "--repo-id", "me/x", "--dry-run", "--include-base", "--output", tmp_path / "o"],
                   [str(run / "model"), "has no tokenizer files"], capsys, [workspace, tmp_path])
