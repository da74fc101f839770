"""Tiny models built from a config (random init) with a sentencepiece tokenizer trained locally.

No pretrained generator can be downloaded here, so the demo and the tests train these from
scratch. The tokenizer is trained with the `sentencepiece` library and handed to transformers as a
vocab list: in transformers 5, `T5Tokenizer(vocab_file=...)` silently yields an all-unk tokenizer.
"""

from __future__ import annotations

import io
from typing import Iterable

import torch

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_sentencepiece_vocab(texts: Iterable[str], vocab_size: int = 1000, seed: int = 0
                              ) -> list[tuple[str, float]]:
    """Train a unigram sentencepiece model in memory; return [(piece, score)] with pad/eos/unk first."""
    import sentencepiece as spm

    sentences = [t.replace("\n", " ").strip() for t in texts if t and t.strip()]
    if not sentences:
        raise ValueError("cannot train a tokenizer on empty text")
    model = io.BytesIO()
    # hard_vocab_limit=False: small corpora may not support the requested size.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece=PAD, eos_piece=EOS, unk_piece=UNK, hard_vocab_limit=False,
        split_digits=True, byte_fallback=False, num_threads=1,
        minloglevel=2, train_extremely_large_corpus=False)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1000, seed: int = 0):
    from transformers import T5Tokenizer

    vocab = train_sentencepiece_vocab(texts, vocab_size=vocab_size, seed=seed)
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    return tok


def tiny_t5_model(vocab_size: int, *, seed: int = 0, d_model: int = 32, d_ff: int = 64, layers: int = 2,
                  heads: int = 2, d_kv: int = 16, **config):
    """A random-init T5 without a tokenizer (token ids only), the unit tests' model; `config` adds
    T5Config fields (dropout_rate, eos_token_id, ...)."""
    from transformers import T5Config, T5ForConditionalGeneration  # start-up time
    torch.manual_seed(seed)
    cfg = T5Config(d_model=d_model, d_ff=d_ff, num_layers=layers, num_heads=heads, d_kv=d_kv, vocab_size=vocab_size,
                   decoder_start_token_id=0, pad_token_id=0, **config)
    return T5ForConditionalGeneration(cfg)


def build_tiny(kind: str, texts: Iterable[str], *, vocab_size: int = 1000, d_model: int = 128,
               layers: int = 2, heads: int = 4, seed: int = 0):
    """Return (model, tokenizer) for kind 'seq2seq' (T5) or 'causal' (Llama), randomly initialised."""
    tok = build_tokenizer(texts, vocab_size=vocab_size, seed=seed)
    n_vocab = len(tok)
    torch.manual_seed(seed)
    if kind == "seq2seq":
        from transformers import T5Config, T5ForConditionalGeneration
        cfg = T5Config(vocab_size=n_vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_model * 4,
                       num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=tok.pad_token_id, tie_word_embeddings=True,
                       feed_forward_proj="relu", dropout_rate=0.0)
        model = T5ForConditionalGeneration(cfg)
    elif kind == "causal":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=n_vocab, hidden_size=d_model, intermediate_size=d_model * 4,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                          tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown model kind {kind!r} (seq2seq | causal)")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok
