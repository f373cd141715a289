"""How many torch threads a process may run: the CPUs its container and its Ray reservation give it.

``os.sched_getaffinity`` sees the node's cores, not a Kubernetes pod's CPU limit, which the kernel
enforces as a CFS quota (cgroup ``cpu.max``, or ``cpu.cfs_quota_us`` on cgroup v1): a worker that
starts one thread per core of a 64-core node inside an 8-CPU pod is throttled, not faster.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_cpu_limit(root: str = CGROUP_ROOT) -> float | None:
    """CPUs this container may use by its cgroup quota (v2 ``cpu.max``, else v1 CFS files), or
    None when unlimited or not under a cgroup."""
    v2 = Path(root, "cpu.max")
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    v1_quota, v1_period = (
        Path(root, "cpu", "cpu.cfs_quota_us"),
        Path(root, "cpu", "cpu.cfs_period_us"),
    )
    if v1_quota.is_file() and v1_period.is_file():
        quota = int(v1_quota.read_text())
        return None if quota <= 0 else quota / int(v1_period.read_text())
    return None


def usable_cpus(root: str = CGROUP_ROOT) -> int:
    """Whole CPUs this process may run on: its affinity, capped by the cgroup quota (at least 1)."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.floor(limit))
    return max(1, cpus)


def worker_threads(
    requested: int, local_workers: int, reserved_cpus: float, root: str = CGROUP_ROOT
) -> int:
    """Torch threads for one training worker: ``requested``, or (0) the usable CPUs shared by this
    node's ``local_workers``, no more than its Ray reservation ``reserved_cpus`` (whole CPUs; a
    fractional reservation gets its share of the node). Ray sets no thread count for a fractional
    reservation, so torch would otherwise start one thread per core in every worker."""
    if requested:
        return requested
    share = max(1, usable_cpus(root) // max(1, local_workers))
    return min(share, math.floor(reserved_cpus)) if reserved_cpus >= 1 else share


def dev_threads(worker: int, local_workers: int, root: str = CGROUP_ROOT) -> int:
    """Threads for rank 0's dev evaluation, while the other workers on its node wait: their threads
    too, within the usable CPUs."""
    return max(1, min(worker * max(1, local_workers), usable_cpus(root)))
