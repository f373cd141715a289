"""RankKL: KL divergence between the softmax of the gold ranks and the softmax of the predictions."""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def rank_kl_loss(scores: Tensor, gold: Tensor, *, temperature: float = 0.05) -> Tensor:
    r"""ListNet-style listwise loss: the batch's predicted scores, as a softmax, should match the
    softmax of the gold *ranks* (not the gold values).

    The gold scores are turned into ranks (descending, 0-based, ties share their average rank),
    rescaled to [0, 1] with the best pair at 1; both lists go through a softmax at temperature tau,
    and the loss is the KL divergence from the target distribution to the predicted one. All gold
    equal is well defined (a uniform target). A batch of one pair has no ranking: the loss is 0
    with zero gradients, and a warning is logged once.

    Formula::

        rank_i = #{j : y_j > y_i} + (#{j : y_j = y_i} - 1) / 2
        yhat_i = (n - 1 - rank_i) / (n - 1)
        P = softmax(yhat / tau),  log Q = log_softmax(s / tau)
        L = (1/n) sum_i P_i (log P_i - log Q_i)

    Args:
        scores: predicted similarities s_i = cos(a_i, b_i).
        gold: gold similarity scores y_i (normalised to [0, 1]).
        temperature: tau of both softmaxes (CoDiEmb: 0.05).

    Reference:
        CoDiEmb, arXiv 2508.11442, and the authors' training code (METHOD-NOTES.md, "STS losses");
        ListNet: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML 2007.

    Inputs:
        ======  =====  =====
        scores  [n]    float
        gold    [n]    float
        ======  =====  =====

    Example::

        s = F.cosine_similarity(model(sentences1), model(sentences2), dim=-1)  # [n]
        loss = rank_kl_loss(s, gold, temperature=0.05)
    """
    n = scores.shape[0]
    if n < 2:
        _warn_once("RankKL loss: a batch of one pair has no ranking; loss set to 0")
        return scores.sum() * 0.0
    gold = gold.to(scores.dtype)
    above = (gold.unsqueeze(0) > gold.unsqueeze(1)).sum(dim=1).to(gold.dtype)  # [n] ranked above i
    tied = (gold.unsqueeze(0) == gold.unsqueeze(1)).sum(dim=1).to(gold.dtype)  # [n] including i
    rank = above + (tied - 1) / 2
    target = (n - 1 - rank) / (n - 1)
    log_p = torch.log_softmax(target / temperature, dim=0)
    log_q = torch.log_softmax(scores / temperature, dim=0)
    return (log_p.exp() * (log_p - log_q)).sum() / n
