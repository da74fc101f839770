"""Load models by Hub id or local path (or a tiny preset), and reload trained runs.

A trained run's `model/` directory holds the adapter (or full model), the tokenizer and
`instructmt_run.json`. Tiny presets are random-init, so their base weights are saved under
`model/base/`; Hub bases are referenced by id and loaded again from the Hub or a local path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..config import ModelConfig
from ..errors import ConfigError, InstructMTError
from ..rundir import RUN_META, read_run_meta

TINY_PRESETS = {"tiny-t5": "seq2seq", "tiny-llama": "causal"}


def model_kind(config) -> str:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def load_pretrained(name_or_path: str, *, kind: str = "auto", tokenizer: str | None = None,
                    trust_remote_code: bool = False):
    """(model, tokenizer, kind) from a Hub id or local path. Never runs repo code unless allowed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .presets import is_gguf_reference, resolve_model_reference

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
        from .tiny import build_tiny
        if texts is None:
            raise ConfigError(f"{cfg.name_or_path} trains its tokenizer on the task text: pass texts")
        kind = TINY_PRESETS[cfg.name_or_path]
        model, tok = build_tiny(kind, texts, vocab_size=cfg.tiny_vocab_size, d_model=cfg.tiny_d_model,
                                layers=cfg.tiny_layers, seed=seed)
        prepare_tokenizer(tok, kind)
        return model, tok, kind
    return load_pretrained(cfg.name_or_path, kind=cfg.kind, tokenizer=cfg.tokenizer,
                           trust_remote_code=cfg.trust_remote_code)


def load_run(model_dir: str | Path, *, trust_remote_code: bool = False):
    """(model, tokenizer, meta) of a trained run's model directory (RUN/model)."""
    from transformers import AutoTokenizer

    from ..adapters.base import get_adapter

    model_dir = Path(model_dir)
    if (model_dir / "model" / RUN_META).exists():  # RUN dir given instead of RUN/model
        model_dir = model_dir / "model"
    meta = read_run_meta(model_dir)
    kind = meta["kind"]
    base_ref = meta.get("base_saved")
    base_path = str(model_dir / base_ref) if base_ref else meta["base_model"]
    method = get_adapter(meta["method"])
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prepare_tokenizer(tok, kind)
    if getattr(method, "self_contained", False):  # e.g. an exported QFA subnet: no base to load
        model = method.load(None, model_dir)
        model.eval()
        return model, tok, meta
    if meta["method"] == "full":
        base_path = str(model_dir)
    model, _, _ = load_pretrained(base_path, kind=kind, tokenizer=str(model_dir),
                                  trust_remote_code=trust_remote_code)
    if meta["method"] != "full":
        model = method.load(model, model_dir)
    model.eval()
    return model, tok, meta
