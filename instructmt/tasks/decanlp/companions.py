"""Files that belong to another file's task (an IWSLT target side, WikiSQL tables, the other stories
of a CNN/DailyMail directory), so `tasks validate` can say why they load no task of their own. Each
source says it for its own files (`TaskFormat.companion`); this module asks them in turn."""

from __future__ import annotations

from pathlib import Path

from .cnn_dailymail import story_companion, url_list_companion
from .iwslt import target_side_companion
from .wikisql import tables_companion


def companion_of(path: Path) -> str | None:
    """Why a file is covered by another one's task (for `tasks validate` listings), or None."""
    for check in (story_companion, target_side_companion, tables_companion, url_list_companion):
        why = check(path)
        if why:
            return why
    return None
