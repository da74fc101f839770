"""Facts about a run directory, in one place: the metadata file's name, how to read it, how to find a
run's model directory, and the atomic directory write every saved artefact goes through.

Layout: `RUN/model/` holds the adapter (or full model), the tokenizer and `instructmt_run.json`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from .errors import InstructMTError

RUN_META = "instructmt_run.json"


def model_dir_of(run: str | Path) -> Path | None:
    """RUN/model when given a run directory, the directory itself when it is a model directory, else None."""
    p = Path(run)
    if (p / "model" / RUN_META).exists():
        return p / "model"
    if (p / RUN_META).exists():
        return p
    return None


def read_run_meta(model_dir: str | Path) -> dict:
    p = Path(model_dir) / RUN_META
    if not p.exists():
        raise InstructMTError(f"{model_dir} is not an instructmt model directory (no {RUN_META})")
    return json.loads(p.read_text(encoding="utf-8"))


def atomic_save_dir(final: str | Path, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp_dir)` then rename tmp_dir to `final` (replacing it): a run killed mid-write
    leaves the previous directory intact."""
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final
