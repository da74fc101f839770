"""Loading the tasks a validated spec declares: files (a registered format, or records with a field
mapping), globs, or a `datasets` source."""

from __future__ import annotations

import csv
import glob as globlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from ...errors import TaskFormatError
from ..decanlp import qa_instance
from ..natural_instructions import tasks_from_dataset
from ..registry import FORMATS, detect_format, load_file, load_path
from ..schema import Instance, Task
from ..textio import parse_json
from .schema import TaskSpec
from .validate import Collector, parse_task_yaml, resolve_path


FAMILY_GENERIC = "custom"


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
        col = Collector(spec.file)
        resolved = resolve_path(ds.path, base=spec.file.parent, root=spec.data_root or spec.file.parent.resolve(),
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
        return tasks_from_dataset(data, name=where)
    return [records_to_task(iter(data), spec, name=name, source=where)]


def resolve_sources(spec: TaskSpec) -> list[Path]:
    col = Collector(spec.file)
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
            resolve_path(str(p), base=base, root=root, allow_absolute=True, col=col, path=spec.file,
                          line=spec.line, key="source")
            if not spec.allow_absolute and p != root and root not in p.parents:
                col.add(f"glob {spec.source!r} matches {p}, outside the data root {root}", spec.line)
        col.raise_if_any()
        if not paths:
            raise TaskFormatError(f"source glob {spec.source!r} matches no file", path=str(spec.file),
                                  line=spec.line, task=spec.name)
        return paths
    p = resolve_path(spec.source, base=base, root=root, allow_absolute=spec.allow_absolute, col=col,
                      path=spec.file, line=spec.line, key="source")
    col.raise_if_any()
    assert p is not None
    if not p.exists():
        raise TaskFormatError(f"source not found: {spec.source}", path=str(spec.file), line=spec.line, task=spec.name)
    return [p]


def _load_one_source(spec: TaskSpec, path: Path) -> list[Task]:
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
