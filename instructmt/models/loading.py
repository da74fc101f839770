"""Load models by Hub id or local path (or a tiny preset), and reload trained runs.

A trained run's `model/` directory holds the adapter (or full model), the tokenizer and
`instructmt_run.json`. Tiny presets are random-init, so their base weights are saved under
`model/base/`; Hub bases are referenced by id and loaded again from the Hub or a local path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..adapters.base import get_adapter
from ..config import ModelConfig
from ..errors import ConfigError, InstructMTError
from ..io_safety import user_io_error
from ..rundir import RUN_META
from .presets import is_gguf_reference, resolve_model_reference
from .tiny import build_tiny

TINY_PRESETS = {"tiny-t5": "seq2seq", "tiny-llama": "causal"}


def model_kind(config) -> str:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def load_pretrained(name_or_path: str, *, kind: str = "auto", tokenizer: str | None = None,
                    trust_remote_code: bool = False):
    """(model, tokenizer, kind) from a Hub id or local path. Never runs repo code unless allowed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if is_gguf_reference(name_or_path):  # a real-model preset or a local .gguf: converted once, cached
        resolved = resolve_model_reference(name_or_path)
        name_or_path = resolved.path
        tokenizer = tokenizer or resolved.path
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().exists():
        raise InstructMTError(f"model path {name_or_path!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InstructMTError(f"cannot load model config from {name_or_path!r}: {e}") from None
    if kind == "auto":
        kind = model_kind(config)
    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    model = cls.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code)
    tok = AutoTokenizer.from_pretrained(tokenizer or name_or_path, trust_remote_code=trust_remote_code)
    prepare_tokenizer(tok, kind)
    return model, tok, kind


def prepare_tokenizer(tok, kind: str) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if kind == "causal":
        tok.padding_side = "left"  # generation appends on the right


def load_model_and_tokenizer(cfg: ModelConfig, texts: Iterable[str] | None = None, seed: int = 0):
    if cfg.name_or_path in TINY_PRESETS:
        if texts is None:
            raise ConfigError(f"{cfg.name_or_path} trains its tokenizer on the task text: pass texts")
        kind = TINY_PRESETS[cfg.name_or_path]
        model, tok = build_tiny(kind, texts, vocab_size=cfg.tiny_vocab_size, d_model=cfg.tiny_d_model,
                                layers=cfg.tiny_layers, seed=seed)
        prepare_tokenizer(tok, kind)
        return model, tok, kind
    return load_pretrained(cfg.name_or_path, kind=cfg.kind, tokenizer=cfg.tokenizer,
                           trust_remote_code=cfg.trust_remote_code)


def read_run_meta(model_dir: str | Path) -> dict:
    p = Path(model_dir) / RUN_META
    if not p.exists():
        raise InstructMTError(f"{model_dir} is not an instructmt model directory (no {RUN_META})")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise user_io_error(e, p, "read the run metadata") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InstructMTError(f"{p}: corrupted run metadata ({_first_line(e)}); restore the file from a copy "
                              "of the run or retrain") from None
    missing = [k for k in ("method", "kind") if not isinstance(meta, dict) or not isinstance(meta.get(k), str)]
    if missing:
        raise InstructMTError(f"{p}: corrupted run metadata (no {', '.join(repr(k) for k in missing)}); restore "
                              "the file from a copy of the run or retrain")
    return meta


# files that hold a tokenizer's vocabulary; without one, AutoTokenizer can load an empty tokenizer
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
                         "vocab.json", "vocab.txt")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_run_tokenizer(model_dir: Path, kind: str):
    """The run's saved tokenizer, refusing one whose vocabulary is missing or empty (it would load
    with only special tokens and make every prediction an empty string)."""
    from transformers import AutoTokenizer

    if not any((model_dir / f).is_file() for f in TOKENIZER_VOCAB_FILES):
        raise InstructMTError(f"{model_dir}: the tokenizer's vocabulary file is missing (none of "
                              f"{', '.join(TOKENIZER_VOCAB_FILES)}); restore the run's tokenizer files or retrain")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # tokenizers raises bare Exception for a damaged tokenizer.json
        raise InstructMTError(f"{model_dir}: cannot load the tokenizer ({_first_line(e)}); its files are damaged: "
                              "restore them or retrain") from None
    if len(tok) <= len(set(tok.all_special_ids)) + 1:
        raise InstructMTError(f"{model_dir}: the tokenizer loads with an empty vocabulary ({len(tok)} tokens); "
                              "its files are damaged: restore them or retrain")
    prepare_tokenizer(tok, kind)
    return tok


def load_run(model_dir: str | Path, *, trust_remote_code: bool = False):
    """(model, tokenizer, meta) of a trained run's model directory (RUN/model)."""
    model_dir = Path(model_dir)
    if (model_dir / "model" / RUN_META).exists():  # RUN dir given instead of RUN/model
        model_dir = model_dir / "model"
    meta = read_run_meta(model_dir)
    kind = meta["kind"]
    base_ref = meta.get("base_saved")
    base_path = str(model_dir / base_ref) if base_ref else meta["base_model"]
    method = get_adapter(meta["method"])
    tok = load_run_tokenizer(model_dir, kind)
    try:
        if getattr(method, "self_contained", False):  # e.g. an exported QFA subnet: no base to load
            model = method.load(None, model_dir)
            model.eval()
            return model, tok, meta
        if method.whole_model:
            base_path = str(model_dir)
        model, _, _ = load_pretrained(base_path, kind=kind, tokenizer=str(model_dir),
                                      trust_remote_code=trust_remote_code)
        if not method.whole_model:
            model = method.load(model, model_dir)
    except InstructMTError:
        raise
    except Exception as e:  # a truncated / corrupted safetensors file, a config that does not match it
        raise InstructMTError(f"{model_dir}: cannot load the model weights ({_first_line(e)}); the run's files "
                              "are damaged: restore them or retrain") from None
    model.eval()
    return model, tok, meta
