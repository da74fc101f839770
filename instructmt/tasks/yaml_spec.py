"""Declarative task and mixture definitions in small YAML files (tasks/*.yaml).

A task file declares one task, or a group under `tasks:` whose entries inherit the file's
top-level keys; `include:` pulls defaults from a parent file (child keys win). Every key is
checked: an unknown or mistyped key is an error naming the file and line (from yaml's node
marks). Source paths are resolved against the YAML's directory and may not leave its data
root (the YAML's own directory, or an ancestor named by `data_root:`) unless
`allow_absolute: true`.

    family: decanlp
    encoding: qa
    tasks:
      - name: decanlp_sst
        source: decanlp/sst_train.csv        # path or glob; or `datasets: {path, name, split}`
        format: decanlp_sst                  # optional: a registered TaskFormat; else detected
        metrics: [em]

Mixture files (`mixture:` key) name the task files to load and the mixing rates:

    mixture: four_families
    sources: [../sample, ../families/decanlp.yaml]
    rate: examples_proportional              # or give per-entry `rate:` numbers
    cap: 50
    temperature: 2.0
    entries: ["task*", {pattern: "decanlp_*", rate: 1.0}]
"""

from __future__ import annotations

import csv
import fnmatch
import glob as globlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import ConfigError, InstructMTError, RegistryError, TaskFormatError
from .textio import parse_json
from ..safe_yaml import BoundedSafeLoader
from ..validation import SIZE_MAX, TEMPERATURE_RANGE, check_number
from .registry import FORMATS, TaskFormat, detect_format, register_format
from .schema import Instance, Task

FAMILY_GENERIC = "custom"


