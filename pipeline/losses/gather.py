"""Cross-worker gather that keeps the autograd graph, with a one-process fallback.

``torch.distributed.nn.functional.all_gather`` is the only public gradient-carrying all-gather that
works on gloo (CPU) and NCCL alike; it is deprecated in favour of a private module, so it is wrapped
here, once. Its backward SUMS the gradients that every rank sends for a gathered slice: a loss that is
computed identically on every rank returns world_size x the one-process gradient to the producer.
Callers decide how to score (see ``ir.py``).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_equal_sizes(x: Tensor, world_size: int) -> None:
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        seen = [tuple(s.tolist()) for s in shapes]
        raise ValueError(
            f"gather_with_grad needs the same shape on every rank, got {seen} (rank order); "
            "give each worker an equal slice of the global batch"
        )


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order); gradients flow back to the rank
    that produced each slice, summed over the ranks that used it. Identity in one process.

    Boolean tensors (masks) are sent as uint8, which every backend supports.
    """
    _, world_size = world_info()
    if world_size == 1:
        return x
    _check_equal_sizes(x, world_size)
    send = x.to(torch.uint8) if x.dtype == torch.bool else x
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*nn\.functional\.all_gather is deprecated", category=FutureWarning
        )
        parts = dist_fn.all_gather(send)
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out
