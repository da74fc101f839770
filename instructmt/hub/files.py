"""Which files of a run go up: safetensors only (pickles refused or skipped), the tokenizer only when
it differs from the base's, nothing hidden; and the checks on the staged folder (no token, no local paths)."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters.publishing import SAFE_SUFFIXES
from ..errors import PublishError
from .run import RunInfo

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}
WEIGHT_PICKLE = re.compile(r"^(adapter_model|pytorch_model|model)([-.].*)?\.(bin|pt|pth|ckpt)$")
TOKEN_LIKE = re.compile(rb"hf_[A-Za-z0-9]{30,}")

TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
    "vocab.txt", "chat_template.jinja", "chat_template.json",
}
# The files that define the vocabulary; the tokenizer "differs" when one of them differs.
VOCAB_FILES = TOKENIZER_FILES - {"tokenizer_config.json", "special_tokens_map.json"}


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


def scrub_paths(data: Any) -> Any:
    """Replace absolute paths of this machine inside published JSON (they say nothing useful on the
    Hub and reveal the training machine's layout)."""
    if isinstance(data, dict):
        return {k: scrub_paths(v) for k, v in data.items()}
    if isinstance(data, list):
        return [scrub_paths(v) for v in data]
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
