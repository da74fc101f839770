"""Natural Instructions loaders: Super-NaturalInstructions task JSON, NI v1 JSON, JSONL and datasets.

Every problem raises TaskFormatError naming the file, task and field: one bad file never
silently drops a task.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import TaskFormatError
from .registry import TaskFormat
from .schema import Example, Instance, Task
from .scope import InstanceWindow
from .textio import parse_json, read_json as _read_json

FAMILY = "natural_instructions"
_SNI_REQUIRED = ("Definition", "Instances")


def _as_str(value: Any, *, path: str, task: str, field: str, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise TaskFormatError(f"expected a string, got {type(value).__name__}",
                              path=path, task=task, field=field)
    if not allow_empty and not value.strip():
        raise TaskFormatError("is empty", path=path, task=task, field=field)
    return value


def _definition(value: Any, *, path: str, task: str, field: str = "Definition") -> str:
    if isinstance(value, list):
        if not value:
            raise TaskFormatError("is an empty list", path=path, task=task, field=field)
        parts = [_as_str(v, path=path, task=task, field=f"{field}[{i}]") for i, v in enumerate(value)]
        return "\n".join(parts) if len(parts) > 1 else parts[0]
    return _as_str(value, path=path, task=task, field=field)


def _outputs(value: Any, *, path: str, task: str, field: str) -> list[str]:
    outs = [value] if isinstance(value, str) else value
    if not isinstance(outs, list):
        raise TaskFormatError(f"expected a string or a list of strings, got {type(value).__name__}",
                              path=path, task=task, field=field)
    if not outs:
        raise TaskFormatError("has no reference output", path=path, task=task, field=field)
    return [_as_str(o, path=path, task=task, field=f"{field}[{i}]") for i, o in enumerate(outs)]


def _check_record(rec: Any, *, path: str, task: str, field: str) -> None:
    """An example or instance must be an object with `input` and `output`."""
    if not isinstance(rec, dict):
        raise TaskFormatError(f"expected an object, got {type(rec).__name__}", path=path, task=task, field=field)
    for key in ("input", "output"):
        if key not in rec:
            raise TaskFormatError(f"missing key {key!r}", path=path, task=task, field=field)


def _examples(value: Any, *, path: str, task: str, field: str, explanation_key: str = "explanation"
              ) -> list[Example]:
    if value is None or value == "-":
        return []
    if not isinstance(value, list):
        raise TaskFormatError(f"expected a list, got {type(value).__name__}", path=path, task=task, field=field)
    out = []
    for i, ex in enumerate(value):
        f = f"{field}[{i}]"
        _check_record(ex, path=path, task=task, field=f)
        output = ex["output"]
        if isinstance(output, list):  # a few upstream examples list their outputs
            output = _outputs(output, path=path, task=task, field=f + ".output")[0]
        expl = ex.get(explanation_key, ex.get("reason", "")) or ""
        out.append(Example(
            input=_as_str(ex["input"], path=path, task=task, field=f + ".input"),
            output=_as_str(output, path=path, task=task, field=f + ".output"),
            explanation=_as_str(expl, path=path, task=task, field=f + "." + explanation_key),
        ))
    return out


def _instances(value: Any, *, path: str, task: str, id_prefix: str,
               window: InstanceWindow | None = None) -> list[Instance]:
    """The task's instances, each checked; with a window only the kept ones are built and checked
    (the rest of a 100 MB file is never turned into objects)."""
    if not isinstance(value, list):
        raise TaskFormatError(f"expected a list, got {type(value).__name__}", path=path, task=task,
                              field="Instances")
    if not value:
        raise TaskFormatError("has no instances", path=path, task=task, field="Instances")
    seen: set[str] = set()
    out = []
    for i in (range(len(value)) if window is None else window.indices(len(value))):
        inst = value[i]
        f = f"Instances[{i}]"
        _check_record(inst, path=path, task=task, field=f)
        iid = inst.get("id", f"{id_prefix}-{i}")
        iid = _as_str(iid, path=path, task=task, field=f + ".id", allow_empty=False)
        if iid in seen:
            raise TaskFormatError(f"duplicate instance id {iid!r}", path=path, task=task, field=f + ".id")
        seen.add(iid)
        out.append(Instance(
            id=iid,
            input=_as_str(inst["input"], path=path, task=task, field=f + ".input"),
            outputs=_outputs(inst["output"], path=path, task=task, field=f + ".output"),
        ))
    return out


def _str_list(value: Any, *, path: str, task: str, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise TaskFormatError(f"expected a list of strings, got {type(value).__name__}",
                              path=path, task=task, field=field)
    return [_as_str(v, path=path, task=task, field=f"{field}[{i}]") for i, v in enumerate(value)]


def sni_task_from_dict(data: Any, *, name: str, path: str = "<memory>", window: InstanceWindow | None = None) -> Task:
    """Build a Task from a parsed Super-NaturalInstructions task dict."""
    if not isinstance(data, dict):
        raise TaskFormatError(f"expected a JSON object at top level, got {type(data).__name__}",
                              path=path, task=name)
    for key in _SNI_REQUIRED:
        if key not in data:
            raise TaskFormatError("missing required field", path=path, task=name, field=key)
    prefix = name.split("_")[0]
    return Task(
        name=name,
        family=FAMILY,
        definition=_definition(data["Definition"], path=path, task=name),
        positive_examples=_examples(data.get("Positive Examples"), path=path, task=name,
                                    field="Positive Examples"),
        negative_examples=_examples(data.get("Negative Examples"), path=path, task=name,
                                    field="Negative Examples"),
        instances=_instances(data["Instances"], path=path, task=name, id_prefix=prefix, window=window),
        categories=_str_list(data.get("Categories"), path=path, task=name, field="Categories"),
        languages=_str_list(data.get("Input_language", ["English"]), path=path, task=name,
                            field="Input_language") or ["English"],
        source=path,
        extra={k: data[k] for k in ("Source", "Domains", "Reasoning", "Instance License") if k in data},
    )


def load_sni_file(path: str | Path, window: InstanceWindow | None = None) -> list[Task]:
    p = Path(path)
    return [sni_task_from_dict(_read_json(p), name=p.stem, path=str(p), window=window)]


def niv1_task_from_dict(data: Any, *, name: str, path: str = "<memory>", window: InstanceWindow | None = None) -> Task:
    """NI v1 (61 tasks): Title/Prompt/Definition/Things to Avoid/Emphasis & Caution/Examples."""
    if not isinstance(data, dict):
        raise TaskFormatError("expected a JSON object at top level", path=path, task=name)
    for key in ("Definition", "Instances"):
        if key not in data:
            raise TaskFormatError("missing required field", path=path, task=name, field=key)
    parts = [_as_str(data["Definition"], path=path, task=name, field="Definition")]
    # A field whose value is "-" carries nothing and is skipped when encoding.
    for key, label in (("Things to Avoid", "Things to avoid"), ("Emphasis & Caution", "Emphasis & Caution")):
        val = data.get(key, "-")
        val = _as_str(val, path=path, task=name, field=key)
        if val.strip() and val.strip() != "-":
            parts.append(f"{label}: {val.strip()}")
    examples = data.get("Examples", {}) or {}
    if not isinstance(examples, dict):
        raise TaskFormatError("expected an object with Positive/Negative Examples", path=path, task=name,
                              field="Examples")
    title = data.get("Title", name)
    return Task(
        name=name,
        family=FAMILY,
        definition="\n".join(parts),
        positive_examples=_examples(examples.get("Positive Examples"), path=path, task=name,
                                    field="Examples.Positive Examples", explanation_key="reason"),
        negative_examples=_examples(examples.get("Negative Examples"), path=path, task=name,
                                    field="Examples.Negative Examples", explanation_key="reason"),
        instances=_instances(data["Instances"], path=path, task=name, id_prefix=name, window=window),
        categories=[],
        source=path,
        extra={"title": title, "prompt": data.get("Prompt", "")},
    )


def load_niv1_file(path: str | Path, window: InstanceWindow | None = None) -> list[Task]:
    p = Path(path)
    return [niv1_task_from_dict(_read_json(p), name=p.stem, path=str(p), window=window)]


# --- flat records (JSONL / datasets) -------------------------------------------------------
_TASK_KEYS = ("task", "task_name")
_INPUT_KEYS = ("input", "inputs")
_OUTPUT_KEYS = ("outputs", "output", "targets", "target")


def _pick(rec: dict, keys: Iterable[str]):
    for k in keys:
        if k in rec:
            return k, rec[k]
    return None, None


def tasks_from_records(records: Iterable[dict], *, path: str = "<records>", family: str = FAMILY) -> list[Task]:
    """Group flat records (task, id, input, output(s), definition, categories) into Tasks."""
    by_task: dict[str, dict] = {}
    for n, rec in enumerate(records, start=1):
        if not isinstance(rec, dict):
            raise TaskFormatError(f"record is not an object ({type(rec).__name__})", path=path, line=n)
        tk, tname = _pick(rec, _TASK_KEYS)
        if tk is None:
            raise TaskFormatError("missing key 'task' (or 'task_name')", path=path, line=n, field="task")
        tname = _as_str(tname, path=path, task=None, field=tk, allow_empty=False)
        ik, inp = _pick(rec, _INPUT_KEYS)
        ok, out = _pick(rec, _OUTPUT_KEYS)
        if ik is None:
            raise TaskFormatError("missing key 'input'", path=path, task=tname, field="input", line=n)
        if ok is None:
            raise TaskFormatError("missing key 'output'", path=path, task=tname, field="output", line=n)
        entry = by_task.setdefault(tname, {"definition": None, "categories": [], "instances": [],
                                           "positive": [], "ids": set()})
        if rec.get("definition") is not None and entry["definition"] is None:
            entry["definition"] = _definition(rec["definition"], path=path, task=tname, field="definition")
        if rec.get("categories") and not entry["categories"]:
            entry["categories"] = _str_list(rec["categories"], path=path, task=tname, field="categories")
        if rec.get("positive_examples") and not entry["positive"]:
            entry["positive"] = _examples(rec["positive_examples"], path=path, task=tname,
                                          field="positive_examples")
        iid = str(rec.get("id", f"{tname}-{len(entry['instances'])}"))
        if iid in entry["ids"]:
            raise TaskFormatError(f"duplicate instance id {iid!r}", path=path, task=tname, field="id", line=n)
        entry["ids"].add(iid)
        entry["instances"].append(Instance(
            id=iid,
            input=_as_str(inp, path=path, task=tname, field=ik),
            outputs=_outputs(out, path=path, task=tname, field=ok),
        ))
    tasks = []
    for tname, e in by_task.items():
        tasks.append(Task(name=tname, family=family, definition=e["definition"] or "",
                          instances=e["instances"], positive_examples=e["positive"],
                          categories=e["categories"], source=path))
    if not tasks:
        raise TaskFormatError("holds no records", path=path)
    return tasks


def load_jsonl_file(path: str | Path) -> list[Task]:
    p = Path(path)
    def records():
        try:
            fh = p.open(encoding="utf-8")
        except OSError as e:
            raise TaskFormatError(f"cannot read: {e.strerror}", path=str(p)) from None
        with fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                yield parse_json(line, p, line=n)
    try:
        return tasks_from_records(records(), path=str(p))
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"not valid UTF-8 (byte {e.start})", path=str(p)) from None


def tasks_from_dataset(dataset, *, name: str = "<dataset>") -> list[Task]:
    """The same flat fields from a `datasets.Dataset` (e.g. a Hub release of SNI)."""
    return tasks_from_records(iter(dataset), path=name)


# --- splits --------------------------------------------------------------------------------
def read_split_file(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TaskFormatError(f"cannot read split file: {e.strerror}", path=str(p)) from None
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"split file is not valid UTF-8 (byte {e.start}): convert it to UTF-8",
                              path=str(p)) from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def load_sni_directory(tasks_dir: str | Path, split_dir: str | Path | None = None,
                       *, missing_ok: bool = True) -> tuple[list[Task], list[str], list[str]]:
    """Load a directory of SNI task files and its train/test split lists.

    Returns (tasks, train_names, test_names). Split entries without a task file are dropped
    when `missing_ok` (the official lists name ~876 tasks; a sample has fewer).
    """
    tasks_dir = Path(tasks_dir)
    tasks = []
    for f in sorted(tasks_dir.glob("*.json")):
        tasks.extend(load_sni_file(f))
    names = {t.name for t in tasks}
    train, test = [], []
    if split_dir is not None:
        sd = Path(split_dir)
        for fname, bucket in (("train_tasks.txt", train), ("test_tasks.txt", test)):
            f = sd / fname
            if f.exists():
                entries = read_split_file(f)
                missing = [e for e in entries if e not in names]
                if missing and not missing_ok:
                    raise TaskFormatError(f"names {len(missing)} tasks with no file, e.g. {missing[0]!r}",
                                          path=str(f))
                bucket.extend(e for e in entries if e in names)
    return tasks, train, test


# --- detection -----------------------------------------------------------------------------
def _head(path: Path, n: int = 4096) -> str:
    with path.open("rb") as fh:
        return fh.read(n).decode("utf-8", errors="replace")


def _is_sni(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    head = _head(path, 65536)
    return '"Instances"' in head or bool(re.match(r"task\d+_", path.stem)) or (
        '"Definition"' in head and '"Positive Examples"' in head)


def _is_niv1(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    head = _head(path, 65536)
    return '"Title"' in head and '"Things to Avoid"' in head


def _is_flat_jsonl(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    first = _head(path).split("\n", 1)[0]
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(rec, dict) and any(k in rec for k in _TASK_KEYS) and any(k in rec for k in _INPUT_KEYS)


# Detection order (instructmt/catalog.py): NI v1 first, its files also carry "Definition" and "Instances".
NIV1_FORMAT = TaskFormat("niv1_json", FAMILY, _is_niv1, load_niv1_file, "Natural Instructions v1 task JSON",
                         accepts_window=True, task_named_by_stem=True)
SNI_FORMAT = TaskFormat("sni_json", FAMILY, _is_sni, load_sni_file, "Super-NaturalInstructions task JSON",
                        accepts_window=True, task_named_by_stem=True)
JSONL_FORMAT = TaskFormat("instructions_jsonl", FAMILY, _is_flat_jsonl, load_jsonl_file,
                          "flat JSONL records: task, id, input, output(s), definition")
