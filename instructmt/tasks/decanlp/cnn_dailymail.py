"""decaNLP source: CNN / DailyMail."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from ...errors import TaskFormatError
from ..registry import TaskFormat
from ..schema import Task
from ..textio import read_text
from .common import FAMILY, QUESTIONS, make_task, qa_instance


_END_TOKENS = {".", "!", "?", "...", "'", "`", '"', "\u2019", "\u201d", ")"}


def _fix_missing_period(line: str) -> str:
    if "@highlight" in line or not line or line[-1] in _END_TOKENS:
        return line
    return line + "."


def story_to_qa(text: str) -> tuple[str, str]:
    """(article, summary) from a `.story` file, as decaNLP builds them (NFKC, periods fixed)."""
    article, highlights, in_highlight = [], [], False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        line = _fix_missing_period(line)
        if line.startswith("@highlight"):
            in_highlight = True
        elif in_highlight:
            highlights.append(line)
        else:
            article.append(line)
    return unicodedata.normalize("NFKC", " ".join(article)), unicodedata.normalize("NFKC", " ".join(highlights))


def _stories(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.story"))


@lru_cache(maxsize=64)
def _first_story(directory: str, mtime_ns: int) -> str | None:
    """Name of a directory's first story; cached so detecting 90k stories stays linear."""
    first = min((p.name for p in Path(directory).glob("*.story")), default=None)
    return first


def first_story_of(path: Path) -> str | None:
    d = path.parent
    return _first_story(str(d), d.stat().st_mtime_ns)


def load_cnn_dailymail(path: str | Path) -> list[Task]:
    """All `.story` files of a directory as one task (pass the directory or any story in it)."""
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    out = []
    for story in _stories(directory):
        context, summary = story_to_qa(read_text(story))
        if not summary:
            raise TaskFormatError("story has no @highlight lines", path=str(story))
        out.append(qa_instance(story.stem, context, QUESTIONS["cnn_dailymail"], [summary]))
    name = f"decanlp_cnn_dailymail_{re.sub(r'[^A-Za-z0-9]+', '_', directory.name).strip('_')}"
    return [make_task("cnn_dailymail", name, out, directory)]


def is_story_representative(path: Path) -> bool:
    """One task per story directory: its first `.story` file stands for the directory."""
    if path.suffix != ".story":
        return False
    return first_story_of(path) == path.name


def story_companion(path: Path) -> str | None:
    if path.suffix == ".story" and not is_story_representative(path):
        return f"part of the CNN/DailyMail story set loaded with {first_story_of(path)}"
    return None


def url_list_companion(path: Path) -> str | None:
    if path.suffix == ".txt" and path.name.startswith("url_list"):
        return "CNN/DailyMail URL list (the stories are read from the .story files)"
    return None


def _companion(path: Path) -> str | None:
    return story_companion(path) or url_list_companion(path)


FORMAT = TaskFormat("decanlp_cnn_dailymail", FAMILY, is_story_representative, load_cnn_dailymail,
                    "CNN/DailyMail .story directory", companion=_companion)
