"""Uniform Model Soup (Wortsman et al., 2022): the plain average of the K checkpoints.

θ = (1/K) Σ_k θ_k = θ_0 + (1/K) Σ_k δ_k
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.fusion.spec import MethodSpec

if TYPE_CHECKING:
    import torch


def soup_merge(base: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    """θ_0 + mean_k δ_k, the arithmetic mean of the checkpoints.

    Args:
        base: θ_0 for one tensor.
        deltas: δ_k = θ_k − θ_0, K of them.
    """
    fused = base.clone()
    for d in deltas:
        fused += d / len(deltas)
    return fused


SPEC = MethodSpec(name="soup", fn=soup_merge)
