"""Fusion time and peak memory against the number of checkpoints K.

    .venv/bin/python bench/fusion.py --out bench/results/fusion-cpu.json      # K 2 4 8, 50 MiB each
    .venv/bin/python bench/fusion.py --quick --out /tmp/fusion.json           # K 2 4, 4 MiB, delta

Writes a base and K random float32 checkpoints of ``--ckpt-mb`` MiB each (tensors of ``--tensor-mb``
MiB), then fuses them in a fresh child process per (method, K, repeat). The child resets its peak-RSS
counter after its imports (``/proc/self/clear_refs``) and reads ``VmHWM`` after the fusion, so the
peak counts what fusion held: torch storage included, which tracemalloc does not see. Each point is
the median of ``--repeats`` children. Streaming holds a few copies of one tensor per checkpoint, so
the peak should grow by a few (tensor MiB) per checkpoint, not by (checkpoint MiB) as loading whole
models would (the ``load-all est.`` column: base + K models + output). ``ratio`` = delta's peak RSS
at the largest K / at the smallest K (flat in K: about 1). Linux only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1 << 20
KNOBS = {
    "delta": {"power": 2.0, "granularity": "element", "normalize": "global"},
    "soup": {},
    "task_arithmetic": {"lam": 0.5},
    "ties": {"density": 0.2},
}
MEASURED = ("rss_before_mib", "peak_mib", "fusion_mib", "seconds")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec: dict) -> dict:
    """Run one fusion in this (fresh) process and measure its peak resident memory (MiB)."""
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
    peak = _status_kib("VmHWM")
    return {
        "rss_before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "fusion_mib": (peak - before) / 1024,
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


def median_row(runs: list[dict]) -> dict:
    """The median of every measured field over repeated runs, and the runs themselves."""
    row = {key: statistics.median(run[key] for run in runs) for key in MEASURED}
    return row | {"runs": runs, "peak_reset": all(run["peak_reset"] for run in runs)}


def peak_ratio(rows: Iterable[Mapping], method: str = "delta", key: str = "peak_mib") -> float:
    """``key`` of ``method`` at its largest K over its smallest K."""
    by_k = {row["k"]: row[key] for row in rows if row["method"] == method}
    if not by_k:
        raise ValueError(f"no {method} rows")
    return by_k[max(by_k)] / by_k[min(by_k)]


def measure(spec: dict) -> dict:
    """One fusion in a fresh child process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--ckpt-mb", type=int, default=50)
    parser.add_argument("--tensor-mb", type=int, default=1)
    parser.add_argument(
        "--methods", nargs="+", default=["delta", "soup", "ties"], choices=list(KNOBS)
    )
    parser.add_argument("--repeats", type=int, default=3, help="children per point (median)")
    parser.add_argument("--quick", action="store_true", help="K 2 4, 4 MiB checkpoints, delta")
    parser.add_argument("--out", default="runs/bench/fusion.json", help="JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    if args.quick:
        args.k, args.ckpt_mb, args.methods = [2, 4], 4, ["delta"]
    if "delta" not in args.methods:
        parser.error("--methods must include delta (the headline ratio is delta's)")
    from bench._timing import finish
    from pipeline.eval.table import markdown_table

    rows = []
    with tempfile.TemporaryDirectory(prefix="fusion-memory-") as tmp:
        root = Path(tmp)
        base, *cands = write_checkpoints(root, max(args.k), args.ckpt_mb, args.tensor_mb)
        ckpt_mib = (base / "model.safetensors").stat().st_size / MIB
        print(f"checkpoints: {ckpt_mib:.1f} MiB each, tensors of {args.tensor_mb} MiB (float32)")
        for method in args.methods:
            for k in args.k:
                spec = {
                    "base": str(base),
                    "candidates": [str(c) for c in cands[:k]],
                    "method": method,
                    "knobs": KNOBS[method],
                }
                runs = [
                    measure({**spec, "out": str(root / f"out-{method}-{k}-{i}")})
                    for i in range(args.repeats)
                ]
                rows.append(
                    {"method": method, "k": k, "load_all_estimate_mib": (k + 2) * ckpt_mib}
                    | median_row(runs)
                )
    report = {
        "ckpt_mib": ckpt_mib,
        "tensor_mib": args.tensor_mb,
        "repeats": args.repeats,
        "rows": rows,
        "fusion_mib_ratio": peak_ratio(rows, key="fusion_mib"),
        "load_all_ratio": peak_ratio(rows, key="load_all_estimate_mib"),
        "ratio": peak_ratio(rows),
    }
    columns = {
        "rss_before_mib": "before MiB",
        "peak_mib": "peak MiB",
        "fusion_mib": "peak-before",
        "load_all_estimate_mib": "load-all est.",
        "seconds": "s",
    }
    table = markdown_table(
        {f"{r['method']} K={r['k']}": {v: r[k] for k, v in columns.items()} for r in rows},
        list(columns.values()),
        2,
        f"method, K (median of {args.repeats})",
    )
    table += (
        f"\n\ndelta, K={max(args.k)} / K={min(args.k)}: peak-before x"
        f"{report['fusion_mib_ratio']:.2f}; loading whole models would be x"
        f"{report['load_all_ratio']:.2f}"
    )
    return finish(report, table, args.out, f"delta peak MiB, K={max(args.k)} / K={min(args.k)}")


if __name__ == "__main__":
    main()
