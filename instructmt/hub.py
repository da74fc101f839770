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

import json
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

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
ROUTED_METHODS = {"mhr", "mhr-z", "mhr-mu", "poly"}


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


# Where evaluation results live: `instructmt eval --output RUN/eval`, or the demo's report folder.
EVAL_DIRS = ("eval", "report/held_out")


def read_run(path: str | Path, eval_dir: str | Path | None = None) -> RunInfo:
    """Accept a run directory (with model/) or its model/ directory itself."""
    p = Path(path)
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
            config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise PublishError(f"{config_path} is not valid YAML: {e}") from None
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
    weights: str  # "adapter" | "full"


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
        weights = "adapter"
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
        weights = "full"
    elif pickled_weights:
        raise PublishError(f"{model_dir}: weights only as a pickle ({', '.join(pickled_weights)}); "
                           "re-save with save_pretrained(..., safe_serialization=True) — pickles are not published")
    else:
        raise PublishError(f"{model_dir}: no weights found (expected adapter_model.safetensors or *.safetensors)")
    return ModelFiles(files, skipped, weights)


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
# Per-method hooks: extra files and a card section, from files on disk only
# --------------------------------------------------------------------------------------------
@dataclass
class MethodExtras:
    section: str = ""
    files: list[tuple[Path, str]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    # Module to import before PeftModel.from_pretrained when the tuner isn't a builtin peft type.
    register_module: str | None = None
    library_name: str | None = None  # override ("transformers", "sentence-transformers")
    snippet: str | None = None  # override the card's loading snippet


def _custom_tuner(run: RunInfo) -> str | None:
    peft_type = str((run.adapter_config or {}).get("peft_type") or "").upper()
    if peft_type and peft_type not in PEFT_BUILTIN_TYPES:
        return f"instructmt.adapters.{run.method}"
    return None


def _lora_hook(run: RunInfo) -> MethodExtras:
    ac = run.adapter_config or {}
    rows = [("rank r", ac.get("r")), ("alpha", ac.get("lora_alpha")), ("dropout", ac.get("lora_dropout")),
            ("target modules", ", ".join(sorted(ac.get("target_modules") or [])) or None)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v not in (None, ""))
    return MethodExtras(
        section="LoRA (low-rank adapters on the frozen base, peft format).\n\n| setting | value |\n|---|---|\n" + table,
        tags=["lora"], register_module=_custom_tuner(run))


def _full_hook(run: RunInfo) -> MethodExtras:
    return MethodExtras(section="Full fine-tuning: every weight of the base model was trained; the repo holds "
                                "the whole model (safetensors).", library_name="transformers")


def _mhr_hook(run: RunInfo) -> MethodExtras:
    ac = run.adapter_config or {}
    names = run.task_names
    n_tasks = ac.get("n_tasks") or (run.meta.get("options") or {}).get("n_tasks")
    if n_tasks is not None and int(n_tasks) != len(names):
        raise PublishError(f"{run.model_dir}: the router has {n_tasks} task rows but {RUN_META} lists "
                           f"{len(names)} task_names; the task-id table would be wrong")
    settings = {k: ac.get(k) for k in ("n_skills", "n_splits", "r", "poly_type") if ac.get(k) is not None}
    settings.update({k: v for k, v in (run.meta.get("options") or {}).items() if k not in settings})
    setting_rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    ids = "\n".join(f"| {i} | `{n}` |" for i, n in enumerate(names))
    heatmaps = sorted(p.name for p in (run.eval_dir.glob("*rout*.png") if run.eval_dir else []))
    section = ("Multi-head adapter routing (MHR): a shared inventory of LoRA skills mixed per task by a learned "
               "router. Every forward and `generate` call takes `task_ids` (a LongTensor, one id per example) "
               "from the table below; all tasks' routing rows are in this one adapter.\n\n")
    if setting_rows:
        section += "| setting | value |\n|---|---|\n" + setting_rows + "\n\n"
    section += "**Task ids** (row of the router):\n\n| task id | task |\n|---|---|\n" + ids
    for h in heatmaps:
        section += f"\n\n![routing]({'eval/' + h})"
    return MethodExtras(section=section, tags=["mhr", "multi-task", "routing"], register_module=_custom_tuner(run))


def _omega_summary(run: RunInfo, sources: list[str]) -> str:
    """Mean ω per source adapter, read from the safetensors weights (best effort)."""
    try:
        import numpy as np
        from safetensors.numpy import load_file
    except ImportError:  # pragma: no cover
        return ""
    n = len(sources)
    sums, count = np.zeros(n), 0
    for f in sorted(run.model_dir.glob("*.safetensors")):
        try:
            tensors = load_file(str(f))
        except Exception:  # bf16 and friends: numpy cannot hold them — skip the summary
            return ""
        for key, t in tensors.items():
            if "omega" not in key.lower() or n == 0 or n not in t.shape:
                continue
            axis = list(t.shape).index(n)
            sums += np.moveaxis(t.astype("float64"), axis, 0).reshape(n, -1).mean(axis=1)
            count += 1
    if not count:
        return ""
    rows = "\n".join(f"| `{s}` | {v / count:.4f} |" for s, v in zip(sources, sums))
    return f"\n\nMean learned ω per source ({count} scaled modules):\n\n| source adapter | mean ω |\n|---|---|\n{rows}"


def _scalearn_hook(run: RunInfo) -> MethodExtras:
    raw = run.meta.get("source_adapters") or {}
    if isinstance(raw, list):
        raw = {Path(str(s)).name: str(s) for s in raw}
    files: list[tuple[Path, str]] = []
    rows = []
    for name, where in raw.items():
        where_path = Path(str(where))
        if not where_path.is_absolute():
            where_path = run.run_dir / where_path
        if where_path.is_dir():
            dest = f"source_adapters/{name}"
            for src in sorted(where_path.rglob("*")):
                if src.is_file() and src.suffix in SAFE_SUFFIXES and not src.name.startswith("."):
                    files.append((src, f"{dest}/{src.relative_to(where_path).as_posix()}"))
            rows.append(f"| `{name}` | included in this repo: `{dest}/` |")
        elif not looks_like_local_path(str(where)):
            rows.append(f"| `{name}` | [{where}](https://huggingface.co/{where}) |")
        else:
            raise PublishError(f"ScaLearn source adapter {name!r} at {where} is neither a folder on this machine "
                               "nor a Hub id; the published ω would reference an adapter nobody can load")
    variant = (run.meta.get("options") or {}).get("variant") or run.meta.get("variant")
    section = ("ScaLearn: the base and the source adapters are frozen; only the scaling ω that combines the source "
               "adapters' outputs was trained (`o = Σ_i ω_i ⊙ a_i + h`).")
    if variant:
        section += f" Variant: **{variant}**."
    if rows:
        section += "\n\n| source adapter | where |\n|---|---|\n" + "\n".join(rows)
    section += _omega_summary(run, list(raw))
    return MethodExtras(section=section, files=files, tags=["scalearn", "multi-task"],
                        register_module=_custom_tuner(run))


def _qfa_hook(run: RunInfo) -> MethodExtras:
    subnet = run.meta.get("subnet") or {}
    quant = run.meta.get("quantization") or {}
    section = ("QFA-LoRA subnet: the base weights are quantized (one bit-width per layer) and each layer has the "
               "LoRA trained for its bit-width; this repo holds the LoRAs of one chosen subnet. Quantize the base "
               "with the same scheme before loading.")
    bits = list(subnet.values()) if isinstance(subnet, dict) else list(subnet)
    if bits:
        counts = {b: bits.count(b) for b in sorted(set(bits))}
        section += (f"\n\nAverage bit-width **{sum(bits) / len(bits):.2f}** over {len(bits)} layers ("
                    + ", ".join(f"{c}× {b}-bit" for b, c in counts.items()) + ").")
        if isinstance(subnet, dict):
            section += "\n\n| layer | bits |\n|---|---|\n" + "\n".join(f"| `{k}` | {v} |" for k, v in subnet.items())
    if quant:
        section += "\n\nQuantization: " + ", ".join(f"{k}={v}" for k, v in quant.items()) + "."
    return MethodExtras(section=section, tags=["qfa", "quantization", "lora"], register_module=_custom_tuner(run))


def _udr_hook(run: RunInfo) -> MethodExtras:
    pooling = run.meta.get("pooling", "mean")
    section = ("UDR demonstration retriever: a bi-encoder trained with LM feedback (ranking + in-batch loss) to "
               "pick in-context demonstrations. Query = task instruction prefix + input; candidate = prefixed "
               "input + `\\t` + output; score = dot product of the pooled embeddings "
               f"({pooling} pooling); the most similar demonstration goes last, next to the test input.")
    snippet = f"""```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{{repo_id}}")
encoder = AutoModel.from_pretrained("{{repo_id}}").eval()

def embed(texts):
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)  # {pooling} pooling

query = embed(["Sentiment of the sentence: a gripping film"])
candidates = embed(["Sentiment of the sentence: dull and long\\tnegative", "Sentiment of the sentence: a joy\\tpositive"])
print((query @ candidates.T).argsort(descending=True))  # best demonstration first
```"""
    return MethodExtras(section=section, tags=["udr", "retrieval", "in-context-learning"],
                        library_name="transformers", snippet=snippet)


MethodHook = Callable[[RunInfo], MethodExtras]

METHOD_HOOKS: dict[str, MethodHook] = {
    "lora": _lora_hook,
    "full": _full_hook,
    "mhr": _mhr_hook,
    "mhr-z": _mhr_hook,
    "mhr-mu": _mhr_hook,
    "poly": _mhr_hook,
    "scalearn": _scalearn_hook,
    "qfa": _qfa_hook,
    "udr": _udr_hook,
}


def method_extras(run: RunInfo) -> MethodExtras:
    hook = METHOD_HOOKS.get(run.method)
    if hook is None:
        return MethodExtras(section=f"Adapter method `{run.method}`.", register_module=_custom_tuner(run))
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
    data = yaml.safe_load(config_text) or {}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data["model"]["name_or_path"] = base_model_id
    if isinstance(data, dict):
        data.pop("output_dir", None)  # a path on the training machine; meaningless on the Hub
    header = "# Training config of this run (instructmt). model.name_or_path is the base model's Hub id.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def stage(run: RunInfo, out_dir: Path, *, repo_id: str, base_model_id: str | None = None,
          tokenizer: str = "auto", datasets: list[str] = (), token: str | None = None,
          include_base: bool = False) -> StagedUpload:
    """Write everything that would be uploaded into `out_dir` (which must be empty)."""
    from .hub_card import CardInputs, build_card

    if not REPO_ID.match(repo_id):
        raise PublishError(f"--repo-id {repo_id!r} must look like OWNER/NAME (letters, digits, '-', '_', '.')")
    if tokenizer not in ("auto", "always", "never"):
        raise PublishError(f"tokenizer mode must be auto, always or never, got {tokenizer!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PublishError(f"output folder {out_dir} is not empty; pick a new one")
    saved_base = run.meta.get("base_saved")
    if include_base and not (saved_base and (run.model_dir / saved_base).is_dir()):
        raise PublishError(f"--include-base: this run saved no base model ({run.model_dir}/base/ is written "
                           "only for random-init presets); publish against --base-model-id instead")
    full = not (run.model_dir / "adapter_config.json").is_file()
    base_id = resolve_base_model_id(run, base_model_id, self_contained=full or include_base)
    include_tok = {"always": True, "never": False}.get(tokenizer)
    if include_tok is None:
        include_tok = base_id is None or tokenizer_differs(run, base_id)
    model_files = collect_model_files(run.model_dir, include_tokenizer=include_tok, include_base=include_base,
                                      saved_base=saved_base)
    extras = method_extras(run)

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def put(rel: str, data: bytes | str) -> None:
        if rel in written:
            raise PublishError(f"two files would be published as {rel!r}")
        _write(out_dir / rel, data)
        written.append(rel)

    for src, rel in model_files.files + extras.files:
        if rel == RUN_META:
            meta = dict(run.meta, base_model=base_id or run.base_model)
            put(rel, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        elif rel.endswith("adapter_config.json"):
            ac = _read_json(src)
            # peft's AutoPeftModel loads the base from here: never leave a local path in it
            ac["base_model_name_or_path"] = base_id  # None: the base ships in this repo (base/)
            put(rel, json.dumps(ac, indent=2, sort_keys=True) + "\n")
        else:
            put(rel, src.read_bytes())
    if run.config_path:
        put("training_config.yaml", _publishable_config(run.config_path.read_text(encoding="utf-8"),
                                                        base_id or run.base_model))
    families = run.task_families()
    put("tasks.json", json.dumps({
        "task_ids": {n: i for i, n in enumerate(run.task_names)},
        "seen": run.seen, "held_out": run.held_out,
        "families": {n: families[n] for n in run.seen + run.held_out if n in families},
    }, indent=2, ensure_ascii=False) + "\n")
    eval_files: list[str] = []
    skipped = list(model_files.skipped)
    if run.eval_dir:
        for src in sorted(run.eval_dir.iterdir()):
            if src.is_file() and (src.name in ("metrics.json", "report.md") or src.suffix == ".png"):
                put(f"eval/{src.name}", src.read_bytes())
                eval_files.append(f"eval/{src.name}")
            elif src.is_file():
                skipped.append((f"eval/{src.name}", "not an evaluation summary (metrics.json, report.md, *.png)"))

    card = build_card(CardInputs(
        run=run, repo_id=repo_id, base_model=base_id, extras=extras, weights=model_files.weights,
        base_in_repo=saved_base if include_base else None,
        tokenizer_included=include_tok and any(Path(r).name in TOKENIZER_FILES for _, r in model_files.files),
        datasets=list(datasets) + list(run.meta.get("datasets") or []), files=sorted(written + ["README.md"]),
        eval_files=eval_files))
    card_text = str(card)
    put("README.md", card_text)
    scan_for_secrets(out_dir, token)
    n_tasks = len(run.seen)
    what = "model" if model_files.weights == "full" and run.method != "udr" else f"{run.method} adapter"
    if run.method == "udr":
        what = "UDR retriever"
    message = f"Publish {what}{f' for {base_id}' if base_id else ''} trained with instructmt on {n_tasks} tasks"
    description = (f"Files: {', '.join(sorted(written))}.\n"
                   f"Held-out tasks evaluated: {len(run.held_out)}.")
    return StagedUpload(out_dir, sorted(written), skipped, card_text, base_id, message, description)


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
        staged = stage(run, folder, repo_id=repo_id, base_model_id=base_model_id, tokenizer=tokenizer,
                       datasets=datasets, token=token, include_base=include_base)
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
