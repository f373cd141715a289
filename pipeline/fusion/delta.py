"""CoDiEmb's delta-guided fusion: each checkpoint's weight, element by element (or tensor by tensor),
grows with how far that checkpoint moved from the pre-trained initialisation.

    δ_k = θ_k − θ_0
    δ̂_k = δ_k / s_k                      s_k = 1 (none) | mean|δ_k| of this tensor (tensor)
                                          | mean|δ_k| over all of checkpoint k's float tensors (global)
    m_k = |δ̂_k| (element) | mean|δ̂_k| (tensor)
    w_k = m_k^p / Σ_j m_j^p               uniform where every m_j is 0
    θ   = θ_0 + Σ_k w_k ⊙ δ_k

The weights come from the normalised magnitudes but multiply the raw deltas: normalising decides which
checkpoint speaks for an element, without rescaling what that checkpoint learned. Without it, a
checkpoint that moved more overall (e.g. trained longer or at a higher learning rate) wins most
elements whatever the element's importance (METHOD-NOTES "Delta-guided fusion").
p = 0 is the uniform soup. normalize="tensor" with granularity="tensor" is also the soup (every
checkpoint's normalised mean magnitude is 1), so per-tensor weights need normalize none or global.
The paper does not publish its formula; this family and its knobs are picked on dev data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from pipeline.fusion.spec import Knob, MethodSpec

if TYPE_CHECKING:
    import torch

Granularity = Literal["element", "tensor"]
Normalize = Literal["none", "tensor", "global"]


def delta_weights(
    deltas: Sequence[torch.Tensor],
    *,
    power: float = 1.0,
    granularity: Granularity = "element",
    normalize: Normalize = "tensor",
    scales: Sequence[float] | None = None,
) -> list[torch.Tensor]:
    """The fusion weights w_k (element-wise tensors, or 0-d per tensor) that sum to 1 over k.

    Args:
        deltas: δ_k = θ_k − θ_0 for one tensor, K of them.
        power: p in w_k ∝ m_k^p (0: uniform).
        granularity: "element" (a weight per element) or "tensor" (one weight per tensor).
        normalize: how δ_k is scaled before magnitudes are compared (see the module docstring).
        scales: per-checkpoint global scales s_k (mean |δ_k| over the whole checkpoint), needed for
            normalize="global"; ``stream.fuse`` computes them in a first pass (``prepare``).
    """
    import torch  # here, not at the top: the config reads SPEC without loading torch

    if normalize == "global":
        if scales is None or len(scales) != len(deltas):
            raise ValueError("normalize='global' needs one scale per checkpoint (see prepare)")
        norms = [torch.tensor(float(s), dtype=d.dtype) for s, d in zip(scales, deltas)]
    elif normalize == "tensor":
        norms = [d.abs().mean() for d in deltas]
    elif normalize == "none":
        norms = [torch.ones((), dtype=d.dtype) for d in deltas]
    else:
        raise ValueError(f"normalize={normalize!r}: expected none, tensor or global")
    if granularity not in ("element", "tensor"):
        raise ValueError(f"granularity={granularity!r}: expected element or tensor")
    tiny = torch.finfo(deltas[0].dtype).tiny  # s_k = 0 only when δ_k = 0: then δ̂_k = 0
    mags = []  # m_k, then turned in place into the gains m_k^p, then the weights
    for d, s in zip(deltas, norms):
        m = d.abs() if granularity == "element" else d.abs().mean()
        mags.append(m.div_(s.clamp_min(tiny)))
    top = mags[0].clone()
    for m in mags[1:]:
        torch.maximum(top, m, out=top)
    still = top == 0  # no checkpoint moved here: uniform weights
    top.clamp_min_(tiny)
    for m in mags:  # dividing by the max first keeps m^p in range for any p
        m.div_(top).pow_(power).masked_fill_(still, 1.0)
    total = mags[0].clone()
    for m in mags[1:]:
        total += m
    return [m.div_(total) for m in mags]


def delta_merge(
    base: torch.Tensor,
    deltas: list[torch.Tensor],
    *,
    power: float = 1.0,
    granularity: Granularity = "element",
    normalize: Normalize = "tensor",
    scales: Sequence[float] | None = None,
) -> torch.Tensor:
    """θ_0 + Σ_k w_k ⊙ δ_k with the weights of ``delta_weights`` (same arguments)."""
    weights = delta_weights(
        deltas, power=power, granularity=granularity, normalize=normalize, scales=scales
    )
    fused = base.clone()
    for w, d in zip(weights, deltas):
        fused += w * d
    return fused


def prepare(
    deltas: Iterable[tuple[str, torch.Tensor, list[torch.Tensor]]],
    *,
    normalize: Normalize = "tensor",
    **_: object,
) -> dict[str, list[float]]:
    """First pass for normalize="global": ``{"scales": [mean |δ_k| over all float tensors, per k]}``.

    Streams ``(name, θ_0, [δ_k])`` one tensor at a time; reads nothing for the other normalisations.
    """
    import torch

    if normalize != "global":
        return {}
    totals: list[float] = []
    count = 0
    for _, _, ds in deltas:
        sums = [float(d.abs().sum(dtype=torch.float64)) for d in ds]
        totals = [t + s for t, s in zip(totals, sums)] if totals else sums
        count += ds[0].numel()
    return {"scales": [t / max(count, 1) for t in totals]}


SPEC = MethodSpec(
    name="delta",
    fn=delta_merge,
    prepare=prepare,
    knobs=(
        Knob("power", "delta_power", float, default=(1.0, 2.0), grid=True),
        Knob("granularity", "delta_granularity", Granularity, default="element"),
        Knob("normalize", "delta_normalize", Normalize, default="tensor"),
    ),
)
