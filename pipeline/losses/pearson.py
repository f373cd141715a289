"""Pearson loss: 1 - Pearson correlation between predicted and gold similarity over the batch."""

from __future__ import annotations

import functools
import logging

from torch import Tensor

logger = logging.getLogger(__name__)

# Floor on the variance of the predicted scores: keeps r and its gradient finite when every
# prediction is equal (then r = 0), and changes nothing when var(s) > 1e-12.
_VAR_FLOOR = 1e-12


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def pearson_loss(scores: Tensor, gold: Tensor) -> Tensor:
    r"""One minus the Pearson correlation of the predicted scores with the gold scores.

    Rewards a linear agreement between the cosine similarities of the pairs in the batch and their
    gold scores, whatever their offset and scale. When all gold scores are equal (or the batch holds
    one pair) r is undefined: the loss is 0, with zero gradients, and a warning is logged once.

    Formula (population statistics over the n pairs of the batch)::

        r = mean((s - mean(s)) (y - mean(y))) / (sqrt(max(var(s), 1e-12)) * sqrt(var(y)))
        L = 1 - r

    Args:
        scores: predicted similarities s_i = cos(a_i, b_i).
        gold: gold similarity scores y_i (normalised to [0, 1]).

    Reference:
        CoDiEmb, arXiv 2508.11442, and the authors' training code (METHOD-NOTES.md, "STS losses").

    Inputs:
        ======  =====  =====
        scores  [n]    float
        gold    [n]    float
        ======  =====  =====

    Example::

        s = F.cosine_similarity(model(sentences1), model(sentences2), dim=-1)  # [n]
        loss = pearson_loss(s, gold)
    """
    if gold.max() - gold.min() <= 1e-8:
        _warn_once("Pearson loss: all gold scores in the batch are equal; loss set to 0")
        return scores.sum() * 0.0
    gold = gold.to(scores.dtype)
    ds, dy = scores - scores.mean(), gold - gold.mean()
    r = (ds * dy).mean() / ((ds**2).mean().clamp_min(_VAR_FLOOR).sqrt() * (dy**2).mean().sqrt())
    return 1.0 - r
