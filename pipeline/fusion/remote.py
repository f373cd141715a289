"""Fusion as Ray tasks: the same functions, scheduled by Ray (the only fusion module importing Ray).

    ref = fuse_remote.remote(base, candidates, out_dir, "delta", power=2.0)
    out = ray.get(ref)
    best, scores, folder = ray.get(fuse_and_select_remote.remote(base, cands, out_dir, score_fn=f))

Paths are read and written by the worker that runs the task: on a multi-node cluster they must be
on storage that node sees (a shared volume), or the task pinned to the node that holds them.
"""

from __future__ import annotations

import ray

from pipeline.fusion.select import fuse_and_select
from pipeline.fusion.stream import fuse

fuse_remote = ray.remote(num_cpus=1)(fuse)
fuse_and_select_remote = ray.remote(num_cpus=1)(fuse_and_select)
