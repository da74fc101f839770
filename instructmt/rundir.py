"""Facts about a run directory, in one place: the metadata file's name and where a run's model
directory is. (Writing into run directories safely is `io_safety`; reading the metadata with its
checks is `models.loading.read_run_meta`.)

Layout: `RUN/model/` holds the adapter (or full model), the tokenizer and `instructmt_run.json`.
"""

from __future__ import annotations

from pathlib import Path

RUN_META = "instructmt_run.json"


def model_dir_of(run: str | Path) -> Path | None:
    """RUN/model when given a run directory, the directory itself when it is a model directory, else None."""
    p = Path(run)
    if (p / "model" / RUN_META).exists():
        return p / "model"
    if (p / RUN_META).exists():
        return p
    return None
