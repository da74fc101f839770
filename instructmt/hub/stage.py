"""Staging: write the exact folder that is uploaded (the same one `--dry-run` leaves for inspection)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import safe_yaml
from ..adapters.publishing import MethodExtras, generic_extras, read_json
from ..catalog import ADAPTERS
from ..errors import PublishError
from ..retrieval.publishing import RETRIEVER_METHOD, udr_hub_extras
from ..rundir import RUN_META
from .card import CardInputs, build_card
from .files import TOKENIZER_FILES, VOCAB_FILES, collect_model_files, scan_for_secrets, scrub_paths, tokenizer_differs
from .run import HUB_ID, RETRIEVER_META, RunInfo, looks_like_local_path, resolve_base_model_id

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: str) -> None:
    """The Hub's own repo-id rules, checked before anything is staged, so a dry run refuses exactly
    what the upload would (no '--' or '..', no '.git' ending, name at most 96 characters)."""
    if not REPO_ID.match(repo_id):
        raise PublishError(f"--repo-id {repo_id!r} must look like OWNER/NAME (letters, digits, '-', '_', '.')")
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # start-up time
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"--repo-id {repo_id!r} is not a valid Hub repository id: "
                           f"{' '.join(str(e).split())[:200]}") from None


def method_extras(run: RunInfo) -> MethodExtras:
    """What the run's method adds (its `hub_extras`, from its own folder); a generic section otherwise."""
    if run.method == RETRIEVER_METHOD:
        return udr_hub_extras(run)
    extras = ADAPTERS.get(run.method).hub_extras(run) if run.method in ADAPTERS else None
    return extras if extras is not None else generic_extras(run)


@dataclass
class StagedUpload:
    folder: Path
    files: list[str]  # paths in repo, sorted
    skipped: list[tuple[str, str]]
    card_text: str
    base_model: str | None
    commit_message: str
    commit_description: str


