"""Render and tokenize (task, instance) pairs once; cache the result on disk keyed by content.

The cache key covers the tokenizer's full serialisation, the encoding, the length limits and every
task field that reaches the prompt, so a second run with the same data and tokenizer loads the
arrow files (`datasets.Dataset.load_from_disk`) instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..cache_paths import cache_root
from ..prompts.render import PromptRenderer
from ..tasks.schema import Instance, Task

log = logging.getLogger(__name__)
DEFAULT_CACHE = cache_root()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr(getattr(tokenizer, "chat_template", None)).encode())
    # settings encode_sources / encode_targets read off the tokenizer object itself
    h.update(repr([getattr(tokenizer, a, None) for a in ("eos_token_id", "bos_token_id", "add_bos_token")]).encode())
    return h.hexdigest()[:16]


def source_length_fn(tokenizer):
    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])
    return length


@dataclass
class EncodeSpec:
    kind: str  # seq2seq | causal
    encoding: str
    max_source_length: int
    max_target_length: int
    use_chat_template: bool = False


def chat_wrap(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def render_and_encode_sources(pairs: Sequence[tuple[Task, Instance]], tokenizer, spec: EncodeSpec
                              ) -> tuple[list[str], list[list[int]]]:
    """(prompts, their token ids) for training pairs, tokenizing each prompt once in the common case.

    Applying the budget rule example by example costs one tokenizer call per candidate example per
    instance (75k instances for the SNI training mixture). Most prompts fit with every candidate
    example, and then the rule keeps them all: so every prompt is first rendered in full and counted
    in one batched call; only those over budget go through the example-by-example rule. The counted
    ids are reused as the final ids when they are what `encode_sources` would produce."""
    full = PromptRenderer(spec.encoding)  # no budget: every candidate example
    texts = [full.render(task, inst) for task, inst in pairs]
    counted = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
    over = [k for k, ids in enumerate(counted) if len(ids) > spec.max_source_length]
    if over:
        budgeted = PromptRenderer(spec.encoding, length_fn=source_length_fn(tokenizer),
                                  max_source_length=spec.max_source_length)
        for k in over:
            texts[k] = budgeted.render(*pairs[k])
    if spec.use_chat_template and getattr(tokenizer, "chat_template", None):
        texts = [chat_wrap(tokenizer, t) for t in texts]
        return texts, encode_sources(texts, tokenizer, spec)
    if spec.kind == "causal" and tokenizer.num_special_tokens_to_add(pair=False) != 0:
        return texts, encode_sources(texts, tokenizer, spec)  # causal ids carry no special tokens: recount
    ids = list(counted)
    if over:
        redo = tokenizer([texts[k] for k in over], add_special_tokens=spec.kind == "seq2seq")["input_ids"]
        for k, x in zip(over, redo):
            ids[k] = x
    return texts, _finish_source_ids(ids, tokenizer, spec)


def encode_sources(sources: list[str], tokenizer, spec: EncodeSpec) -> list[list[int]]:
    """Token ids of prompts, truncated to max_source_length (keeping the end for causal LMs, where
    the task input and the `Output:` cue sit)."""
    ids = tokenizer(sources, add_special_tokens=spec.kind == "seq2seq")["input_ids"] if sources else []
    return _finish_source_ids(ids, tokenizer, spec)


def _finish_source_ids(ids: list[list[int]], tokenizer, spec: EncodeSpec) -> list[list[int]]:
    """Raw prompt ids -> model input ids: BOS for causal tokenizers that want one, then truncation."""
    keep_end = spec.kind != "seq2seq"
    if keep_end:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and getattr(tokenizer, "add_bos_token", False):
            ids = [[bos] + x for x in ids]
    truncated = 0
    out = []
    for x in ids:
        if len(x) > spec.max_source_length:
            truncated += 1
            x = x[-spec.max_source_length:] if keep_end else x[: spec.max_source_length - 1] + [x[-1]]
        out.append(x)
    if truncated:
        log.warning("%d prompt(s) longer than max_source_length=%d were truncated", truncated,
                    spec.max_source_length)
    return out


def encode_targets(targets: list[str], tokenizer, spec: EncodeSpec) -> list[list[int]]:
    ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [x[: spec.max_target_length - 1] + [eos] for x in ids]


def _cache_key(pairs, tokenizer, spec: EncodeSpec) -> str:
    h = hashlib.sha256()
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps(spec.__dict__, sort_keys=True).encode())
    seen_tasks: set[str] = set()
    for task, inst in pairs:
        if task.name not in seen_tasks:
            seen_tasks.add(task.name)
            h.update(json.dumps([task.name, task.definition, task.encoding,
                                 [(e.input, e.output, e.explanation) for e in task.positive_examples],
                                 [(e.input, e.output, e.explanation) for e in task.negative_examples]]).encode())
        h.update(json.dumps([task.name, inst.id, inst.input, inst.outputs, inst.fields], default=str).encode())
    return h.hexdigest()[:24]


_USE_DEFAULT_CACHE = object()
TOKENIZE_CHUNK = 2048  # pairs per tokenizer call


def _tokenize_chunk(pairs: Sequence[tuple[Task, Instance]], tokenizer, spec: EncodeSpec):
    import datasets

    src_ids = render_and_encode_sources(pairs, tokenizer, spec)[1]
    flat_targets = [o for _, inst in pairs for o in inst.outputs]
    flat_ids = encode_targets(flat_targets, tokenizer, spec) if flat_targets else []
    tgt_ids, k = [], 0
    for _, inst in pairs:
        tgt_ids.append(flat_ids[k:k + len(inst.outputs)])
        k += len(inst.outputs)
    return datasets.Dataset.from_dict({
        "task": [t.name for t, _ in pairs],
        "id": [i.id for _, i in pairs],
        "source_ids": src_ids,
        "target_ids": tgt_ids,
        "length": [len(s) + max(len(t) for t in ts) for s, ts in zip(src_ids, tgt_ids)],
    })


def tokenize_pairs(pairs: Sequence[tuple[Task, Instance]], tokenizer, spec: EncodeSpec,
                   cache_dir: str | Path | None = _USE_DEFAULT_CACHE):  # type: ignore[assignment]
    """Return a `datasets.Dataset` with columns task, id, source_ids, target_ids (one list per
    reference output), length. Cached on disk when cache_dir is set (default: DEFAULT_CACHE, read
    at call time so it can be redirected); None disables the cache."""
    import datasets

    if cache_dir is _USE_DEFAULT_CACHE:
        cache_dir = DEFAULT_CACHE
    key = _cache_key(pairs, tokenizer, spec)
    path = Path(cache_dir) / "tokenized" / key if cache_dir else None
    if path is not None and (path / "dataset_info.json").exists():
        log.info("loading tokenized data from cache %s", path)
        return datasets.Dataset.load_from_disk(str(path))
    # in chunks: one tokenizer call over all 75k prompts of the SNI training mixture holds every
    # Encoding (ids, tokens, offsets) at once, several GB; per chunk it stays small, and the arrow
    # table stores the ids compactly
    parts = [_tokenize_chunk(pairs[s:s + TOKENIZE_CHUNK], tokenizer, spec)
             for s in range(0, len(pairs), TOKENIZE_CHUNK)] or [_tokenize_chunk([], tokenizer, spec)]
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=path.parent))
        try:
            ds.save_to_disk(str(tmp))
            os.replace(tmp, path) if not path.exists() else shutil.rmtree(tmp)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        ds = datasets.Dataset.load_from_disk(str(path))
    return ds
