"""Peak memory of streaming fusion against the number of checkpoints K.

    .venv/bin/python bench/fusion_memory.py --k 1 2 4 8 --ckpt-mb 50 --out runs/bench/fusion_memory.json

Writes a base and K random float32 checkpoints of ``--ckpt-mb`` MiB each (tensors of ``--tensor-mb``
MiB), then fuses them in a fresh child process per (method, K). The child resets its peak-RSS counter
after its imports (``/proc/self/clear_refs``) and reads ``VmHWM`` after the fusion, so the peak counts
what fusion held: torch storage included, which tracemalloc does not see. Streaming holds a few copies
of one tensor per checkpoint, so the peak should grow by about (tensor MiB) per checkpoint, not by
(checkpoint MiB) as loading whole models would. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec: dict) -> dict:
    """Run one fusion in this (fresh) process and measure its peak resident memory."""
    from pipeline.fusion import fuse

    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    fuse(spec["base"], spec["candidates"], spec["out"], spec["method"], **spec["knobs"])
    seconds = time.perf_counter() - start
    return {
        "rss_before_kib": before,
        "peak_kib": _status_kib("VmHWM"),
        "seconds": seconds,
        "peak_reset": reset,
    }


def write_checkpoints(root: Path, count: int, ckpt_mb: int, tensor_mb: int) -> list[Path]:
    """A base and ``count`` candidates; each a folder of ckpt_mb / tensor_mb float32 tensors."""
    import torch
    from safetensors.torch import save_file

    rows = tensor_mb * MIB // (4 * 1024)
    folders = []
    for index in range(count + 1):
        gen = torch.Generator().manual_seed(index)
        scale = 1.0 if index == 0 else 0.01 * index
        tensors = {
            f"layer{t}.weight": scale * torch.randn(rows, 1024, generator=gen)
            for t in range(max(1, ckpt_mb // tensor_mb))
        }
        folder = root / ("base" if index == 0 else f"cand{index}")
        folder.mkdir(parents=True)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text("{}\n")
        folders.append(folder)
    return folders


KNOBS = {
    "delta": {"power": 2.0, "granularity": "element", "normalize": "global"},
    "soup": {},
    "task_arithmetic": {"lam": 0.5},
    "ties": {"density": 0.2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--ckpt-mb", type=int, default=50)
    parser.add_argument("--tensor-mb", type=int, default=1)
    parser.add_argument(
        "--methods", nargs="+", default=["delta", "soup", "ties"], choices=list(KNOBS)
    )
    parser.add_argument("--out", default="runs/bench/fusion_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="fusion-memory-") as tmp:
        root = Path(tmp)
        base, *cands = write_checkpoints(root, max(args.k), args.ckpt_mb, args.tensor_mb)
        ckpt_mib = (base / "model.safetensors").stat().st_size / MIB
        print(f"checkpoints: {ckpt_mib:.1f} MiB each, tensors of {args.tensor_mb} MiB (float32)")
        print(
            f"{'method':<8} {'K':>3} {'before MiB':>10} {'peak MiB':>9} {'peak-before':>11} {'load-all est.':>13} {'s':>6}"
        )
        for method in args.methods:
            for k in args.k:
                spec = {
                    "base": str(base),
                    "candidates": [str(c) for c in cands[:k]],
                    "out": str(root / f"out-{method}-{k}"),
                    "method": method,
                    "knobs": KNOBS[method],
                }
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured = json.loads(proc.stdout.strip().splitlines()[-1])
                row = {
                    "method": method,
                    "k": k,
                    "ckpt_mib": ckpt_mib,
                    "tensor_mib": args.tensor_mb,
                    "rss_before_mib": measured["rss_before_kib"] / 1024,
                    "peak_mib": measured["peak_kib"] / 1024,
                    "fusion_mib": (measured["peak_kib"] - measured["rss_before_kib"]) / 1024,
                    "load_all_estimate_mib": (k + 2)
                    * ckpt_mib,  # base + K models + output in memory
                    "seconds": measured["seconds"],
                    "peak_reset": measured["peak_reset"],
                }
                rows.append(row)
                print(
                    f"{method:<8} {k:>3} {row['rss_before_mib']:>10.1f} {row['peak_mib']:>9.1f} "
                    f"{row['fusion_mib']:>11.1f} {row['load_all_estimate_mib']:>13.1f} {row['seconds']:>6.2f}"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
