"""Model fusion: merge K fine-tuned checkpoints against their pre-trained base θ_0, one tensor at a time.

    from pipeline.fusion import fuse, fuse_and_select
    fuse(base, [ckpt_a, ckpt_b], out_dir, "delta", power=2.0)            # one method, one folder
    best, scores, folder = fuse_and_select(base, cands, out_dir, score_fn=dev_score, methods=[...])

Methods are plug-ins: one file each declares a ``SPEC`` (``pipeline.fusion.spec``: its per-tensor
function or search, its knobs and their config fields) and ``registry.BUILT_IN`` names the file:
delta (CoDiEmb's delta-guided fusion), soup, greedy_soup (a scored search over soups),
task_arithmetic, ties. Ray is imported only by ``pipeline.fusion.remote``. The names below load on
first use, so ``pipeline.config`` reads the registry without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "pipeline.fusion.registry",
    "fuse": "pipeline.fusion.stream",
    "fuse_and_select": "pipeline.fusion.select",
    "greedy_soup": "pipeline.fusion.greedy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``pipeline.fusion.<name>`` for the names of ``__all__``, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.fusion' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
