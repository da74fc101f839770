"""Files that belong to another file's task (an IWSLT target side, WikiSQL tables, the other stories
of a CNN/DailyMail directory), so `tasks validate` can say why they load no task of their own."""

from __future__ import annotations

import re
from pathlib import Path

from .cnn_dailymail import first_story_of, is_story_representative


def companion_of(path: Path) -> str | None:
    """Why a file is covered by another one's task (for `tasks validate` listings), or None."""
    if path.suffix == ".story" and not is_story_representative(path):
        return f"part of the CNN/DailyMail story set loaded with {first_story_of(path)}"
    m = re.match(r"^(.*)\.(de|fr|ar|cs)(\.xml)?$", path.name)
    if m and path.with_name(f"{m.group(1)}.en{m.group(3) or ''}").exists():
        return f"IWSLT target side of {m.group(1)}.en{m.group(3) or ''}"
    if path.name.endswith(".tables.jsonl"):
        return f"WikiSQL tables for {path.name.replace('.tables', '')}"
    if path.suffix == ".txt" and path.name.startswith("url_list"):
        return "CNN/DailyMail URL list (the stories are read from the .story files)"
    return None
