"""UDR's training objective: 4 · list-wise LambdaRank-style loss + in-batch cross-entropy (ANCHORS §8).

Each query comes with n candidates listed in LM order (column 0 = the LM's favourite). Relevance
is 1/rank in that order. For every pair (i, j) with rel_i > rel_j the loss is
    log(1 + exp(-(s_i - s_j))) · |1/pos_i - 1/pos_j|
where s are the retriever's dot products and pos the 1-based positions in the retriever's own
(predicted) order; the pair losses are averaged over all valid pairs of the batch.
The in-batch term is the cross-entropy of each query over every candidate in the batch, with the
query's top LM candidate as the positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def predicted_positions(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1-based position of each column when a row is sorted by descending score (no gradient)."""
    s = scores.detach().clone()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    order = torch.argsort(s, dim=-1, descending=True, stable=True)
    pos = torch.empty_like(order)
    ranks = torch.arange(1, s.size(-1) + 1, device=s.device).expand_as(order)
    pos.scatter_(-1, order, ranks)
    return pos.to(scores.dtype)


def lambda_rank_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """scores: (B, n), columns in LM order (best first); mask: (B, n) True where a candidate exists."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (batch, candidates), got shape {tuple(scores.shape)}")
    b, n = scores.shape
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    pos = predicted_positions(scores, mask)
    inv_pos = 1.0 / pos
    # Pair (i, j) with i < j in LM order means rel_i = 1/(i+1) > rel_j = 1/(j+1).
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=scores.device), diagonal=1)
    valid = upper.unsqueeze(0) & mask.unsqueeze(2) & mask.unsqueeze(1)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # s_i - s_j
    weight = (inv_pos.unsqueeze(2) - inv_pos.unsqueeze(1)).abs()
    pair_loss = F.softplus(-diff) * weight
    count = valid.sum()
    if count == 0:
        return scores.sum() * 0.0
    return pair_loss[valid].sum() / count


def in_batch_loss(query_emb: torch.Tensor, cand_emb: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """query_emb: (B, d); cand_emb: (B, n, d) with column 0 each query's positive."""
    b, n, d = cand_emb.shape
    logits = query_emb @ cand_emb.reshape(b * n, d).T  # (B, B*n)
    if mask is not None:
        logits = logits.masked_fill(~mask.reshape(1, b * n), float("-inf"))
    target = torch.arange(b, device=query_emb.device) * n
    return F.cross_entropy(logits, target)


@dataclass
class UDRLoss:
    total: torch.Tensor
    rank: torch.Tensor
    in_batch: torch.Tensor


def udr_loss(query_emb: torch.Tensor, cand_emb: torch.Tensor, mask: torch.Tensor | None = None,
             rank_weight: float = 4.0) -> UDRLoss:
    """rank_weight · L_rank + L_inbatch; candidates (B, n, d) in LM order."""
    scores = torch.einsum("bd,bnd->bn", query_emb, cand_emb)
    rank = lambda_rank_loss(scores, mask)
    inb = in_batch_loss(query_emb, cand_emb, mask)
    return UDRLoss(rank_weight * rank + inb, rank, inb)
