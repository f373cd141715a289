"""CoSENT: pairwise ranking loss on cosine similarities (baseline STS loss)."""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def cosent_loss(scores: Tensor, gold: Tensor, *, scale: float = 20.0) -> Tensor:
    r"""For every two pairs of the batch whose gold scores differ, the pair with the higher gold
    score should have the higher cosine similarity; violations are penalised smoothly.

    With no two different gold scores in the batch (all equal, one pair) the loss is log(1) = 0 with
    zero gradients, and a warning is logged once.

    Formula (lambda = scale)::

        L = log( 1 + sum_{(i, j) : y_i > y_j} exp(lambda (s_j - s_i)) )

    Args:
        scores: predicted similarities s_i = cos(a_i, b_i).
        gold: gold similarity scores y_i.
        scale: lambda (20 in the CoSENT write-up and in CoDiEmb's baseline).

    Reference:
        Su Jianlin, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT" (2022),
        https://kexue.fm/archives/8847; the CoDiEmb paper uses it as a baseline.

    Inputs:
        ======  =====  =====
        scores  [n]    float
        gold    [n]    float
        ======  =====  =====

    Example::

        s = F.cosine_similarity(model(sentences1), model(sentences2), dim=-1)  # [n]
        loss = cosent_loss(s, gold, scale=20.0)
    """
    ordered = gold.unsqueeze(1) > gold.unsqueeze(0)  # [n, n] y_i > y_j, row i, column j
    if not ordered.any():
        _warn_once("CoSENT loss: all gold scores in the batch are equal; loss set to 0")
    diff = scale * (scores.unsqueeze(0) - scores.unsqueeze(1))  # [n, n] lambda (s_j - s_i)
    diff = diff.masked_fill(~ordered, float("-inf"))
    zero = scores.new_zeros(1)  # the "1 +" inside the log
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)
