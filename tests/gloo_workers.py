"""The process group of the two-process gradient tests (shared so they join it the same way)."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


def join_gloo(rank: int, world: int, folder: str) -> None:
    """Join a gloo group through a file store in ``folder``, one torch thread per process; a
    collective that waits 60 s raises instead of hanging the test."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