def _write(dst: Path, data: bytes | str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        dst.write_text(data, encoding="utf-8")
    else:
        dst.write_bytes(data)


def _publishable_config(config_text: str, base_model_id: str) -> str:
    data = safe_yaml.safe_load(config_text) or {}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data["model"]["name_or_path"] = base_model_id
    if isinstance(data, dict):
        data.pop("output_dir", None)  # a path on the training machine; meaningless on the Hub
    header = ("# Training config of this run (instructmt). model.name_or_path: the base model's Hub id "
              "(or a random-init preset); output_dir dropped.\n")
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def stage(run: RunInfo, out_dir: Path, *, repo_id: str, base_model_id: str | None = None,
          tokenizer: str = "auto", datasets: list[str] = (), token: str | None = None,
          include_base: bool = False) -> StagedUpload:
    """Write everything that would be uploaded into `out_dir` (which must be empty). On any
    failure the folder is emptied again: a refused run leaves no half-staged copy behind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PublishError(f"output folder {out_dir} is not empty; pick a new one")
    existed = out_dir.exists()
    try:
        return _stage(run, out_dir, repo_id=repo_id, base_model_id=base_model_id, tokenizer=tokenizer,
                      datasets=datasets, token=token, include_base=include_base)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        if existed:
            out_dir.mkdir(parents=True, exist_ok=True)
        raise


def _stage(run: RunInfo, out_dir: Path, *, repo_id: str, base_model_id: str | None, tokenizer: str,
           datasets: list[str], token: str | None, include_base: bool) -> StagedUpload:
    check_repo_id(repo_id)
    if tokenizer not in ("auto", "always", "never"):
        raise PublishError(f"tokenizer mode must be auto, always or never, got {tokenizer!r}")
    for d in datasets:
        if not HUB_ID.match(d.split("=", 1)[-1]) or looks_like_local_path(d.split("=", 1)[-1]):
            raise PublishError(f"--dataset {d!r}: expected a Hub dataset id (OWNER/NAME), optionally FAMILY=OWNER/NAME")
    extras = method_extras(run)
    if extras.task_names is not None:
        run = dataclasses.replace(run, meta=dict(run.meta, task_names=extras.task_names))
    saved_base = run.meta.get("base_saved")
    if include_base and not (saved_base and (run.model_dir / saved_base).is_dir()):
        raise PublishError(f"--include-base: this run saved no base model ({run.model_dir}/base/ is written "
                           "only for random-init presets); publish against --base-model-id instead")
    has_adapter_config = (run.model_dir / "adapter_config.json").is_file()
    weights = extras.weights or ("adapter" if has_adapter_config else "full")
    base_id = resolve_base_model_id(run, base_model_id, self_contained=weights == "full" or include_base)
    include_tok = {"always": True, "never": False}.get(tokenizer)
    if include_tok is None:
        include_tok = base_id is None or tokenizer_differs(run, base_id)
    if include_tok and not any((run.model_dir / n).is_file() for n in VOCAB_FILES):
        raise PublishError(f"{run.model_dir} has no tokenizer files ({', '.join(sorted(VOCAB_FILES)[:4])}, ...), but "
                           "this run's tokenizer must be published (the card would tell users to load one that "
                           "is not uploaded): restore the run's tokenizer files, or pass --tokenizer never when "
                           "the base model's tokenizer is the right one")
    model_files = collect_model_files(run.model_dir, include_tokenizer=include_tok, include_base=include_base,
                                      saved_base=None if saved_base == "." else saved_base)

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def put(rel: str, data: bytes | str) -> None:
        if rel in written:
            raise PublishError(f"two files would be published as {rel!r}")
        _write(out_dir / rel, data)
        written.append(rel)

    def put_json(rel: str, data: Any) -> None:
        put(rel, json.dumps(scrub_paths(data), indent=2, ensure_ascii=False) + "\n")

    for src, rel in model_files.files + extras.files:
        if rel in extras.rewrites:
            put_json(rel, extras.rewrites[rel])
        elif rel == RUN_META:
            put_json(rel, dict(run.meta, base_model=base_id or run.base_model))
        elif rel.endswith("adapter_config.json"):
            ac = read_json(src)
            # peft's AutoPeftModel loads the base from here: never leave a local path in it
            ac["base_model_name_or_path"] = base_id  # None: the base ships in this repo (base/)
            put_json(rel, ac)
        elif rel == "encoder_config.json" and run.method == RETRIEVER_METHOD:
            put_json(rel, dict(read_json(src), source=base_id or ""))
        else:
            put(rel, src.read_bytes())
    if run.config_path:
        put("training_config.yaml", _publishable_config(run.config_path.read_text(encoding="utf-8"),
                                                        base_id or run.base_model))
    if run.method == RETRIEVER_METHOD and (run.run_dir / RETRIEVER_META).is_file():
        put_json(RETRIEVER_META, dict(read_json(run.run_dir / RETRIEVER_META), encoder_source=base_id or ""))
    families = run.task_families()
    put_json("tasks.json", {
        "task_ids": {n: i for i, n in enumerate(run.task_names)},
        "seen": run.seen, "held_out": run.held_out,
        "families": {n: families[n] for n in run.seen + run.held_out if n in families},
    })
    eval_files: list[str] = []
    skipped = list(model_files.skipped)
    if run.eval_dir:
        for src in sorted(run.eval_dir.iterdir()):
            if src.is_file() and src.suffix in (".json", ".md", ".png"):
                put(f"eval/{src.name}", src.read_bytes())
                eval_files.append(f"eval/{src.name}")
            elif src.is_file():
                skipped.append((f"eval/{src.name}", "predictions and raw outputs stay local "
                                                    "(metrics, reports and plots are published)"))

    card = build_card(CardInputs(
        run=run, repo_id=repo_id, base_model=base_id, extras=extras, weights=weights,
        base_in_repo=saved_base if include_base else None,
        tokenizer_included=include_tok and any(Path(r).name in TOKENIZER_FILES for _, r in model_files.files),
        datasets=list(datasets) + list(run.meta.get("datasets") or []), files=sorted(written + ["README.md"]),
        eval_files=eval_files))
    card_text = str(card)
    put("README.md", card_text)
    scan_for_secrets(out_dir, token)
    n_tasks = len(run.seen)
    what = "model" if weights == "full" else f"{run.method} adapter"
    message = f"Publish {what}{f' for {base_id}' if base_id else ''} trained with instructmt on {n_tasks} tasks"
    description = (f"Files: {', '.join(sorted(written))}.\n"
                   f"Held-out tasks evaluated: {len(run.held_out)}.")
    return StagedUpload(out_dir, sorted(written), skipped, card_text, base_id, message, description)
