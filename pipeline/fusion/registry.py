"""The fusion methods by name. Each is a per-tensor pure function run by ``stream.fuse``:

    fn(base: Tensor, deltas: list[Tensor], **knobs) -> Tensor     # θ_0, [θ_k − θ_0], -> fused θ

optionally with ``prepare(deltas_stream, **knobs) -> extra knobs``, a first pass over every tensor for
statistics a single tensor cannot give (delta's global normalisation). ``greedy_soup`` is a search
over soups with a dev scorer, not a per-tensor method: see ``pipeline.fusion.greedy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.fusion import delta, soup, task_arithmetic, ties

TensorFn = Callable[..., torch.Tensor]
PrepareFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """A per-tensor fusion function and its optional first pass."""

    fn: TensorFn
    prepare: PrepareFn | None = None


METHODS: dict[str, Method] = {
    "delta": Method(delta.delta_merge, delta.prepare),
    "soup": Method(soup.soup_merge),
    "task_arithmetic": Method(task_arithmetic.task_arithmetic_merge),
    "ties": Method(ties.ties_merge),
}


def get_method(name: str) -> Method:
    """The registered method ``name``, or a ``ValueError`` listing the known ones."""
    if name not in METHODS:
        hint = " (a search over soups: pipeline.fusion.greedy.greedy_soup)" * (
            name == "greedy_soup"
        )
        raise ValueError(f"unknown fusion method {name!r}{hint}; known: {sorted(METHODS)}")
    return METHODS[name]
