"""Timing and reporting helpers shared by the scripts in ``bench/``: interleaved timed windows, median
rates, the measured matrix-product rate (the peak that MFU is counted against), what the numbers were
measured on, and the printed table plus JSON report.

Plain Python and torch only (no ``pipeline`` import, no sentence-transformers import), so any bench
script can use them, the ones that run on the GPU machine (no Ray, MLflow or pyarrow) included.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import torch

OURS, THEIRS = "ours", "sentence-transformers"  # the two systems the comparison benchmarks time


def no_sync() -> None:
    """CPU work is done when the call returns."""


def time_window(
    step: Callable[[], object], steps: int, sync: Callable[[], None] = no_sync
) -> float:
    """Seconds for ``steps`` calls of ``step``; ``sync`` runs before each clock read (CUDA is
    asynchronous: pass ``torch.cuda.synchronize`` there)."""
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - started


def compare(
    steps: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    windows: int,
    per_window: int = 1,
    sync: Callable[[], None] = no_sync,
) -> dict[str, list[float]]:
    """Seconds of ``windows`` timed windows of ``per_window`` calls for every system in ``steps``,
    after ``warmup`` untimed calls each. The windows are interleaved (a, b, a, b, ...), so background
    load on a shared machine hits every system alike."""
    for step in steps.values():
        time_window(step, warmup, sync)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(windows):
        for name, step in steps.items():
            seconds[name].append(time_window(step, per_window, sync))
    return seconds


def rates(seconds: Sequence[float], work: Mapping[str, float]) -> dict[str, float]:
    """Median over the windows of each unit of ``work`` (done per window) per second, as
    ``"<unit>/s"``, and the median window in ``"seconds"``."""
    row = {
        f"{unit}/s": statistics.median(amount / s for s in seconds) for unit, amount in work.items()
    }
    row["seconds"] = statistics.median(seconds)
    return row


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Measured dense matrix-product rate (TFLOP/s) of an ``n x n @ n x n`` product."""
    sync = torch.cuda.synchronize if device.type == "cuda" else no_sync
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    seconds = time_window(lambda: torch.matmul(a, b), repeats, sync)
    return 2 * n**3 * repeats / seconds / 1e12


def _cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    """An installed distribution's version, read from its metadata (nothing is imported)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on: processor or GPU, threads, library versions."""
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
    }


def write_json(path: str, obj: object) -> None:
    """Write ``obj`` as indented JSON to a local path (atomically: temp file, then rename). A URI
    (``s3://``, ``file://``, ...) goes through ``pipeline.storage``, which needs pyarrow."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    if "://" in path:
        from pipeline import storage

        storage.write_bytes(path, text.encode())
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def finish(report: dict, table: str, out: str, label: str = f"{OURS} / {THEIRS}") -> dict:
    """Print ``table`` and the headline ratio (``label`` says of what), write ``report`` as JSON to
    ``out``; return it."""
    print(table)
    print(f"\nratio {label}: {report['ratio']:.3f}")
    write_json(out, report)
    print(f"wrote {out}")
    return report
