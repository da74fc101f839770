"""BM25 over a demonstration pool (rank_bm25's Okapi BM25): the first-iteration candidates for
UDR training and a retrieval baseline at evaluation time."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"\w+", re.UNICODE)


def bm25_tokenize(text: str) -> list[str]:
    """Lowercased word tokens; a text with none still gets one token so BM25 can index it."""
    toks = _TOKEN.findall(text.lower())
    return toks or ["<empty>"]


class BM25Index:
    """Ranks a fixed list of documents for a query; `exclude` removes positions (e.g. the query)."""

    def __init__(self, documents: Sequence[str]):
        from rank_bm25 import BM25Okapi
        self.size = len(documents)
        self._bm25 = BM25Okapi([bm25_tokenize(d) for d in documents]) if documents else None

    def scores(self, query: str) -> np.ndarray:
        if self._bm25 is None:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._bm25.get_scores(bm25_tokenize(query)), dtype=np.float64)

    def top_k(self, query: str, k: int, exclude: Iterable[int] = ()) -> list[int]:
        """Positions of the k best documents, best first (ties broken by position: stable)."""
        s = self.scores(query)
        if s.size == 0:
            return []
        s = s.copy()
        for i in exclude:
            s[i] = -np.inf
        order = np.argsort(-s, kind="stable")
        keep = [int(i) for i in order if np.isfinite(s[i])]
        return keep[:k]
