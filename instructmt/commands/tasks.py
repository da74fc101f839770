"""`instructmt tasks list|show|validate`: see what task files hold and check them all at once.

PATH may be a task YAML, a mixture YAML, a data file in any supported format, or a directory:
directories are walked recursively; every file is recognised by name and content (SNI task
JSON, BoX instructions, ChEBI-20 TSV, USPTO CSV, each decaNLP source, task YAML ...). Files
that hold no tasks (READMEs, licenses, manifests, URL lists, split lists, files another file's
task already covers) are listed as skipped with the reason, never as failures.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import InstructMTError
from ..tasks.registry import DATA_SUFFIXES, detect_format, load_file, unreadable_reason
from ..tasks.schema import Task

DEFAULT_PATHS = ["tasks"]
_NON_TASK = [
    (re.compile(r"^readme(\..*)?$", re.I), "README"),
    (re.compile(r"^(licen[cs]e|copying|notice)([._-].*)?$", re.I), "license"),
    (re.compile(r"^manifest(\..*)?$", re.I), "manifest"),
    (re.compile(r"^url_list.*\.txt$", re.I), "URL list"),
    (re.compile(r".*\.(md|rst|png|jpg|jpeg|gif|pdf|pkl|pt|bin|safetensors|lock|py|sh|cfg|toml|ini)$", re.I),
     "not a task file"),
]


@dataclass
class ScanResult:
    tasks: list[tuple[Task, Path]] = field(default_factory=list)
    instance_counts: list[int] = field(default_factory=list)  # per entry of `tasks`
    # False (validate): a task's instances are checked, counted and dropped file by file, so
    # validating the 3 GB SNI release never holds its 5M instances at once
    keep_instances: bool = True
    loaded: list[tuple[Path, str, int]] = field(default_factory=list)  # path, format, task count
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def _companion_reason(path: Path) -> str | None:
    from ..tasks import box, decanlp
    for fn in (decanlp.companion_of, box.companion_of):
        try:
            reason = fn(path)
        except (OSError, InstructMTError, UnicodeDecodeError):
            reason = None
        if reason:
            return reason
    return None


def _is_split_list(path: Path) -> bool:
    if path.suffix != ".txt":
        return False
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and all(re.fullmatch(r"task\d+_[\w\-.]+", ln) for ln in lines[:50])


def skip_reason(path: Path) -> str | None:
    for pattern, why in _NON_TASK:
        if pattern.match(path.name):
            return why
    if _is_split_list(path):
        return "task split list (task names, no data)"
    return _companion_reason(path)


def _task_notes(task: Task) -> list[str]:
    return [str(n) for n in task.extra.get("notes", [])]


def _add_task(result: ScanResult, task: Task, path: Path) -> None:
    result.tasks.append((task, path))
    result.instance_counts.append(len(task.instances))
    result.notes.extend((path, f"task {task.name!r}: {n}") for n in _task_notes(task))
    if not result.keep_instances:
        task.instances = []


def _load_yaml(path: Path, result: ScanResult, declared: dict[Path, Path]) -> None:
    from ..tasks import yaml_spec
    from ..tasks.yaml_spec import Collector, SpecProblems, load_spec, parse_task_yaml
    if yaml_spec.is_mixture_yaml(path):
        try:
            spec, tasks = yaml_spec.load_mixture_tasks(path)
        except SpecProblems as e:
            result.problems.extend((path, str(p)) for p in e.problems)
            return
        except InstructMTError as e:
            result.problems.append((path, str(e)))
            return
        result.loaded.append((path, "mixture_yaml", len(tasks)))
        result.notes.append((path, f"mixture {spec.name!r}: {len(tasks)} tasks from {len(spec.sources)} sources, "
                                   f"cap={spec.cap}, temperature={spec.temperature}"))
        return  # mixture tasks are the sources' tasks; they are validated where they live
    before = len(result.problems)
    col = Collector(path)
    try:
        specs = parse_task_yaml(path, col)
    except InstructMTError as e:
        result.problems.append((path, str(e)))
        return
    result.problems.extend((path, str(p)) for p in col.problems)
    count = 0
    for spec in specs:
        try:
            if spec.source is not None:
                for src in yaml_spec.resolve_sources(spec):
                    declared[src] = path
                    if src.is_dir():
                        for f in src.rglob("*"):
                            declared[f.resolve()] = path
                    elif src.suffix == ".json":
                        _note_instruction_only(src, result)
            tasks = load_spec(spec)
        except InstructMTError as e:
            result.problems.append((path, str(e)))
            continue
        for t in tasks:
            _add_task(result, t, path)
        count += len(tasks)
    if len(result.problems) == before:
        result.loaded.append((path, "task_yaml", count))


def _load_file(path: Path, result: ScanResult, *, explicit: bool) -> None:
    try:
        fmt = detect_format(path)
    except InstructMTError as e:  # e.g. JSON nested too deeply for a detector to peek at
        result.problems.append((path, str(e)))
        return
    if fmt is None and path.suffix.lower() in DATA_SUFFIXES and (explicit or skip_reason(path) is None):
        unreadable = unreadable_reason(path)
        if unreadable:  # a task file we cannot read is a problem, never a quiet skip
            result.problems.append((path, unreadable))
            return
    if fmt is None:
        reason = skip_reason(path) or "no known task format"
        if explicit and reason == "no known task format":
            result.problems.append((path, "unrecognised task file format"))
        else:
            result.skipped.append((path, reason))
        return
    try:
        tasks = load_file(fmt, path)
    except InstructMTError as e:
        result.problems.append((path, str(e)))
        return
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as e:  # a loader slip still gets one line
        result.problems.append((path, f"{type(e).__name__}: {e}"))
        return
    result.loaded.append((path, fmt.name, len(tasks)))
    for t in tasks:
        _add_task(result, t, path)
    if fmt.name == "box_instructions":
        _note_instruction_only(path, result)


def _note_instruction_only(path: Path, result: ScanResult) -> None:
    """BoX tasks with instructions but no instance file are listed, not failed."""
    from ..tasks.box import is_box_file, instruction_only_tasks
    try:
        only = instruction_only_tasks(path) if is_box_file(path) else []
    except (OSError, InstructMTError):
        return  # the loader reports the problem itself
    if only:
        result.notes.append((path, f"{len(only)} BoX tasks have instructions but no instance file "
                                   f"(<Task>.csv/.tsv/.jsonl): {', '.join(only)}"))


def _walk(root: Path) -> list[Path]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()
             and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts)]
    # task YAMLs first, so the data files they declare are not loaded a second time
    return sorted(files, key=lambda p: (p.suffix.lower() not in (".yaml", ".yml"), str(p)))


def scan(paths: list[str | Path], *, keep_instances: bool = True) -> ScanResult:
    """Load every task under `paths`, collecting each problem instead of stopping at the first."""
    result = ScanResult(keep_instances=keep_instances)
    declared: dict[Path, Path] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            result.problems.append((p, "no such file or directory"))
            continue
        files = _walk(p) if p.is_dir() else [p]
        # a bar only on a terminal (disable=None) and only when there is a lot to read
        for f in tqdm(files, desc=f"validating {p}", unit="file", disable=None if len(files) > 50 else True,
                      leave=False):
            if f.resolve() in declared and f.suffix.lower() not in (".yaml", ".yml"):
                result.skipped.append((f, f"declared in {declared[f.resolve()]}"))
                continue
            if f.suffix.lower() in (".yaml", ".yml"):
                from ..tasks.yaml_spec import is_mixture_yaml, is_task_yaml
                try:
                    is_spec = is_task_yaml(f) or is_mixture_yaml(f)
                except OSError as e:
                    result.problems.append((f, f"cannot read: {e.strerror}"))
                    continue
                if is_spec:
                    try:
                        _load_yaml(f, result, declared)
                    except Exception as e:  # noqa: BLE001 - validate reports, never crashes
                        result.problems.append((f, f"{type(e).__name__}: {e}"))
                else:
                    result.skipped.append((f, "YAML without family:/tasks:/mixture: (not a task file)"))
                continue
            try:
                _load_file(f, result, explicit=not p.is_dir())
            except Exception as e:  # noqa: BLE001 - validate reports, never crashes
                result.problems.append((f, f"{type(e).__name__}: {e}"))
    names: dict[str, Path] = {}
    for t, src in result.tasks:
        if t.name in names and names[t.name] != src:
            result.problems.append((src, f"task name {t.name!r} is also produced by {names[t.name]}"))
        names.setdefault(t.name, src)
    return result


# --- commands -------------------------------------------------------------------------------
def _list(args) -> int:
    res = scan(args.paths or DEFAULT_PATHS)
    tasks = [t for t, _ in res.tasks if not args.family or t.family == args.family]
    if not tasks:
        if res.problems:
            raise InstructMTError(f"no task loaded; first problem: {res.problems[0][0]}: {res.problems[0][1]}")
        print("no tasks" + (f" of family {args.family!r}" if args.family else ""))
        return 0
    rows = [(t.name, t.family, str(len(t.instances)), ",".join(t.metrics), t.encoding or "-") for t in tasks]
    head = ("task", "family", "instances", "metrics", "encoding")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\n{len(tasks)} tasks" + (f"; {len(res.problems)} problems (run `instructmt tasks validate`)"
                                      if res.problems else ""))
    return 0


def _show(args) -> int:
    from ..validation import SIZE_MAX, check_flags
    check_flags(args, {"instance": (0, SIZE_MAX)})  # a negative index silently showed one from the end
    from ..prompts.render import PromptRenderer
    from ..tasks.registry import TaskRegistry
    res = scan(args.tasks)
    if not res.tasks and res.problems:
        raise InstructMTError(f"no task loaded; first problem: {res.problems[0][0]}: {res.problems[0][1]}")
    registry = TaskRegistry()
    for t, _ in res.tasks:
        if t.name not in registry:
            registry.add(t)
    task = registry.get(args.name)
    print(f"task:        {task.name}")
    print(f"family:      {task.family}")
    print(f"source:      {task.source}")
    print(f"categories:  {', '.join(task.categories) or '-'}")
    print(f"metrics:     {', '.join(task.metrics)} (headline: {task.metric})")
    print(f"encoding:    {task.encoding or '(run default)'}")
    print(f"counts:      {len(task.instances)} instances, {len(task.positive_examples)} positive / "
          f"{len(task.negative_examples)} negative examples")
    print(f"definition:  {task.definition or '-'}")
    for note in _task_notes(task):
        print(f"note:        {note}")
    if task.instances:
        inst = task.instances[min(args.instance, len(task.instances) - 1)]
        encoding = args.encoding or task.encoding or "def+pos2"
        renderer = PromptRenderer(encoding)
        prompt = renderer.render(task, inst) if not args.encoding else \
            PromptRenderer(args.encoding).render(_without_forced_encoding(task), inst)
        print(f"\n--- prompt (instance {inst.id}, encoding {encoding}):\n{prompt}")
        print(f"--- target(s): {' | '.join(inst.outputs)}")
    return 0


def _without_forced_encoding(task: Task) -> Task:
    from dataclasses import replace
    return replace(task, encoding=None)


def _validate(args) -> int:
    res = scan(args.paths, keep_instances=False)
    ok_tasks = len(res.tasks)
    for path, fmt, n in res.loaded:
        print(f"OK    {path}  [{fmt}] {n} task{'s' if n != 1 else ''}")
    if args.verbose:
        for (t, src), n in zip(res.tasks, res.instance_counts):
            print(f"      {t.name}: {n} instances ({t.family}; {', '.join(t.metrics)})")
    for path, why in res.skipped:
        print(f"SKIP  {path}: {why}")
    for path, note in res.notes:
        print(f"NOTE  {path}: {note}")
    for path, problem in res.problems:
        print(f"ERROR {path}: {problem}")
    instances = sum(res.instance_counts)
    print(f"\n{len(res.loaded)} files loaded ({ok_tasks} tasks, {instances} instances), {len(res.skipped)} skipped, "
          f"{len(res.problems)} problem{'s' if len(res.problems) != 1 else ''}")
    return 1 if res.problems else 0


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list, show and validate task files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps = p.add_subparsers(dest="tasks_command", metavar="ACTION")

    lst = ps.add_parser("list", help="list the tasks under PATHs",
                        description="List every task (name, family, instance count, metrics, encoding).")
    lst.add_argument("paths", nargs="*", metavar="PATH", help="task YAML, data file or directory (default: tasks)")
    lst.add_argument("--family", help="only this family (natural_instructions, decanlp, box, molecular, ...)")
    lst.set_defaults(func=_list)

    show = ps.add_parser("show", help="show one task: definition, counts, a rendered prompt",
                         description="Show a task's definition, metrics, counts and one rendered prompt.")
    show.add_argument("name", help="task name (near names are suggested on a miss)")
    show.add_argument("--tasks", nargs="+", default=DEFAULT_PATHS, metavar="PATH",
                      help="where to find it (default: tasks)")
    show.add_argument("--encoding", help="render with this encoding instead of the task's own (e.g. def+pos2, qa)")
    show.add_argument("--instance", type=int, default=0, help="instance index to render (default 0)")
    show.set_defaults(func=_show)

    val = ps.add_parser("validate", help="load everything under PATHs and report every problem",
                        description="Load every task file under PATHs; print each problem (file, line, task, "
                                    "field), the files skipped and why, and exit 1 if any problem was found.")
    val.add_argument("paths", nargs="+", metavar="PATH", help="task YAML, data file or directory")
    val.add_argument("-v", "--verbose", action="store_true", help="also list each loaded task")
    val.set_defaults(func=_validate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


__all__ = ["scan", "ScanResult", "skip_reason", "register"]
