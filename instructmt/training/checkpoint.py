"""Atomic checkpoints: write to a temporary directory, then rename. A run killed mid-write leaves
the previous checkpoint intact and loadable."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..io_safety import OutputError, user_io_error

STATE_FILE = "trainer_state.json"
_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def tmp_dir_for(root: str | Path, step: int) -> Path:
    return Path(root) / f".tmp-step-{step}"


def finalize(root: str | Path, step: int, state: dict, keep: int) -> Path:
    """Main process only: write the state file last, rename into place, prune old checkpoints."""
    root = Path(root)
    tmp = tmp_dir_for(root, step)
    final = root / f"step-{step}"
    try:
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError as e:
        raise user_io_error(e, final, "write the checkpoint") from None
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_state(ckpt: str | Path) -> dict:
    """The checkpoint's trainer state; a truncated or unreadable file is a one-line user error."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise user_io_error(e, path, "read the checkpoint state") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int) \
            or not isinstance(state.get("epoch"), int):
        raise OutputError(f"corrupted checkpoint state (truncated or not a trainer state): delete {Path(ckpt)} "
                          "to resume from the checkpoint before it, or start without --resume", path)
    return state
