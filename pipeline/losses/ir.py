"""Multi-positive InfoNCE with hard negatives over the global batch (CoDiEmb's IR objective)."""

from __future__ import annotations

import functools
import logging

import torch
import torch.distributed as dist
from torch import Tensor

from pipeline.losses.gather import gather_with_grad, world_info

logger = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def multi_positive_info_nce(
    query: Tensor,
    positives: Tensor,
    negatives: Tensor,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
    *,
    temperature: float = 0.02,
    gather: bool = True,
) -> Tensor:
    r"""InfoNCE with P positives and N hard negatives per query, one term per positive slot.

    Each query has up to P positive passages and up to N hard negatives. For every positive slot p,
    query i must pick its slot-p positive out of the slot-p positives of *all* queries in the global
    batch and *all* hard negatives of all queries; its other positives are not candidates of term p.
    The terms are averaged over queries, then over slots. Records with fewer positives or negatives
    are padded and masked (never truncated): a padded passage is never a candidate, and a query
    takes part in term p only when its slot p is real. With ``gather=True`` the passages of every
    worker are all-gathered with the gradient-carrying gather, so each query sees world_size x the
    candidates of one worker.

    Formula (s = cosine similarity, tau = temperature, B_g = global batch)::

        C_p   = { pos_p(j) : j in B_g, slot p real } u { neg_n(j) : j in B_g, slot n real }
        l_p,i = -log( exp(s(q_i, pos_p(i))/tau) / sum_{c in C_p} exp(s(q_i, c)/tau) )
        l_p   = mean of l_p,i over the queries i whose slot p is real
        L     = mean of l_p over the slots p that are real for at least one query

    Distributed data parallel: every rank scores only its own queries (rows) against the global
    candidates, so the work is not repeated on each rank. The returned tensor's *value* is the global
    loss L (the same on every rank); its *gradient* is world_size x this rank's share of L, which the
    gather's summing backward plus DDP's averaging of parameter gradients turn into exactly the
    gradient of one process computing L on the whole global batch. So: call ``backward()`` on it on
    every rank, with DDP (or an equivalent all-reduce *mean* of gradients), and scale nothing.

    Args:
        query: query embeddings, L2-normalised by the caller.
        positives: positive passage embeddings, L2-normalised; padded slots may hold any finite values.
        negatives: hard negative embeddings, L2-normalised; padded slots may hold any finite values.
        positive_mask: True where a positive slot is real (default: all real).
        negative_mask: True where a negative slot is real (default: all real).
        temperature: softmax temperature tau (CoDiEmb: 0.02).
        gather: gather passages from all workers (one-process fallback when not distributed);
            ``False`` scores against the local batch only.

    Reference:
        CoDiEmb, arXiv 2508.11442, and the authors' training code (see METHOD-NOTES.md, "IR loss").

    Inputs:
        ============  ===========  =================================================
        argument      shape        dtype
        ============  ===========  =================================================
        query         [B, D]       float (computed in at least float32)
        positives     [B, P, D]    float
        negatives     [B, N, D]    float (N may be 0)
        positive_mask [B, P]       bool
        negative_mask [B, N]       bool
        ============  ===========  =================================================
        Every rank must pass the same B, P, N and D (equal slices of the global batch).

    Example::

        q = F.normalize(model(queries), dim=-1)                         # [B, D]
        pos = F.normalize(model(pos_texts), dim=-1).view(B, P, -1)      # [B, P, D]
        neg = F.normalize(model(neg_texts), dim=-1).view(B, N, -1)      # [B, N, D]
        loss = multi_positive_info_nce(q, pos, neg, pos_mask, neg_mask)
        loss.backward()
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, n_pos, dim = positives.shape
    n_neg = negatives.shape[1]
    if query.shape != (batch, dim) or negatives.shape[::2] != (batch, dim):
        raise ValueError(
            f"shapes disagree: query {tuple(query.shape)}, positives {tuple(positives.shape)}, "
            f"negatives {tuple(negatives.shape)}; expected [B, D], [B, P, D], [B, N, D]"
        )
    device = query.device
    if positive_mask is None:
        positive_mask = torch.ones(batch, n_pos, dtype=torch.bool, device=device)
    if negative_mask is None:
        negative_mask = torch.ones(batch, n_neg, dtype=torch.bool, device=device)
    dtype = torch.promote_types(query.dtype, torch.float32)
    query, positives, negatives = query.to(dtype), positives.to(dtype), negatives.to(dtype)

    rank, world_size = world_info() if gather else (0, 1)
    # One gather for all passages and one for their masks (none with gather=False).
    passages = torch.cat([positives, negatives], dim=1)  # [B, P+N, D]
    masks = torch.cat([positive_mask, negative_mask], dim=1)  # [B, P+N]
    if world_size > 1:
        passages, masks = gather_with_grad(passages), gather_with_grad(masks)  # [Bg, P+N(, D)]
    pos_g, neg_g = passages.split([n_pos, n_neg], dim=1)  # [Bg, P, D], [Bg, N, D]
    pos_mask_g, neg_mask_g = masks.split([n_pos, n_neg], dim=1)  # [Bg, P], [Bg, N]

    # Local queries (rows) against global candidates (columns).
    pos_logits = torch.einsum("id,jpd->pij", query, pos_g) / temperature  # [P, B, Bg]
    neg_logits = query @ neg_g.reshape(-1, dim).T / temperature  # [B, Bg*N]
    logits = torch.cat([pos_logits, neg_logits.expand(n_pos, -1, -1)], dim=2)  # [P, B, Bg*(1+N)]
    real = torch.cat(
        [
            pos_mask_g.T.unsqueeze(1).expand(-1, batch, -1),  # [P, B, Bg]
            neg_mask_g.reshape(1, 1, -1).expand(n_pos, batch, -1),  # [P, B, Bg*N]
        ],
        dim=2,
    )  # [P, B, Bg*(1+N)]
    rows = torch.arange(batch, device=device)
    target = rank * batch + rows  # column of query i's own slot-p positive
    # Keep each row's target column so padded rows stay finite; they are dropped below.
    real[:, rows, target] = True
    logits = logits.masked_fill(~real, float("-inf"))
    per_query = torch.logsumexp(logits, dim=2) - pos_logits[:, rows, target]  # [P, B]

    counts = pos_mask_g.sum(dim=0)  # [P] queries of the global batch that have slot p
    n_slots = (counts > 0).sum()
    if n_slots == 0:
        _warn_once("IR loss: no query in the batch has a real positive; loss set to 0")
    per_slot = torch.where(positive_mask.T, per_query, 0.0).sum(dim=1) / counts.clamp_min(1)
    share = per_slot.sum() / n_slots.clamp_min(1)  # this rank's share of L; shares sum to L
    if world_size == 1:
        return share
    loss = share.detach().clone()
    dist.all_reduce(loss)  # the global loss L, for the returned value
    scaled = share * world_size  # see "Distributed data parallel" above
    return scaled + (loss - scaled).detach()