class SpecProblems(InstructMTError):
    """Several problems found in one YAML file; `problems` holds each as a TaskFormatError."""

    def __init__(self, problems: list[TaskFormatError]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# --- YAML with line marks ----------------------------------------------------------------
class Marked(dict):
    """A mapping that remembers the line of each key (1-based) and of itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[str, int] = {}


class _MarkedLoader(BoundedSafeLoader):
    pass


def _construct_mapping(loader: _MarkedLoader, node: yaml.MappingNode) -> Marked:
    loader.flatten_mapping(node)
    out = Marked()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise TaskFormatError(f"duplicate key {key!r}", path=loader.name, line=key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[str(key)] = key_node.start_mark.line + 1
    return out


_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file into plain data whose mappings are `Marked` (they know their lines)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(p)) from None
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"not valid UTF-8 (byte {e.start})", path=str(p)) from None
    loader = _MarkedLoader(text)
    loader.name = str(p)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise TaskFormatError(f"malformed YAML: {e.problem or e.context}", path=str(p),
                              line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()


def _line(d: Any, key: str | None = None) -> int | None:
    if isinstance(d, Marked):
        return d.key_lines.get(key, d.line) if key else d.line
    return None


# --- the spec dataclasses ----------------------------------------------------------------
@dataclass
class DatasetSource:
    """A `datasets` source: load_dataset(path, name, split=split, revision=revision)."""

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None


@dataclass
class TaskSpec:
    """One declared task (or one glob of files) after validation."""

    file: Path
    line: int
    family: str
    name: str | None = None
    source: str | None = None
    datasets: DatasetSource | None = None
    format: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    output_separator: str | None = None
    definition: str | None = None
    categories: list[str] = field(default_factory=list)
    encoding: str | None = None
    metrics: list[str] = field(default_factory=list)
    max_instances: int | None = None
    allow_absolute: bool = False
    data_root: Path | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class MixtureSpec:
    """Mixing rates for a run: `entries` are (task-name glob, rate or None for proportional)."""

    name: str
    file: Path
    entries: list[tuple[str, float | None]]
    cap: int | None = None
    temperature: float = 1.0
    sources: list[Path] = field(default_factory=list)
    rate: str = "examples_proportional"

    def match(self, task_names: Iterable[str]) -> dict[str, float | None]:
        """Task name -> declared rate (None: examples-proportional); first matching entry wins."""
        out: dict[str, float | None] = {}
        for name in task_names:
            for pattern, rate in self.entries:
                if fnmatch.fnmatchcase(name, pattern):
                    out[name] = rate
                    break
        return out

    def rates(self, tasks: Iterable[Task]) -> dict[str, float]:
        """Normalised sampling rates: explicit numbers, else min(n, cap) ** (1 / temperature)."""
        tasks = list(tasks)
        matched = self.match(t.name for t in tasks)
        # in log space: min(n, cap) ** (1 / temperature) overflows a float for small temperatures
        logs: dict[str, float] = {}
        for t in tasks:
            if t.name not in matched:
                continue
            r = matched[t.name]
            if r is None:
                n = len(t.instances) if self.cap is None else min(len(t.instances), self.cap)
                logs[t.name] = math.log(n) / self.temperature if n > 0 else -math.inf
            else:
                logs[t.name] = math.log(r) if r > 0 else -math.inf
        top = max(logs.values(), default=-math.inf)
        raw = {k: (math.exp(v - top) if v > -math.inf else 0.0) for k, v in logs.items()}
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items()} if total > 0 else raw


_TASK_KEYS = {
    "name": str, "family": str, "source": str, "datasets": dict, "format": str, "fields": dict,
    "output_separator": str, "definition": str, "categories": list, "encoding": str, "metrics": list,
    "max_instances": int, "allow_absolute": bool, "data_root": str,
}
_FILE_KEYS = {"include": str, "tasks": list, "description": str}
_DATASETS_KEYS = {"path": str, "name": str, "config": str, "split": str, "revision": str}
_FIELD_TARGETS = {"input", "output", "outputs", "id", "context", "question"}
_MIXTURE_KEYS = {"mixture": str, "sources": list, "entries": list, "rate": (str, int, float),
                 "cap": int, "temperature": (int, float), "include": str, "description": str,
                 "allow_absolute": bool, "data_root": str}


class _Collector:
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


def _check_keys(d: Marked, allowed: dict[str, Any], col: _Collector, path: Path, what: str) -> None:
    import difflib
    for key in d:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f" (allowed: {', '.join(sorted(allowed))})"
            col.add(f"unknown key {key!r} in {what}{hint}", _line(d, str(key)), path=path)
            continue
        tp = allowed[key]
        val = d[key]
        if val is None:
            continue
        if tp is int and isinstance(val, bool) or not isinstance(val, tp):
            names = tp.__name__ if isinstance(tp, type) else "/".join(t.__name__ for t in tp)
            col.add(f"key {key!r} must be a {names}, got {type(val).__name__}", _line(d, str(key)), path=path)


def _read_with_includes(path: Path, col: _Collector, seen: tuple[Path, ...] = ()) -> tuple[Marked, dict[str, Path]]:
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
        col.add("key 'include' must be a path string", _line(data, "include"), path=path)
        return data, origin
    parent_path = _resolve_path(inc, base=path.parent, root=_root_of(data, path, col),
                                allow_absolute=bool(data.get("allow_absolute")), col=col, path=path,
                                line=_line(data, "include"), key="include")
    if parent_path is None:
        return data, origin
    if not parent_path.is_file():
        col.add(f"included file not found: {inc}", _line(data, "include"), path=path)
        return data, origin
    parent, parent_origin = _read_with_includes(parent_path, col, seen + (path,))
    merged = Marked()
    merged.line, merged.key_lines = data.line, dict(parent.key_lines)
    merged.update(parent)
    merged.update({k: v for k, v in data.items() if k != "include"})
    merged.key_lines.update(data.key_lines)
    parent_origin.update({k: path for k in data if k != "include"})
    return merged, parent_origin


def _root_of(d: Marked, path: Path, col: _Collector) -> Path:
    root = d.get("data_root")
    if not root:
        return path.parent.resolve()
    r = (path.parent / str(root)).resolve()
    if path.resolve().parent != r and r not in path.resolve().parents:
        col.add(f"data_root {root!r} must be a directory that contains this file", _line(d, "data_root"), path=path)
        return path.parent.resolve()
    return r


def _resolve_path(value: str, *, base: Path, root: Path, allow_absolute: bool, col: _Collector, path: Path,
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
                         col: _Collector) -> TaskSpec | None:
    d = Marked()
    d.line = entry.line
    d.key_lines = {}
    d.update(defaults)
    d.key_lines.update(defaults.key_lines)
    d.update(entry)
    d.key_lines.update(entry.key_lines)
    before = len(col.problems)
    _check_keys(entry, _TASK_KEYS, col, file, "task entry")
    name = d.get("name")
    if not d.get("family"):
        col.add("missing required key 'family'", entry.line, task=name)
    if d.get("source") is None and d.get("datasets") is None:
        col.add("needs 'source' (path or glob) or 'datasets'", entry.line, task=name)
    if d.get("source") is not None and d.get("datasets") is not None:
        col.add("give either 'source' or 'datasets', not both", _line(entry, "datasets") or entry.line, task=name)
    ds = None
    if isinstance(d.get("datasets"), dict):
        dd = d["datasets"]
        _check_keys(dd, _DATASETS_KEYS, col, file, "datasets")
        if "path" not in dd:
            col.add("datasets needs 'path' (the dataset name)", _line(dd), task=name)
        else:
            ds = DatasetSource(path=str(dd["path"]), name=dd.get("name") or dd.get("config"),
                               split=str(dd.get("split", "train")), revision=dd.get("revision"))
    fields = d.get("fields") or {}
    if isinstance(fields, dict):
        for k, v in fields.items():
            if k not in _FIELD_TARGETS:
                col.add(f"unknown field target {k!r} (allowed: {', '.join(sorted(_FIELD_TARGETS))})",
                        _line(fields, str(k)), task=name)
            elif not isinstance(v, str):
                col.add(f"field {k!r} must name a column (string)", _line(fields, str(k)), task=name)
    for key in ("categories", "metrics"):
        val = d.get(key)
        if isinstance(val, list) and not all(isinstance(x, str) for x in val):
            col.add(f"key {key!r} must be a list of strings", _line(d, key), task=name)
    if isinstance(d.get("metrics"), list):
        from ..evaluation.metrics import METRICS, _ensure_family_metrics
        _ensure_family_metrics()
        for m in d["metrics"]:
            if isinstance(m, str) and m not in METRICS:
                import difflib
                near = difflib.get_close_matches(m, METRICS.names(), n=1, cutoff=0.5)
                col.add(f"unknown metric {m!r}" + (f"; did you mean {near[0]!r}?" if near else ""),
                        _line(d, "metrics"), task=name)
    if isinstance(d.get("format"), str) and d["format"] not in FORMATS:
        import difflib
        near = difflib.get_close_matches(d["format"], FORMATS.names(), n=1, cutoff=0.5)
        col.add(f"unknown format {d['format']!r}" + (f"; did you mean {near[0]!r}?" if near else
                f" (known: {', '.join(FORMATS.names())})"), _line(d, "format"), task=name)
    if isinstance(d.get("encoding"), str):
        from ..prompts.render import parse_encoding
        try:
            parse_encoding(d["encoding"])
        except InstructMTError as e:
            col.add(str(e), _line(d, "encoding"), task=name)
    mi = d.get("max_instances")
    if isinstance(mi, int) and not isinstance(mi, bool) and not 1 <= mi <= SIZE_MAX:
        col.add(f"max_instances must be an integer in [1, {SIZE_MAX}], got {_short_number(mi)}",
                _line(d, "max_instances"), task=name)
    if len(col.problems) > before:
        return None
    key_file = lambda k: origin.get(k, file) if k not in entry else file  # noqa: E731
    root = _root_of(d, key_file("data_root"), col)
    return TaskSpec(
        file=file, line=entry.line, family=d["family"], name=name,
        source=d.get("source"), datasets=ds, format=d.get("format"),
        fields={str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
        output_separator=d.get("output_separator"), definition=d.get("definition"),
        categories=list(d.get("categories") or []), encoding=d.get("encoding"),
        metrics=list(d.get("metrics") or []), max_instances=d.get("max_instances"),
        allow_absolute=bool(d.get("allow_absolute")), data_root=root,
    )


def parse_task_yaml(path: str | Path, col: _Collector | None = None) -> list[TaskSpec]:
    """Validate a task YAML into TaskSpecs; every problem is collected, then raised together."""
    from .registry import _ensure_builtin_formats
    _ensure_builtin_formats()  # family formats and encodings (qa, prefix) must be known to validate
    p = Path(path)
    own = col is None
    col = col or _Collector(p)
    try:
        data, origin = _read_with_includes(p, col)
    except TaskFormatError as e:
        col.problems.append(e)
        data, origin = Marked(), {}
    specs: list[TaskSpec] = []
    if data:
        if "mixture" in data:
            col.add("this is a mixture file; load it with load_mixture_yaml", data.line)
        else:
            file_keys = Marked({k: v for k, v in data.items() if k in _FILE_KEYS})
            file_keys.line = data.line
            file_keys.key_lines = {k: v for k, v in data.key_lines.items() if k in _FILE_KEYS}
            _check_keys(file_keys, _FILE_KEYS, col, p, "file")
            entries = data.get("tasks")
            defaults = Marked({k: v for k, v in data.items() if k not in _FILE_KEYS})
            defaults.line, defaults.key_lines = data.line, {k: v for k, v in data.key_lines.items()
                                                            if k not in _FILE_KEYS}
            if entries is None:
                spec = _validate_task_entry(defaults, Marked(), origin, p, col)
                specs += [spec] if spec else []
            elif isinstance(entries, list):
                # top-level keys are defaults; check them as task keys too
                _check_keys(defaults, _TASK_KEYS, col, p, "file")
                base = Marked({k: v for k, v in defaults.items() if k in _TASK_KEYS})
                base.line, base.key_lines = defaults.line, defaults.key_lines
                if not entries:
                    col.add("'tasks' is empty", _line(data, "tasks"))
                for i, entry in enumerate(entries):
                    if not isinstance(entry, Marked):
                        col.add(f"tasks[{i}] must be a mapping", _line(data, "tasks"))
                        continue
                    spec = _validate_task_entry(entry, base, origin, p, col)
                    specs += [spec] if spec else []
        names = [s.name for s in specs if s.name]
        for n in {n for n in names if names.count(n) > 1}:
            col.add(f"task name {n!r} declared more than once", None)
    if own:
        col.raise_if_any()
    return specs


# --- loading the declared tasks ----------------------------------------------------------
def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            out = []
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        out.append(parse_json(line, path, line=n))
            return out
        if suffix == ".json":
            data = parse_json(path.read_text(encoding="utf-8"), path)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise TaskFormatError("expected a JSON list of records", path=str(path))
            return data
        if suffix in (".csv", ".tsv", ".txt"):
            with path.open(encoding="utf-8", newline="") as fh:
                return list(csv.DictReader(fh, delimiter="\t" if suffix != ".csv" else ","))
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"malformed JSON: {e.msg}", path=str(path), line=e.lineno) from None
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(path)) from None
    raise TaskFormatError(f"cannot read records from a {suffix or 'suffix-less'} file with a field mapping "
                          "(use .jsonl, .json, .csv or .tsv)", path=str(path))


def records_to_task(records: Iterable[dict], spec: TaskSpec, *, name: str, source: str) -> Task:
    """Build one Task from flat records using the spec's field mapping."""
    from .decanlp import qa_instance  # the QA shape (context/question) lives with decaNLP
    fm = spec.fields
    out_key = fm.get("outputs") or fm.get("output") or "output"
    in_key = fm.get("input", "input")
    qa = "context" in fm and "question" in fm
    instances: list[Instance] = []
    for n, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise TaskFormatError(f"record {n} is not an object", path=source, task=name)
        need = [fm["context"], fm["question"]] if qa else [in_key]
        for k in need + [out_key]:
            if k not in rec:
                raise TaskFormatError(f"record {n} has no column {k!r} (columns: {', '.join(map(str, rec))})",
                                      path=source, task=name, field=k)
        out = rec[out_key]
        outs = [str(o) for o in out] if isinstance(out, list) else [str(out)]
        if spec.output_separator and len(outs) == 1:
            outs = [o.strip() for o in outs[0].split(spec.output_separator)]
        iid = str(rec[fm["id"]]) if "id" in fm and fm["id"] in rec else f"{name}-{n}"
        if qa:
            instances.append(qa_instance(iid, str(rec[fm["context"]]), str(rec[fm["question"]]), outs))
        else:
            instances.append(Instance(id=iid, input=str(rec[in_key]), outputs=outs))
    if not instances:
        raise TaskFormatError("holds no records", path=source, task=name)
    return Task(name=name, family=spec.family, definition=spec.definition or "", instances=instances,
                source=source, encoding="qa" if qa else None)


def _load_datasets_source(spec: TaskSpec) -> list[Task]:
    ds = spec.datasets
    assert ds is not None
    where = f"datasets {ds.path}" + (f"/{ds.name}" if ds.name else "") + f" split {ds.split}"
    target = ds.path
    local = spec.file.parent / ds.path
    if not Path(ds.path).is_absolute() and local.exists():  # a local dataset folder beside the YAML
        col = _Collector(spec.file)
        resolved = _resolve_path(ds.path, base=spec.file.parent, root=spec.data_root or spec.file.parent.resolve(),
                                 allow_absolute=spec.allow_absolute, col=col, path=spec.file, line=spec.line,
                                 key="datasets.path")
        col.raise_if_any()
        target = str(resolved)
    try:
        import datasets
        data = datasets.load_dataset(target, ds.name, split=ds.split, revision=ds.revision)
    except Exception as e:  # offline, unknown name, bad split: one clear line
        raise TaskFormatError(f"cannot load {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                              path=str(spec.file), line=spec.line, task=spec.name) from None
    name = spec.name or ds.path.replace("/", "_")
    if not spec.fields:
        from .natural_instructions import tasks_from_dataset
        return tasks_from_dataset(data, name=where)
    return [records_to_task(iter(data), spec, name=name, source=where)]


def resolve_sources(spec: TaskSpec) -> list[Path]:
    col = _Collector(spec.file)
    assert spec.source is not None
    base = spec.file.parent
    root = spec.data_root or base.resolve()
    if any(ch in spec.source for ch in "*?["):
        if Path(spec.source).is_absolute() and not spec.allow_absolute:
            col.add(f"absolute path {spec.source!r} in 'source' is not allowed (set allow_absolute: true)", spec.line)
            col.raise_if_any()
        pattern = spec.source if Path(spec.source).is_absolute() else str(base / spec.source)
        paths = sorted(Path(p).resolve() for p in globlib.glob(pattern, recursive=True))
        for p in paths:
            _resolve_path(str(p), base=base, root=root, allow_absolute=True, col=col, path=spec.file,
                          line=spec.line, key="source")
            if not spec.allow_absolute and p != root and root not in p.parents:
                col.add(f"glob {spec.source!r} matches {p}, outside the data root {root}", spec.line)
        col.raise_if_any()
        if not paths:
            raise TaskFormatError(f"source glob {spec.source!r} matches no file", path=str(spec.file),
                                  line=spec.line, task=spec.name)
        return paths
    p = _resolve_path(spec.source, base=base, root=root, allow_absolute=spec.allow_absolute, col=col,
                      path=spec.file, line=spec.line, key="source")
    col.raise_if_any()
    assert p is not None
    if not p.exists():
        raise TaskFormatError(f"source not found: {spec.source}", path=str(spec.file), line=spec.line, task=spec.name)
    return [p]


def _load_one_source(spec: TaskSpec, path: Path) -> list[Task]:
    from .registry import load_file
    if spec.fields and spec.format is None:
        name = spec.name or path.stem
        try:
            records = _read_records(path)
        except UnicodeDecodeError as e:
            raise TaskFormatError(f"not valid UTF-8 (byte {e.start})", path=str(path), task=spec.name) from None
        return [records_to_task(records, spec, name=name, source=str(path))]
    if spec.format is not None:
        fmt = FORMATS.get(spec.format)
        return load_file(fmt, path)
    if path.is_dir():
        from .registry import load_path
        return load_path(path)
    fmt = detect_format(path)
    if fmt is None:
        raise TaskFormatError(f"cannot tell the format of {path.name}; set 'format:' "
                              f"(known: {', '.join(FORMATS.names())}) or a 'fields:' mapping",
                              path=str(spec.file), line=spec.line, task=spec.name)
    return load_file(fmt, path)


def load_spec(spec: TaskSpec) -> list[Task]:
    """Load the tasks one spec declares, applying its name, metrics, encoding and limits."""
    if spec.datasets is not None:
        loaded = _load_datasets_source(spec)
    else:
        loaded = []
        for path in resolve_sources(spec):
            loaded.extend(_load_one_source(spec, path))
    out = []
    for t in loaded:
        name = t.name
        if spec.name:
            name = spec.name if len(loaded) == 1 else f"{spec.name}_{t.name}"
        t = replace(t, name=name, family=spec.family)
        if spec.metrics:
            t.metrics = list(spec.metrics)
        if spec.encoding:
            t.encoding = spec.encoding
        if spec.definition is not None:
            t.definition = spec.definition
        if spec.categories:
            t.categories = list(spec.categories)
        if spec.max_instances is not None:
            t.instances = t.instances[: spec.max_instances]
        t.extra = dict(t.extra, spec=spec.where)
        out.append(t)
    return out


def load_task_yaml(path: str | Path) -> list[Task]:
    """Every task a task YAML declares (raises on the first file with problems)."""
    specs = parse_task_yaml(path)
    tasks: list[Task] = []
    for spec in specs:
        tasks.extend(load_spec(spec))
    seen: dict[str, str] = {}
    for t in tasks:
        if t.name in seen:
            raise TaskFormatError(f"two declarations produce the task {t.name!r} ({seen[t.name]} and "
                                  f"{t.extra.get('spec')})", path=str(path))
        seen[t.name] = str(t.extra.get("spec"))
    return tasks


# --- mixtures ----------------------------------------------------------------------------
RATE_RANGE = (0.0, 1e6)


def _short_number(n: int) -> str:
    s = str(n)
    return s if len(s) <= 24 else f"{s[:12]}... ({len(s)} digits)"


def _mixture_number(col: "_Collector", value: Any, key: str, bounds: tuple, integer: bool,
                    line: int | None) -> Any:
    """The value if it is a finite number in `bounds`; else record the error and return None."""
    try:
        return check_number(value, key, *bounds, integer=integer)
    except ConfigError as e:
        col.add(str(e), line)
        return None


def load_mixture_yaml(path: str | Path) -> MixtureSpec:
    p = Path(path)
    col = _Collector(p)
    data, _ = _read_with_includes(p, col)
    if not data:
        col.raise_if_any()
    if "mixture" not in data:
        col.add("not a mixture file (no 'mixture:' key)", data.line)
        col.raise_if_any()
    _check_keys(data, _MIXTURE_KEYS, col, p, "mixture")
    rate = data.get("rate", "examples_proportional")
    default_rate: float | None = None
    if isinstance(rate, str):
        if rate != "examples_proportional":
            col.add(f"rate must be a number or 'examples_proportional', got {rate!r}", _line(data, "rate"))
    elif isinstance(rate, (int, float)) and not isinstance(rate, bool):
        default_rate = _mixture_number(col, rate, "rate", RATE_RANGE, False, _line(data, "rate"))
    temperature = data.get("temperature", 1.0)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        temperature = _mixture_number(col, temperature, "temperature", TEMPERATURE_RANGE, False,
                                      _line(data, "temperature"))
    cap = data.get("cap")
    if isinstance(cap, int) and not isinstance(cap, bool):
        cap = _mixture_number(col, cap, "cap", (1, SIZE_MAX), True, _line(data, "cap"))
    entries: list[tuple[str, float | None]] = []
    raw_entries = data.get("entries", ["*"])
    for i, e in enumerate(raw_entries if isinstance(raw_entries, list) else []):
        if isinstance(e, str):
            entries.append((e, default_rate))
        elif isinstance(e, Marked):
            _check_keys(e, {"pattern": str, "rate": (int, float)}, col, p, f"entries[{i}]")
            if "pattern" not in e:
                col.add(f"entries[{i}] needs 'pattern'", e.line)
                continue
            r = e.get("rate", default_rate)
            if r is not None:
                r = _mixture_number(col, r, f"entries[{i}].rate", RATE_RANGE, False, _line(e, "rate"))
                if r is None:
                    continue
            entries.append((str(e["pattern"]), None if r is None else float(r)))
        else:
            col.add(f"entries[{i}] must be a task name/glob or a mapping with pattern and rate", _line(data, "entries"))
    sources: list[Path] = []
    root = _root_of(data, p, col)
    for s in data.get("sources") or []:
        if not isinstance(s, str):
            col.add("sources must be paths", _line(data, "sources"))
            continue
        r = _resolve_path(s, base=p.parent, root=root, allow_absolute=bool(data.get("allow_absolute")), col=col,
                          path=p, line=_line(data, "sources"), key="sources")
        if r is not None:
            if not r.exists():
                col.add(f"source not found: {s}", _line(data, "sources"))
            sources.append(r)
    if entries and all(r == 0 for _, r in entries if r is not None) and all(r is not None for _, r in entries):
        col.add("every entry's rate is 0: the mixture would sample nothing", _line(data, "entries"))
    col.raise_if_any()
    return MixtureSpec(name=str(data["mixture"]), file=p, entries=entries, cap=cap,
                       temperature=float(temperature), sources=sources,
                       rate=rate if isinstance(rate, str) else "fixed")


def load_mixture_tasks(path: str | Path) -> tuple[MixtureSpec, list[Task]]:
    """The mixture spec and the tasks its sources hold that its entries select."""
    from .registry import load_path
    spec = load_mixture_yaml(path)
    tasks: list[Task] = []
    for src in spec.sources:
        tasks.extend(load_path(src))
    chosen = spec.match(t.name for t in tasks)
    unmatched = [pat for pat, _ in spec.entries if not any(fnmatch.fnmatchcase(t.name, pat) for t in tasks)]
    if unmatched:
        raise TaskFormatError(f"entry {unmatched[0]!r} matches no task in the sources", path=str(path))
    return spec, [t for t in tasks if t.name in chosen]


# --- format registration -----------------------------------------------------------------
def _yaml_top_keys(path: Path) -> set[str]:
    keys = set()
    with path.open("rb") as fh:
        head = fh.read(16384).decode("utf-8", errors="replace")
    for line in head.splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")) and ":" in line:
            keys.add(line.split(":", 1)[0].strip())
    return keys


def _is_task_yaml(path: Path) -> bool:
    if path.suffix.lower() not in (".yaml", ".yml"):
        return False
    keys = _yaml_top_keys(path)
    return "mixture" not in keys and bool(keys & {"family", "tasks", "include"})


def _is_mixture_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml") and "mixture" in _yaml_top_keys(path)


def _load_mixture_as_tasks(path: Path) -> list[Task]:
    return load_mixture_tasks(path)[1]


def _register() -> None:
    for fmt in (TaskFormat("task_yaml", "declared", _is_task_yaml, lambda p: load_task_yaml(p),
                           "declarative task YAML (family/source/fields/metrics; include:)"),
                TaskFormat("mixture_yaml", "declared", _is_mixture_yaml, _load_mixture_as_tasks,
                           "mixture YAML: sources + task globs with rates")):
        if fmt.name not in FORMATS:
            register_format(fmt)


try:
    _register()
except RegistryError:  # pragma: no cover - registered twice by a reload
    pass
