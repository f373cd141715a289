"""Model fusion: merge K fine-tuned checkpoints against their pre-trained base θ_0, one tensor at a time.

    from pipeline.fusion import fuse, fuse_and_select
    fuse(base, [ckpt_a, ckpt_b], out_dir, "delta", power=2.0)            # one method, one folder
    best, scores, folder = fuse_and_select(base, cands, out_dir, score_fn=dev_score, methods=[...])

Methods (one file each, per-tensor pure functions behind ``registry.METHODS``): delta (CoDiEmb's
delta-guided fusion), soup, task_arithmetic, ties; greedy_soup is a scored search over soups.
Ray is imported only by ``pipeline.fusion.remote``.
"""

from pipeline.fusion.greedy import greedy_soup
from pipeline.fusion.registry import METHODS
from pipeline.fusion.select import fuse_and_select
from pipeline.fusion.stream import fuse

__all__ = ["METHODS", "fuse", "fuse_and_select", "greedy_soup"]
