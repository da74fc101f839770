"""Where instructmt keeps what it can rebuild (converted models, parsed tasks, tokenized data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$INSTRUCTMT_CACHE, else $XDG_CACHE_HOME/instructmt, else ~/.cache/instructmt (read at call time)."""
    env = os.environ.get("INSTRUCTMT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "instructmt"
