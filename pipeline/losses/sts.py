"""CoDiEmb's STS objective: a weighted sum of the order-aware losses, computed per worker."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.losses.cosent import cosent_loss
from pipeline.losses.midnce import mid_nce_loss
from pipeline.losses.pearson import pearson_loss
from pipeline.losses.pro import pro_loss
from pipeline.losses.rankkl import rank_kl_loss


def sts_loss(
    a: Tensor,
    b: Tensor,
    gold: Tensor,
    a_mid: Tensor | None = None,
    b_mid: Tensor | None = None,
    *,
    w_midnce: float = 1.0,
    w_pro: float = 0.5,
    w_pearson: float = 2.0,
    w_rankkl: float = 5.0,
    w_cosent: float = 0.0,
    sts_temperature: float = 0.05,
    midnce_temperature: float = 0.02,
    midnce_threshold: float = 0.8,
    cosent_scale: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""The STS loss of CoDiEmb on one worker's list of sentence pairs (no cross-worker gather).

    Scores each pair by the cosine similarity of its final-layer embeddings and combines the
    order-aware losses; MidNCE works on the middle-layer embeddings. Only the losses with a
    non-zero weight are computed. Degenerate batches (all gold equal, one pair, no high-score pair)
    give a finite loss and finite gradients; each affected loss logs a warning once.

    Formula (s_i = cos(a_i, b_i), y_i = gold)::

        L = w_midnce MidNCE(a_mid, b_mid, y) + w_pro PRO(s, y) + w_pearson (1 - r(s, y))
            + w_rankkl RankKL(s, y) + w_cosent CoSENT(s, y)

    Defaults are the paper's code: 1 MidNCE + 0.5 PRO + 2 Pearson + 5 RankKL (CoSENT is a baseline).

    Args:
        a, b: final-layer embeddings of the two sides (any norm; computed in at least float32).
        gold: gold scores normalised to [0, 1].
        a_mid, b_mid: middle-layer embeddings; required when ``w_midnce > 0``.
        w_midnce, w_pro, w_pearson, w_rankkl, w_cosent: weights of the components.
        sts_temperature: tau of RankKL and PRO (0.05).
        midnce_temperature: tau of MidNCE (0.02).
        midnce_threshold: minimum gold score of a MidNCE anchor on [0, 1] (see ``mid_nce_loss``).
        cosent_scale: lambda of CoSENT (20).

    Reference:
        CoDiEmb, arXiv 2508.11442 (METHOD-NOTES.md, "STS losses").

    Inputs:
        ============  ======  =====
        a, b          [n, D]  float
        gold          [n]     float
        a_mid, b_mid  [n, D]  float
        ============  ======  =====

    Returns:
        ``(total, components)``: the weighted sum (carries the gradient) and the detached value of
        each computed component, keyed ``midnce``, ``pro``, ``pearson``, ``rankkl``, ``cosent``.

    Example::

        total, parts = sts_loss(a, b, gold, a_mid, b_mid, **loss_cfg.model_dump(exclude={"ir_temperature"}))
        total.backward()
    """
    if w_midnce > 0 and (a_mid is None or b_mid is None):
        raise ValueError(
            "MidNCE needs the middle-layer embeddings a_mid, b_mid (or set w_midnce=0)"
        )
    dtype = torch.promote_types(a.dtype, torch.float32)
    scores = F.cosine_similarity(a.to(dtype), b.to(dtype), dim=-1)  # [n]
    gold = gold.to(device=scores.device, dtype=dtype)
    losses: dict[str, Tensor] = {}
    if w_midnce > 0:
        losses["midnce"] = mid_nce_loss(
            a_mid.to(dtype),
            b_mid.to(dtype),
            gold,
            temperature=midnce_temperature,
            threshold=midnce_threshold,
        )
    if w_pro > 0:
        losses["pro"] = pro_loss(scores, gold, temperature=sts_temperature)
    if w_pearson > 0:
        losses["pearson"] = pearson_loss(scores, gold)
    if w_rankkl > 0:
        losses["rankkl"] = rank_kl_loss(scores, gold, temperature=sts_temperature)
    if w_cosent > 0:
        losses["cosent"] = cosent_loss(scores, gold, scale=cosent_scale)
    weights = {
        "midnce": w_midnce,
        "pro": w_pro,
        "pearson": w_pearson,
        "rankkl": w_rankkl,
        "cosent": w_cosent,
    }
    total = scores.sum() * 0.0  # keeps the graph connected when every weight is 0
    for name, value in losses.items():
        total = total + weights[name] * value
    return total, {name: value.detach() for name, value in losses.items()}
