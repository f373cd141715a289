"""Task arithmetic (Ilharco et al., 2023): add the scaled sum of the task vectors to the base.

θ = θ_0 + λ Σ_k δ_k          (λ = 1/K is the soup)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.fusion.spec import Knob, MethodSpec

if TYPE_CHECKING:
    import torch


def task_arithmetic_merge(
    base: torch.Tensor, deltas: list[torch.Tensor], *, lam: float = 1.0
) -> torch.Tensor:
    """θ_0 + λ Σ_k δ_k.

    Args:
        base: θ_0 for one tensor.
        deltas: δ_k = θ_k − θ_0, K of them.
        lam: λ, the scale of the summed task vectors.
    """
    fused = base.clone()
    for d in deltas:
        fused += lam * d
    return fused


SPEC = MethodSpec(
    name="task_arithmetic",
    fn=task_arithmetic_merge,
    knobs=(Knob("lam", "ta_lambda", float, default=(0.5, 0.7, 1.0), grid=True),),
)
