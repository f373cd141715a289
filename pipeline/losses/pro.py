"""PRO: listwise preference ranking where lower-scored pairs are negatives, weighted by score gaps."""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_GAP = 1e-8  # gold scores closer than this are ties, never negatives of each other


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def pro_loss(scores: Tensor, gold: Tensor, *, temperature: float = 0.05) -> Tensor:
    r"""Preference Ranking Optimisation over the pairs of the batch.

    Each pair k must out-score, in a softmax, every pair j with a strictly lower gold score. The
    logits are scaled by the gold gaps: negative j by y_k - y_j (a far-worse pair is pushed harder),
    pair k itself by its largest gap. Pairs with no lower-scored pair are skipped; when every pair
    is skipped (all gold equal, one pair) the loss is 0 with zero gradients and a warning is logged
    once.

    Formula (tau = temperature)::

        J_k   = { j : y_k - y_j > 1e-8 }                      (k skipped when empty)
        w_kj  = y_k - y_j,   w_kk = max_{j in J_k} w_kj
        term_k = -log( exp(w_kk s_k / tau) / (exp(w_kk s_k / tau) + sum_{j in J_k} exp(w_kj s_j / tau)) )
        L     = mean of term_k over the pairs k that are not skipped

    Args:
        scores: predicted similarities s_i = cos(a_i, b_i).
        gold: gold similarity scores y_i (normalised to [0, 1]).
        temperature: tau (CoDiEmb: 0.05).

    Reference:
        CoDiEmb, arXiv 2508.11442, and the authors' training code (METHOD-NOTES.md, "STS losses");
        PRO: Song et al., "Preference Ranking Optimization for Human Alignment", AAAI 2024.

    Inputs:
        ======  =====  =====
        scores  [n]    float
        gold    [n]    float
        ======  =====  =====

    Example::

        s = F.cosine_similarity(model(sentences1), model(sentences2), dim=-1)  # [n]
        loss = pro_loss(s, gold, temperature=0.05)
    """
    gold = gold.to(scores.dtype)
    gap = gold.unsqueeze(1) - gold.unsqueeze(0)  # [n, n] y_k - y_j, row k, column j
    lower = gap > _GAP  # [n, n] j is a negative of k
    kept = lower.any(dim=1)  # [n]
    if not kept.any():
        _warn_once("PRO loss: no pair has a lower-scored pair in the batch; loss set to 0")
        return scores.sum() * 0.0
    scaled = scores / temperature
    self_weight = torch.where(lower, gap, 0.0).amax(dim=1)  # [n] w_kk (0 for skipped rows)
    pos_logit = self_weight * scaled  # [n]
    neg_logits = (gap * scaled.unsqueeze(0)).masked_fill(~lower, float("-inf"))  # [n, n]
    logits = torch.cat([pos_logit.unsqueeze(1), neg_logits], dim=1)  # [n, 1 + n]
    terms = torch.logsumexp(logits, dim=1) - pos_logit  # [n]
    return terms[kept].mean()
