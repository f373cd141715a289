"""TIES-merging (Yadav et al., 2023): trim small deltas, elect a sign per element, average only the
deltas that agree with it, so checkpoints pulling an element in opposite directions do not cancel.

    τ_k = δ_k kept on its top-density fraction of elements by |δ_k| (the rest set to 0)
    σ   = sign(Σ_k τ_k)                                           elected sign per element
    A   = { k : τ_k ≠ 0 and sign(τ_k) = σ }                      the agreeing checkpoints
    θ   = θ_0 + λ · (Σ_{k∈A} τ_k) / |A|                          0 where A is empty
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.fusion.spec import Knob, MethodSpec

if TYPE_CHECKING:
    import torch


def _top_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """True on the round(density·n) elements (at least 1) of largest |δ| (ties broken by topk)."""
    import torch  # here, not at the top: the config reads SPEC without loading torch

    flat = delta.reshape(-1)
    keep = max(1, round(density * flat.numel()))
    if keep >= flat.numel():
        return torch.ones_like(delta, dtype=torch.bool)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[flat.abs().topk(keep, sorted=False).indices] = True
    return mask.reshape(delta.shape)


def ties_merge(
    base: torch.Tensor, deltas: list[torch.Tensor], *, density: float = 0.2, lam: float = 1.0
) -> torch.Tensor:
    """Trim, elect sign, disjoint mean; θ_0 + λ · merged delta.

    Args:
        base: θ_0 for one tensor.
        deltas: δ_k = θ_k − θ_0, K of them.
        density: fraction of each δ_k's elements kept, by magnitude, in (0, 1].
        lam: λ, the scale of the merged delta.
    """
    import torch

    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density}: expected 0 < density <= 1")
    masks = [_top_mask(d, density) for d in deltas]
    elected = torch.zeros_like(base)
    for d, keep in zip(deltas, masks):
        elected += d * keep
    elected = elected.sign()
    total = torch.zeros_like(base)
    count = torch.zeros_like(base)
    for d, keep in zip(deltas, masks):
        agree = keep & (d.sign() == elected) & (d != 0)
        total += d * agree
        count += agree
    return base + lam * total / count.clamp_min(1.0)


SPEC = MethodSpec(
    name="ties",
    fn=ties_merge,
    knobs=(Knob("density", "ties_density", float, default=0.2, bounds={"gt": 0.0, "le": 1.0}),),
)
