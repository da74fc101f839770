"""decaNLP source: IWSLT."""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_text
from .common import FAMILY, make_task, qa_instance, task_name


_LANGS = {"en": "English", "de": "German", "fr": "French", "ar": "Arabic", "cs": "Czech"}
_SEG = re.compile(r"<seg[^>]*>(.*?)</seg>", re.S)


def _iwslt_lines(path: Path) -> list[str]:
    """Plain text, the `train.tags` layout (tag lines dropped) or `*.xml` (<seg> contents)."""
    text = read_text(path)
    if path.suffix == ".xml" or path.name.endswith(".xml"):
        return [" ".join(s.split()) for s in _SEG.findall(text)]
    return [ln.strip() for ln in text.splitlines() if not ln.lstrip().startswith("<")]


def _iwslt_pair(path: Path) -> tuple[Path, str, str, str] | None:
    """(target path, src lang, trg lang, language pair) for an English-side IWSLT file."""
    name = path.name
    m = re.match(r"^(.*)\.(en)(\.xml)?$", name)
    if not m:
        return None
    for trg in ("de", "fr", "ar", "cs"):
        cand = path.with_name(f"{m.group(1)}.{trg}{m.group(3) or ''}")
        if cand.exists():
            return cand, "en", trg, f"en.{trg}"
    return None


def load_iwslt(path: str | Path) -> list[Task]:
    p = Path(path)
    pair = _iwslt_pair(p)
    if pair is None:
        raise TaskFormatError("IWSLT source needs an English file X.en with its target X.de beside it", path=str(p))
    trg_path, src, trg, lp = pair
    question = f"Translate from {_LANGS[src]} to {_LANGS[trg]}"
    src_lines, trg_lines = _iwslt_lines(p), _iwslt_lines(trg_path)
    if len(src_lines) != len(trg_lines):
        raise TaskFormatError(f"{len(src_lines)} source lines but {len(trg_lines)} lines in {trg_path.name}",
                              path=str(p))
    name = task_name("iwslt", p)
    out = [qa_instance(f"{name}-{i}", s, question, [t]) for i, (s, t) in enumerate(zip(src_lines, trg_lines))
           if s and t]
    return [make_task("iwslt.en.de", name, out, p, language_pair=lp, target_file=str(trg_path))]


def _is_iwslt(path: Path) -> bool:
    return _iwslt_pair(path) is not None


def target_side_companion(path: Path) -> str | None:
    m = re.match(r"^(.*)\.(de|fr|ar|cs)(\.xml)?$", path.name)
    if m and path.with_name(f"{m.group(1)}.en{m.group(3) or ''}").exists():
        return f"IWSLT target side of {m.group(1)}.en{m.group(3) or ''}"
    return None


FORMAT = TaskFormat("decanlp_iwslt", FAMILY, _is_iwslt, load_iwslt, "IWSLT parallel text X.en + X.de",
                    companion=target_side_companion)
