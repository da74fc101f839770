"""LM feedback: how much a candidate demonstration helps the generator produce the gold output.

score(z, (x, y)) = mean log p(y | "{z_q}\\t{z_a}\\n{x}\\t") over y's tokens (ANCHORS §8). Works with
a seq2seq model (context as encoder input, y as labels) or a causal LM (context then y, loss on
y only). Any object with `score(pairs) -> list[float]` can stand in (tests use scripted ones).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch


def demo_context(demo_query: str, demo_answer: str, query: str) -> str:
    """The generator input with one demonstration in front of the query."""
    return f"{demo_query}\t{demo_answer}\n{query}\t"


class PairScorer(Protocol):
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Mean log-likelihood of each target given its context (higher = more helpful)."""


class LMScorer:
    """Batched teacher-forced scoring with a Hugging Face generator (no gradients)."""

    def __init__(self, model, tokenizer, kind: str | None = None, *, batch_size: int = 16,
                 max_source_length: int = 512, max_target_length: int = 128, progress: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind or ("seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal")
        if self.kind not in ("seq2seq", "causal"):
            raise ValueError(f"LMScorer kind must be 'seq2seq' or 'causal', got {self.kind!r}")
        self.batch_size = batch_size
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.progress = progress
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _ids(self, texts: Sequence[str], max_len: int, *, keep_end: bool, special: bool) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        # The query sits at the end of the context: truncate from the left so it survives.
        return [ids[-max_len:] if keep_end else ids[:max_len] for ids in enc]

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        pairs = list(pairs)
        out = [0.0] * len(pairs)
        if not pairs:
            return out
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        starts = range(0, len(order), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="LM feedback", unit="batch")
        for s in starts:
            idx = order[s:s + self.batch_size]
            batch = [pairs[i] for i in idx]
            fn = self._score_seq2seq if self.kind == "seq2seq" else self._score_causal
            for i, v in zip(idx, fn(batch)):
                out[i] = v
        self.model.train(was_training)
        return out

    def _pad(self, seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs], device=self.device)

    def _score_seq2seq(self, batch: list[tuple[str, str]]) -> list[float]:
        src = self._ids([c for c, _ in batch], self.max_source_length, keep_end=True, special=True)
        tgt = self._ids([t for _, t in batch], self.max_target_length, keep_end=False, special=True)
        tgt = [t if t else [self._pad_id] for t in tgt]
        input_ids = self._pad(src, self._pad_id)
        attention = self._pad([[1] * len(s) for s in src], 0)
        labels = self._pad(tgt, -100)
        logits = self.model(input_ids=input_ids, attention_mask=attention, labels=labels).logits
        return _mean_logprob(logits, labels)

    def _score_causal(self, batch: list[tuple[str, str]]) -> list[float]:
        src = self._ids([c for c, _ in batch], self.max_source_length, keep_end=True, special=True)
        tgt = self._ids([t for _, t in batch], self.max_target_length, keep_end=False, special=False)
        eos = self.tokenizer.eos_token_id
        tgt = [t + ([eos] if eos is not None else []) or [self._pad_id] for t in tgt]
        seqs = [s + t for s, t in zip(src, tgt)]
        input_ids = self._pad(seqs, self._pad_id)
        attention = self._pad([[1] * len(s) for s in seqs], 0)
        # Position p predicts token p+1: labels are the targets shifted into place, -100 elsewhere.
        labels = self._pad([[-100] * len(s) + t for s, t in zip(src, tgt)], -100)
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits
        return _mean_logprob(logits[:, :-1], labels[:, 1:])


def _mean_logprob(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    tok = tok * mask
    return (tok.sum(1) / mask.sum(1).clamp(min=1)).tolist()
