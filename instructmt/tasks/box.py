"""BoX biomedical instructions (Mihir3009/In-BoXBART, ANCHORS.md §3).

`BoX_instructions.json` maps each of its 32 task names to {"Definition:" (the key keeps its
colon), "Examples": [{input, output, explanation}], "Prompt"}. The repository ships no task
data, so instances come from files beside it, one per task, named after the task:
`<Task>.csv` / `.tsv` / `.jsonl` (also under `instances/` or `data/`), with input/output columns
(In-BoXBART's CSVs use `Input`/`Output`). A gold output holding several answers joined with ", "
stays whole as the training target (In-BoXBART trains on it whole); its parts are kept in
`fields["answers"]` and the BoX metrics split references on ", " as In-BoXBART's evaluation
does, scoring the max over the parts (and the whole). A task with instructions but no instance file is kept
out of the loaded tasks and listed by `instruction_only_tasks` (and by `tasks validate`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import TaskFormatError
from .registry import TaskFormat
from .textio import parse_json
from .schema import Example, Instance, Task

FAMILY = "box"
DEFINITION_KEY = "Definition:"
ANSWER_SEPARATOR = ", "
INSTANCE_SUFFIXES = (".csv", ".tsv", ".jsonl")
INSTANCE_DIRS = (".", "instances", "data")
_INPUT_COLUMNS = ("input", "Input", "source", "text")
_OUTPUT_COLUMNS = ("output", "Output", "target", "label", "outputs")

# In-BoXBART's task categories (paper, Table 1), used as SNI-style category keys.
CATEGORIES = {
    **{t: "Named Entity Recognition" for t in (
        "AnatEM", "BC2GM", "BC4CHEMD", "BC5CDR", "BioNLP09", "BioNLP_09", "BioNLP11EPI", "BioNLP11ID",
        "BioNLP13CG", "BioNLP13GE", "BioNLP13PC", "CRAFT", "Ex-PTM", "JNLPBA", "NCBI", "linnaeus")},
    "POS_Genia": "POS Tagging",
    "BioASQ-8b_factoid": "Question Answering", "BioASQ-8b_list": "Question Answering",
    "BioASQ-8b_yesno": "Question Answering", "PubMed": "Question Answering",
    "Chemprot": "Relation Extraction", "DDI": "Relation Extraction",
    "Medical_Drugs": "Medical Drugs",
    **{t: "Text Classification" for t in ("Accelerometer", "Acromegaly", "COVID", "Cooking", "HRT", "HoC")},
    "De-identification_2006": "De-identification",
    "Riskfactors_heart_disease_2014_yesno": "Risk Factor Identification",
    "Time_riskfactors_heart_disease_2014_multi-label": "Risk Factor Identification",
}
METRICS = ["box_rougeL", "box_em", "box_f1", "box_sacrebleu"]


@dataclass
class BoxInstructions:
    definition: str
    examples: list[Example]
    prompt: str


def read_instructions(path: str | Path) -> dict[str, BoxInstructions]:
    p = Path(path)
    try:
        data = parse_json(p.read_text(encoding="utf-8"), p)
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(p)) from None
    if not isinstance(data, dict) or not data:
        raise TaskFormatError("expected an object mapping task names to instructions", path=str(p))
    out = {}
    for task, spec in data.items():
        if not isinstance(spec, dict):
            raise TaskFormatError("expected an object", path=str(p), task=task)
        if DEFINITION_KEY not in spec:
            hint = " (the BoX key is 'Definition:' with a colon)" if "Definition" in spec else ""
            raise TaskFormatError("missing field" + hint, path=str(p), task=task, field=DEFINITION_KEY)
        examples = []
        for i, ex in enumerate(spec.get("Examples") or []):
            if not isinstance(ex, dict) or "input" not in ex or "output" not in ex:
                raise TaskFormatError("needs input and output", path=str(p), task=task, field=f"Examples[{i}]")
            examples.append(Example(input=str(ex["input"]), output=str(ex["output"]),
                                    explanation=str(ex.get("explanation", "") or "")))
        out[task] = BoxInstructions(definition=str(spec[DEFINITION_KEY]), examples=examples,
                                    prompt=str(spec.get("Prompt", "") or ""))
    return out


def split_answers(output: str) -> list[str]:
    """In-BoXBART scores each ", "-joined gold answer as its own reference."""
    parts = [a.strip() for a in str(output).split(ANSWER_SEPARATOR)]
    return [a for a in parts if a] or [str(output)]


def find_instance_file(instructions_path: Path, task: str) -> Path | None:
    for sub in INSTANCE_DIRS:
        for suffix in INSTANCE_SUFFIXES:
            cand = instructions_path.parent / sub / f"{task}{suffix}"
            if cand.is_file():
                return cand
    return None


def _pick(rec: dict, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if k in rec:
            return k
    lower = {k.lower(): k for k in rec}
    for k in keys:
        if k.lower() in lower:
            return lower[k.lower()]
    return None


def read_instances(path: str | Path, task: str) -> list[Instance]:
    """Instances from a CSV/TSV (header with input/output columns) or JSONL file."""
    p = Path(path)
    try:
        if p.suffix == ".jsonl":
            records = []
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    records.append((n, parse_json(line, p, line=n)))
        else:
            with p.open(encoding="utf-8", newline="") as fh:
                records = [(n, r) for n, r in enumerate(csv.DictReader(fh, delimiter="\t" if p.suffix == ".tsv"
                                                                         else ","), start=2)]
    except OSError as e:
        raise TaskFormatError(f"cannot read: {e.strerror}", path=str(p), task=task) from None
    if not records:
        raise TaskFormatError("holds no instances", path=str(p), task=task)
    first = records[0][1]
    ik, ok = _pick(first, _INPUT_COLUMNS), _pick(first, _OUTPUT_COLUMNS)
    if ik is None or ok is None:
        raise TaskFormatError(f"needs input and output columns (found: {', '.join(map(str, first))})",
                              path=str(p), task=task, field="input" if ik is None else "output")
    out = []
    for n, rec in records:
        if not isinstance(rec, dict) or rec.get(ik) is None or rec.get(ok) is None:
            raise TaskFormatError("record lacks input or output", path=str(p), line=n, task=task)
        gold = rec[ok]
        outs = [str(g) for g in gold] if isinstance(gold, list) else [str(gold)]
        answers = [a for o in outs for a in split_answers(o)]
        iid = str(rec.get("id") or f"{task}-{len(out)}")
        out.append(Instance(id=iid, input=str(rec[ik]), outputs=outs, fields={"answers": answers}))
    return out


def box_task(task: str, instr: BoxInstructions, instances: list[Instance], *, source: str) -> Task:
    return Task(name=task, family=FAMILY, definition=instr.definition, instances=instances,
                positive_examples=list(instr.examples), categories=[CATEGORIES.get(task, "Biomedical")],
                metrics=list(METRICS), source=source, extra={"prompt": instr.prompt})


def load_box(path: str | Path) -> list[Task]:
    """Tasks of a BoX instructions file that have instance data beside it."""
    p = Path(path)
    tasks = []
    for task, instr in read_instructions(p).items():
        inst_file = find_instance_file(p, task)
        if inst_file is None:
            continue
        tasks.append(box_task(task, instr, read_instances(inst_file, task), source=str(inst_file)))
    return tasks


def instruction_only_tasks(path: str | Path) -> list[str]:
    """Tasks that have instructions but no instance file (listed, not an error)."""
    p = Path(path)
    return [t for t in read_instructions(p) if find_instance_file(p, t) is None]


def instance_files(path: str | Path) -> list[Path]:
    p = Path(path)
    return [f for t in read_instructions(p) if (f := find_instance_file(p, t)) is not None]


def is_box_file(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    with path.open("rb") as fh:
        head = fh.read(8192).decode("utf-8", errors="replace")
    return f'"{DEFINITION_KEY}"' in head and '"Examples"' in head


@lru_cache(maxsize=32)
def _task_names(path: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(read_instructions(path))


def companion_of(path: Path) -> str | None:
    """An instance file that belongs to a BoX instructions file in the same or parent directory."""
    if path.suffix not in INSTANCE_SUFFIXES:
        return None
    for d in (path.parent, path.parent.parent):
        for cand in sorted(d.glob("*.json")):
            try:
                if is_box_file(cand) and path.stem in _task_names(str(cand), cand.stat().st_mtime_ns) and \
                        find_instance_file(cand, path.stem) == path:
                    return f"BoX instances of task {path.stem!r} in {cand.name}"
            except (OSError, TaskFormatError):
                continue
    return None


def describe(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return {"tasks": len(read_instructions(p)), "with_instances": [f.stem for f in instance_files(p)],
            "instruction_only": instruction_only_tasks(p)}


FORMAT = TaskFormat("box_instructions", FAMILY, is_box_file, load_box,
                    "BoX_instructions.json (+ <Task>.csv/.tsv/.jsonl instance files beside it)",
                    companion=companion_of)
