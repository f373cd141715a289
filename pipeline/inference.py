"""Where the pipeline's inference runs, and in what precision: dev scoring in the fuse stage, the
evaluate stage and dense mining.

A CPU run (``train.use_gpu: false``) encodes in the calling process, float32. A GPU run hands each
of those encodes to a Ray task holding one GPU: the driver (on KubeRay a head pod with no GPU) would
otherwise encode corpora on its CPUs while the GPUs wait. bf16 autocast only where ``eval.bf16``
asks and the GPU supports it (``pipeline.model.encoder.autocast_dtype``).

Every dev score carries the label of the precision it was measured in (:func:`precision_label`):
the fuse stage reuses a score that training recorded only when its label is the fuse stage's own,
so the models it compares are all scored on one device type in one dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from pipeline.model.encoder import autocast_dtype

T = TypeVar("T")


def inference_device(use_gpu: bool) -> torch.device:
    """The device this process encodes on: CUDA on a GPU run (an error when none is visible, rather
    than hours on the CPU unnoticed), else the CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "train.use_gpu=true but this process sees no CUDA device: check that the Ray node "
            "advertises its GPUs (`ray status`) and that torch is a CUDA build"
        )
    return torch.device("cuda")


def precision_label(device: torch.device, bf16: bool) -> str:
    """How an encoder on ``device`` asked for ``bf16`` actually scores: ``cpu-fp32``, ``cuda-fp32``
    or ``cuda-bf16``."""
    dtype = autocast_dtype(device, bf16)
    return f"{device.type}-{'bf16' if dtype == torch.bfloat16 else 'fp32'}"


def on_inference_device(use_gpu: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` here on a CPU run; as a Ray task holding one GPU (and one CPU) on a GPU
    run, returning its result. ``fn`` picks its device with :func:`inference_device`."""
    if not use_gpu:
        return fn(*args, **kwargs)
    import ray

    task = ray.remote(num_gpus=1, num_cpus=1)(fn)
    return ray.get(task.remote(*args, **kwargs))
