"""Validating a task YAML into TaskSpecs: keys and types (from the schema), `include:` chains, paths
kept inside the data root, names of metrics, formats and encodings. Every problem is collected and
raised together, each naming its file and line."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ...catalog import METRICS
from ...errors import InstructMTError, TaskFormatError
from ...validation import SIZE_MAX
from ..encoding import parse_encoding
from ..registry import FORMATS
from .marked import Marked, line_of, read_yaml
from .schema import DATASETS_KEYS, FIELD_TARGETS, FILE_KEYS, TASK_KEYS, DatasetSource, TaskSpec


class SpecProblems(InstructMTError):
    """Several problems found in one YAML file; `problems` holds each as a TaskFormatError."""

    def __init__(self, problems: list[TaskFormatError]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def short_number(n: int) -> str:
    s = str(n)
    return s if len(s) <= 24 else f"{s[:12]}... ({len(s)} digits)"


class Collector:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[TaskFormatError] = []

    def add(self, msg: str, line: int | None, *, field: str | None = None, task: str | None = None,
            path: Path | None = None) -> None:
        self.problems.append(TaskFormatError(msg, path=str(path or self.path), line=line, field=field, task=task))

    def raise_if_any(self) -> None:
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise SpecProblems(self.problems)


def check_keys(d: Marked, allowed: dict[str, Any], col: Collector, path: Path, what: str) -> None:
    for key in d:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f" (allowed: {', '.join(sorted(allowed))})"
            col.add(f"unknown key {key!r} in {what}{hint}", line_of(d, str(key)), path=path)
            continue
        tp = allowed[key]
        val = d[key]
        if val is None:
            continue
        if tp is int and isinstance(val, bool) or not isinstance(val, tp):
            names = tp.__name__ if isinstance(tp, type) else "/".join(t.__name__ for t in tp)
            col.add(f"key {key!r} must be a {names}, got {type(val).__name__}", line_of(d, str(key)), path=path)


def read_with_includes(path: Path, col: Collector, seen: tuple[Path, ...] = ()) -> tuple[Marked, dict[str, Path]]:
    """The file's mapping merged over its `include:` chain; also each key's defining file."""
    path = path.resolve()
    if path in seen:
        col.add("include cycle: " + " -> ".join(str(p) for p in seen + (path,)), None, path=path)
        return Marked(), {}
    data = read_yaml(path)
    if not isinstance(data, Marked):
        col.add(f"expected a mapping at top level, got {type(data).__name__}", 1, path=path)
        return Marked(), {}
    origin = {k: path for k in data}
    inc = data.get("include")
    if inc is None:
        return data, origin
    if not isinstance(inc, str):
        col.add("key 'include' must be a path string", line_of(data, "include"), path=path)
        return data, origin
    parent_path = resolve_path(inc, base=path.parent, root=root_of(data, path, col),
                                allow_absolute=bool(data.get("allow_absolute")), col=col, path=path,
                                line=line_of(data, "include"), key="include")
    if parent_path is None:
        return data, origin
    if not parent_path.is_file():
        col.add(f"included file not found: {inc}", line_of(data, "include"), path=path)
        return data, origin
    parent, parent_origin = read_with_includes(parent_path, col, seen + (path,))
    merged = Marked()
    merged.line, merged.key_lines = data.line, dict(parent.key_lines)
    merged.update(parent)
    merged.update({k: v for k, v in data.items() if k != "include"})
    merged.key_lines.update(data.key_lines)
    parent_origin.update({k: path for k in data if k != "include"})
    return merged, parent_origin


def root_of(d: Marked, path: Path, col: Collector) -> Path:
    root = d.get("data_root")
    if not root:
        return path.parent.resolve()
    r = (path.parent / str(root)).resolve()
    if path.resolve().parent != r and r not in path.resolve().parents:
        col.add(f"data_root {root!r} must be a directory that contains this file", line_of(d, "data_root"), path=path)
        return path.parent.resolve()
    return r


def resolve_path(value: str, *, base: Path, root: Path, allow_absolute: bool, col: Collector, path: Path,
                  line: int | None, key: str) -> Path | None:
    p = Path(value).expanduser()
    if p.is_absolute():
        if not allow_absolute:
            col.add(f"absolute path {value!r} in {key!r} is not allowed (set allow_absolute: true)", line, path=path)
            return None
        return p
    resolved = (base / p).resolve()
    if not allow_absolute and resolved != root and root not in resolved.parents:
        col.add(f"path {value!r} in {key!r} escapes the data root {root} "
                f"(set data_root: to an enclosing directory, or allow_absolute: true)", line, path=path)
        return None
    return resolved


def _validate_task_entry(entry: Marked, defaults: Marked, origin: dict[str, Path], file: Path,
                         col: Collector) -> TaskSpec | None:
    d = Marked()
    d.line = entry.line
    d.key_lines = {}
    d.update(defaults)
    d.key_lines.update(defaults.key_lines)
    d.update(entry)
    d.key_lines.update(entry.key_lines)
    before = len(col.problems)
    check_keys(entry, TASK_KEYS, col, file, "task entry")
    name = d.get("name")
    if not d.get("family"):
        col.add("missing required key 'family'", entry.line, task=name)
    if d.get("source") is None and d.get("datasets") is None:
        col.add("needs 'source' (path or glob) or 'datasets'", entry.line, task=name)
    if d.get("source") is not None and d.get("datasets") is not None:
        col.add("give either 'source' or 'datasets', not both", line_of(entry, "datasets") or entry.line, task=name)
    ds = None
    if isinstance(d.get("datasets"), dict):
        dd = d["datasets"]
        check_keys(dd, DATASETS_KEYS, col, file, "datasets")
        if "path" not in dd:
            col.add("datasets needs 'path' (the dataset name)", line_of(dd), task=name)
        else:
            ds = DatasetSource(path=str(dd["path"]), name=dd.get("name") or dd.get("config"),
                               split=str(dd.get("split", "train")), revision=dd.get("revision"))
    fields = d.get("fields") or {}
    if isinstance(fields, dict):
        for k, v in fields.items():
            if k not in FIELD_TARGETS:
                col.add(f"unknown field target {k!r} (allowed: {', '.join(sorted(FIELD_TARGETS))})",
                        line_of(fields, str(k)), task=name)
            elif not isinstance(v, str):
                col.add(f"field {k!r} must name a column (string)", line_of(fields, str(k)), task=name)
    for key in ("categories", "metrics"):
        val = d.get(key)
        if isinstance(val, list) and not all(isinstance(x, str) for x in val):
            col.add(f"key {key!r} must be a list of strings", line_of(d, key), task=name)
    if isinstance(d.get("metrics"), list):
        for m in d["metrics"]:
            if isinstance(m, str) and m not in METRICS:
                near = difflib.get_close_matches(m, METRICS.names(), n=1, cutoff=0.5)
                col.add(f"unknown metric {m!r}" + (f"; did you mean {near[0]!r}?" if near else ""),
                        line_of(d, "metrics"), task=name)
    if isinstance(d.get("format"), str) and d["format"] not in FORMATS:
        near = difflib.get_close_matches(d["format"], FORMATS.names(), n=1, cutoff=0.5)
        col.add(f"unknown format {d['format']!r}" + (f"; did you mean {near[0]!r}?" if near else
                f" (known: {', '.join(FORMATS.names())})"), line_of(d, "format"), task=name)
    if isinstance(d.get("encoding"), str):
        try:
            parse_encoding(d["encoding"])
        except InstructMTError as e:
            col.add(str(e), line_of(d, "encoding"), task=name)
    mi = d.get("max_instances")
    if isinstance(mi, int) and not isinstance(mi, bool) and not 1 <= mi <= SIZE_MAX:
        col.add(f"max_instances must be an integer in [1, {SIZE_MAX}], got {short_number(mi)}",
                line_of(d, "max_instances"), task=name)
    if len(col.problems) > before:
        return None
    key_file = lambda k: origin.get(k, file) if k not in entry else file  # noqa: E731
    root = root_of(d, key_file("data_root"), col)
    return TaskSpec(
        file=file, line=entry.line, family=d["family"], name=name,
        source=d.get("source"), datasets=ds, format=d.get("format"),
        fields={str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
        output_separator=d.get("output_separator"), definition=d.get("definition"),
        categories=list(d.get("categories") or []), encoding=d.get("encoding"),
        metrics=list(d.get("metrics") or []), max_instances=d.get("max_instances"),
        allow_absolute=bool(d.get("allow_absolute")), data_root=root,
    )


def parse_task_yaml(path: str | Path, col: Collector | None = None) -> list[TaskSpec]:
    """Validate a task YAML into TaskSpecs; every problem is collected, then raised together."""
    p = Path(path)
    own = col is None
    col = col or Collector(p)
    try:
        data, origin = read_with_includes(p, col)
    except TaskFormatError as e:
        col.problems.append(e)
        data, origin = Marked(), {}
    specs: list[TaskSpec] = []
    if data:
        if "mixture" in data:
            col.add("this is a mixture file; load it with load_mixture_yaml", data.line)
        else:
            file_keys = Marked({k: v for k, v in data.items() if k in FILE_KEYS})
            file_keys.line = data.line
            file_keys.key_lines = {k: v for k, v in data.key_lines.items() if k in FILE_KEYS}
            check_keys(file_keys, FILE_KEYS, col, p, "file")
            entries = data.get("tasks")
            defaults = Marked({k: v for k, v in data.items() if k not in FILE_KEYS})
            defaults.line, defaults.key_lines = data.line, {k: v for k, v in data.key_lines.items()
                                                            if k not in FILE_KEYS}
            if entries is None:
                spec = _validate_task_entry(defaults, Marked(), origin, p, col)
                specs += [spec] if spec else []
            elif isinstance(entries, list):
                # top-level keys are defaults; check them as task keys too
                check_keys(defaults, TASK_KEYS, col, p, "file")
                base = Marked({k: v for k, v in defaults.items() if k in TASK_KEYS})
                base.line, base.key_lines = defaults.line, defaults.key_lines
                if not entries:
                    col.add("'tasks' is empty", line_of(data, "tasks"))
                for i, entry in enumerate(entries):
                    if not isinstance(entry, Marked):
                        col.add(f"tasks[{i}] must be a mapping", line_of(data, "tasks"))
                        continue
                    spec = _validate_task_entry(entry, base, origin, p, col)
                    specs += [spec] if spec else []
        names = [s.name for s in specs if s.name]
        for n in {n for n in names if names.count(n) > 1}:
            col.add(f"task name {n!r} declared more than once", None)
    if own:
        col.raise_if_any()
    return specs
