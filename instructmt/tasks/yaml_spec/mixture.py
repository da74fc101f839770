"""Mixture YAML: sources, task-name globs and their mixing rates, validated with file and line."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from ...errors import ConfigError, TaskFormatError
from ...validation import SIZE_MAX, TEMPERATURE_RANGE, check_number
from ..registry import load_path
from ..schema import Task
from .marked import Marked, line_of
from .schema import MIXTURE_KEYS, MixtureSpec
from .validate import Collector, check_keys, read_with_includes, resolve_path, root_of


RATE_RANGE = (0.0, 1e6)


def _mixture_number(col: Collector, value: Any, key: str, bounds: tuple, integer: bool,
                    line: int | None) -> Any:
    """The value if it is a finite number in `bounds`; else record the error and return None."""
    try:
        return check_number(value, key, *bounds, integer=integer)
    except ConfigError as e:
        col.add(str(e), line)
        return None


def load_mixture_yaml(path: str | Path) -> MixtureSpec:
    p = Path(path)
    col = Collector(p)
    data, _ = read_with_includes(p, col)
    if not data:
        col.raise_if_any()
    if "mixture" not in data:
        col.add("not a mixture file (no 'mixture:' key)", data.line)
        col.raise_if_any()
    check_keys(data, MIXTURE_KEYS, col, p, "mixture")
    rate = data.get("rate", "examples_proportional")
    default_rate: float | None = None
    if isinstance(rate, str):
        if rate != "examples_proportional":
            col.add(f"rate must be a number or 'examples_proportional', got {rate!r}", line_of(data, "rate"))
    elif isinstance(rate, (int, float)) and not isinstance(rate, bool):
        default_rate = _mixture_number(col, rate, "rate", RATE_RANGE, False, line_of(data, "rate"))
    temperature = data.get("temperature", 1.0)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        temperature = _mixture_number(col, temperature, "temperature", TEMPERATURE_RANGE, False,
                                      line_of(data, "temperature"))
    cap = data.get("cap")
    if isinstance(cap, int) and not isinstance(cap, bool):
        cap = _mixture_number(col, cap, "cap", (1, SIZE_MAX), True, line_of(data, "cap"))
    entries: list[tuple[str, float | None]] = []
    raw_entries = data.get("entries", ["*"])
    for i, e in enumerate(raw_entries if isinstance(raw_entries, list) else []):
        if isinstance(e, str):
            entries.append((e, default_rate))
        elif isinstance(e, Marked):
            check_keys(e, {"pattern": str, "rate": (int, float)}, col, p, f"entries[{i}]")
            if "pattern" not in e:
                col.add(f"entries[{i}] needs 'pattern'", e.line)
                continue
            r = e.get("rate", default_rate)
            if r is not None:
                r = _mixture_number(col, r, f"entries[{i}].rate", RATE_RANGE, False, line_of(e, "rate"))
                if r is None:
                    continue
            entries.append((str(e["pattern"]), None if r is None else float(r)))
        else:
            col.add(f"entries[{i}] must be a task name/glob or a mapping with pattern and rate", line_of(data, "entries"))
    sources: list[Path] = []
    root = root_of(data, p, col)
    for s in data.get("sources") or []:
        if not isinstance(s, str):
            col.add("sources must be paths", line_of(data, "sources"))
            continue
        r = resolve_path(s, base=p.parent, root=root, allow_absolute=bool(data.get("allow_absolute")), col=col,
                          path=p, line=line_of(data, "sources"), key="sources")
        if r is not None:
            if not r.exists():
                col.add(f"source not found: {s}", line_of(data, "sources"))
            sources.append(r)
    if entries and all(r == 0 for _, r in entries if r is not None) and all(r is not None for _, r in entries):
        col.add("every entry's rate is 0: the mixture would sample nothing", line_of(data, "entries"))
    col.raise_if_any()
    return MixtureSpec(name=str(data["mixture"]), file=p, entries=entries, cap=cap,
                       temperature=float(temperature), sources=sources,
                       rate=rate if isinstance(rate, str) else "fixed")


def load_mixture_tasks(path: str | Path) -> tuple[MixtureSpec, list[Task]]:
    """The mixture spec and the tasks its sources hold that its entries select."""
    spec = load_mixture_yaml(path)
    tasks: list[Task] = []
    for src in spec.sources:
        tasks.extend(load_path(src))
    chosen = spec.match(t.name for t in tasks)
    unmatched = [pat for pat, _ in spec.entries if not any(fnmatch.fnmatchcase(t.name, pat) for t in tasks)]
    if unmatched:
        raise TaskFormatError(f"entry {unmatched[0]!r} matches no task in the sources", path=str(path))
    return spec, [t for t in tasks if t.name in chosen]
