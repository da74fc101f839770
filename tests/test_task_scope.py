"""Loading only what a run uses: an instance window, split-named files only, a parsed-task cache,
and the one-pass prompt tokenization. Each must give exactly what the full path gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instructmt.config import DataConfig
from instructmt.data.mixture import split_instances
from instructmt.errors import TaskFormatError
from instructmt.tasks import registry as reg
from instructmt.tasks.registry import load_path
from instructmt.tasks.scope import InstanceWindow, LoadScope
from instructmt.training.task_setup import resolve_tasks, training_scope


def _sni(n: int, name: str = "t", bad_at: int | None = None) -> dict:
    insts = [{"id": f"{name}-{i}", "input": f"input {i}", "output": [f"out {i}"]} for i in range(n)]
    if bad_at is not None:
        insts[bad_at] = {"id": f"{name}-{bad_at}", "input": 7, "output": ["x"]}  # input is not a string
    return {"Definition": ["Do it."], "Positive Examples": [{"input": "a", "output": "b", "explanation": ""}],
            "Instances": insts}


def _write(d: Path, name: str, data: dict | str) -> Path:
    p = d / f"{name}.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


@pytest.mark.parametrize("n,head,tail,want", [
    (10, 3, 2, [0, 1, 2, 8, 9]), (5, 3, 2, [0, 1, 2, 3, 4]), (4, 3, 2, [0, 1, 2, 3]), (6, 0, 2, [4, 5]),
    (6, 2, 0, [0, 1])])
def test_window_indices(n, head, tail, want):
    assert list(InstanceWindow(head, tail).indices(n)) == want


@pytest.mark.parametrize("n", [3, 50, 130])
@pytest.mark.parametrize("max_instances,holdback", [(100, 0), (100, 10), (20, 5), (1, 1)])
def test_window_picks_what_the_mixture_would_pick(n, max_instances, holdback, tmp_path):
    """split_instances on the windowed task = split_instances on the whole task."""
    f = _write(tmp_path, f"task001_n{n}", _sni(n))
    whole = load_path(f)[0]
    data = DataConfig(tasks=[str(f)], max_instances_per_task=max_instances, eval_instances_per_task=1,
                      holdback_per_seen_task=holdback)
    windowed = load_path(f, LoadScope(window=training_scope(data, cache_dir=tmp_path).window))[0]
    assert split_instances(windowed, max_instances, holdback) == split_instances(whole, max_instances, holdback)
    assert len(windowed.instances) == min(n, max_instances + holdback)


def test_instances_outside_the_window_are_not_built_but_validate_still_sees_them(tmp_path):
    f = _write(tmp_path, "task002_bad_tail", _sni(300, bad_at=250))
    task = load_path(f, LoadScope(window=InstanceWindow(100)))[0]
    assert [i.id for i in task.instances] == [f"t-{i}" for i in range(100)]
    with pytest.raises(TaskFormatError, match=r"task002_bad_tail.*Instances\[250\]\.input"):
        load_path(f)  # the full load (as `tasks validate` does) reports the bad instance


def test_a_bad_instance_inside_the_window_is_still_an_error(tmp_path):
    f = _write(tmp_path, "task003_bad_head", _sni(300, bad_at=5))
    with pytest.raises(TaskFormatError, match=r"Instances\[5\]\.input"):
        load_path(f, LoadScope(window=InstanceWindow(100)))


def test_training_reads_only_the_files_its_split_names(tmp_path):
    tasks = tmp_path / "tasks"
    (tasks / "splits").mkdir(parents=True)
    _write(tasks, "task010_train", _sni(30, "a"))
    _write(tasks, "task011_test", _sni(30, "b"))
    _write(tasks, "task012_unused", '{"Definition": ["x"], "Instances": [')  # broken, but no split names it
    (tasks / "splits" / "train_tasks.txt").write_text("task010_train\n")
    (tasks / "splits" / "test_tasks.txt").write_text("task011_test\n")
    data = DataConfig(tasks=[str(tasks)])
    split = resolve_tasks(data, training_scope(data, cache_dir=tmp_path / "cache"))
    assert [t.name for t in split.seen] == ["task010_train"] and [t.name for t in split.held_out] == ["task011_test"]
    with pytest.raises(TaskFormatError, match="task012_unused"):
        resolve_tasks(data)  # the default scope reads every file, as before


def test_explicit_seen_without_held_out_reads_everything(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write(tasks, "task020_a", _sni(5, "a"))
    _write(tasks, "task021_b", _sni(5, "b"))
    data = DataConfig(tasks=[str(tasks)], held_out=["task021_b"])  # seen = all the rest: every file is needed
    split = resolve_tasks(data, training_scope(data, cache_dir=tmp_path / "c"))
    assert [t.name for t in split.seen] == ["task020_a"]


# ------------------------------------------------------------------------------- parsed-task cache
@pytest.fixture
def counted_sni(monkeypatch):
    calls: list[str] = []
    fmt = reg.FORMATS.get("sni_json")
    real = fmt.load

    def counting(path, window=None):
        calls.append(Path(path).name)
        return real(path, window)
    monkeypatch.setitem(reg.FORMATS._items, "sni_json", reg.TaskFormat(**{**fmt.__dict__, "load": counting}))
    return calls


def _cached_scope(tmp_path) -> LoadScope:
    return LoadScope(window=InstanceWindow(10, 2), cache_dir=tmp_path / "cache", cache_min_bytes=0)


def test_parsed_cache_reuses_then_notices_a_changed_file(tmp_path, counted_sni):
    f = _write(tmp_path, "task030_c", _sni(40, "c"))
    first = load_path(f, _cached_scope(tmp_path))
    second = load_path(f, _cached_scope(tmp_path))
    assert counted_sni == ["task030_c.json"] and second == first
    assert len(first[0].instances) == 12
    _write(tmp_path, "task030_c", _sni(41, "c"))  # new content (size and mtime change)
    third = load_path(f, _cached_scope(tmp_path))
    assert len(counted_sni) == 2 and third[0].instances[-1].id == "c-40"
    other_window = load_path(f, LoadScope(window=InstanceWindow(3), cache_dir=tmp_path / "cache", cache_min_bytes=0))
    assert len(counted_sni) == 3 and len(other_window[0].instances) == 3


def test_damaged_cache_entry_is_parsed_again(tmp_path, counted_sni):
    f = _write(tmp_path, "task031_d", _sni(20, "d"))
    first = load_path(f, _cached_scope(tmp_path))
    (entry,) = (tmp_path / "cache" / "parsed_tasks").iterdir()
    entry.write_text('{"version": 1, "tasks": [{"name": ')  # truncated
    assert load_path(f, _cached_scope(tmp_path)) == first and len(counted_sni) == 2
    assert json.loads(entry.read_text())["tasks"][0]["name"] == "task031_d"  # rewritten whole


def test_a_file_that_fails_is_never_cached(tmp_path):
    f = _write(tmp_path, "task032_e", _sni(20, "e", bad_at=3))
    for _ in range(2):
        with pytest.raises(TaskFormatError, match=r"Instances\[3\]"):
            load_path(f, _cached_scope(tmp_path))
    assert not (tmp_path / "cache" / "parsed_tasks").exists() or not any((tmp_path / "cache" / "parsed_tasks").iterdir())


def test_small_files_skip_the_cache_by_default(tmp_path):
    f = _write(tmp_path, "task033_small", _sni(5, "s"))
    load_path(f, LoadScope(cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_duplicate_keys_are_still_refused(tmp_path):
    f = _write(tmp_path, "task034_dup", '{"Definition": ["x"], "Instances": [{"id": "1", "input": "a", '
               '"input": "b", "output": ["c"]}]}')
    with pytest.raises(TaskFormatError, match="duplicate key 'input'"):
        load_path(f)
