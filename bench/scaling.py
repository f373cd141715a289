"""Ray Train with 1 and 2 workers on this machine, the IR gather's share of the step, and the
gather's traffic at 8 and 64 workers (an estimate).

    .venv/bin/python bench/scaling.py --out bench/results/scaling-cpu.json   # the reproduce preset's data, 30 steps
    .venv/bin/python bench/scaling.py --quick --out /tmp/scaling.json        # smoke preset, 8 steps

- Train: the ``joint`` mode for ``--steps`` steps with 1, then 2 workers at the same global batches,
  whose workers get ``OMP_NUM_THREADS`` = cores / workers in their runtime environment (torch reads
  it at import; a probe task started the same way reports what it got), so the cores are shared alike;
  ``train.cpus_per_worker`` = (cores - 1) / workers leaves Ray Data the one CPU it needs. Per task:
  the median ``step_seconds`` (``train_step``'s own clock, rank 0), steps/s and global rows/s.
  ``ratio`` = steps/s with 2 workers / with 1 (ideal: 2), the smaller of the two tasks'.
- Gather: ``gather_with_grad`` alone in a 2-process gloo group (torch.multiprocessing, no Ray;
  cores / 2 threads each), forward and backward, on what the IR loss gathers at the run's shapes:
  each worker's passages [B, 1 + N, D] in float32 (queries are not gathered) and their slot mask;
  B = ir_global_batch / 2, N = mining.num_negatives, D the model's width. Its share: that time over
  the median IR step with 2 workers.
- IR loss's extra cost per added worker: ``multi_positive_info_nce`` forward + backward on the same
  per-worker micro-batch in that group minus in one process (no group): the gather, the loss's
  all-reduce and the scoring against the other worker's passages.
- Communication at scale, computed (not measured) by :func:`gather_traffic`: BERT-base (D = 768),
  16 queries per worker with 1 positive + 7 negatives, float32 and bf16, 8 and 64 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import finish, machine, time_window  # noqa: E402
from bench.gpu_step import SHAPES  # noqa: E402
from bench.ray_runs import bench_config, ray_session, task_medians, train_run  # noqa: E402
from pipeline.config import with_overrides  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.losses import multi_positive_info_nce  # noqa: E402
from pipeline.losses.gather import gather_with_grad  # noqa: E402

LINKS_GBPS = (10, 25, 100)
SCALE = {"workers": (8, 64), "queries": 16, "passages": 8, "dtypes": {"fp32": 4, "bf16": 2}}


def gather_traffic(workers: int, queries: int, passages: int, dim: int, nbytes: int) -> int:
    """Bytes one worker sends per IR step for the gathered passages, and receives as many.

    A worker's own embeddings are one chunk = queries x passages x dim x nbytes. The forward
    all-gather (ring) sends W - 1 chunks and receives W - 1; the backward reduce-scatter of the
    gathered gradient (ring; gloo's all-to-all moves the same) sends and receives W - 1 more. Left
    out: the slot masks (1 byte per passage, gathered without gradient), the shape check and the
    loss's scalar all-reduce (< 0.1% together), and per-message latency."""
    return 2 * (workers - 1) * queries * passages * dim * nbytes


def link_seconds(nbytes: float, gbps: float) -> float:
    """Seconds to send ``nbytes`` over a ``gbps`` link (sending and receiving at once)."""
    return nbytes * 8 / (gbps * 1e9)


def allreduce_traffic(params: int, workers: int, nbytes: int) -> float:
    """Bytes one worker sends in a ring all-reduce of ``params`` gradients (DDP): 2 (W - 1) / W."""
    return 2 * (workers - 1) / workers * params * nbytes


def bert_base_params() -> int:
    """Parameters of BERT-base without its pooler (``bench.gpu_step.SHAPES``), built on ``meta``."""
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        model = BertModel(BertConfig(**SHAPES["bert-base"]), add_pooling_layer=False)
    return sum(p.numel() for p in model.parameters())


def estimate() -> dict:
    """The gather's traffic and link time per worker per step at each scale and dtype (``rows``),
    and DDP's fp32 gradient all-reduce of the same model for comparison."""
    dim, rows = SHAPES["bert-base"]["hidden_size"], {}
    for workers in SCALE["workers"]:
        for dtype, nbytes in SCALE["dtypes"].items():
            sent = gather_traffic(workers, SCALE["queries"], SCALE["passages"], dim, nbytes)
            rows[f"{workers} workers {dtype}"] = {"MB sent": sent / 1e6} | {
                f"ms @{g}Gb/s": 1000 * link_seconds(sent, g) for g in LINKS_GBPS
            }
    params = bert_base_params()
    return {
        "model": f"bert-base, D={dim}",
        "per_worker": f"{SCALE['queries']} queries x {SCALE['passages']} passages, gathered",
        "formula": "bytes sent (= received) per worker per step = 2 (W-1) x B x (1+N) x D x "
        "bytes/value: forward ring all-gather + backward reduce-scatter; seconds = bytes x 8 / "
        "link rate; masks, scalars and latency left out",
        "rows": rows,
        "ddp_fp32_grad_allreduce_mb": {
            f"{w} workers": allreduce_traffic(params, w, 4) / 1e6 for w in SCALE["workers"]
        },
        "params": params,
    }


def _per_step(step: Callable[[], object], windows: int, steps: int, sync=lambda: None) -> list:
    """Seconds per call of ``step``, one value per timed window (after one untimed call)."""
    step()
    return [time_window(step, steps, sync) / steps for _ in range(windows)]


def _gather_worker(rank: int, world: int, port: int, spec: dict, out: str) -> None:
    """One rank of the gather benchmark (``torch.multiprocessing.spawn`` target)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(rank)
    b, n, d, timing = (
        spec["queries"],
        spec["negatives"],
        spec["dim"],
        (spec["windows"], spec["steps"]),
    )
    query, pos, neg = (F.normalize(torch.randn(*s, d), dim=-1) for s in ((b,), (b, 1), (b, n)))
    for t in (query, pos, neg):
        t.requires_grad_()
    passages = torch.randn(b, 1 + n, d, requires_grad=True)
    mask = torch.ones(b, 1 + n, dtype=torch.bool)

    def loss() -> None:
        multi_positive_info_nce(query, pos, neg).backward()

    def gather() -> None:
        gather_with_grad(mask)
        gather_with_grad(passages).sum().backward()

    seconds = {"IR loss, 1 process": _per_step(loss, *timing)}  # before the group exists
    dist.init_process_group("gloo", rank=rank, world_size=world)
    seconds["gather"] = _per_step(gather, *timing, dist.barrier)
    seconds["IR loss, 2 processes"] = _per_step(loss, *timing, dist.barrier)
    if rank == 0:
        Path(out).write_text(json.dumps(seconds))
    dist.destroy_process_group()


def time_gather(spec: dict) -> dict[str, list[float]]:
    """Per-step seconds of each window of the gather and the IR loss (rank 0's)."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free now; gloo's store binds it next
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "gather.json")
        mp.spawn(_gather_worker, args=(2, port, spec, out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())


def _torch_threads() -> int:
    return torch.get_num_threads()


def thread_probe(env: dict[str, str]) -> int:
    """torch's thread count in a Ray worker started with ``env`` (as the Train workers are)."""
    import ray

    probe = ray.remote(num_cpus=0.5, runtime_env={"env_vars": env})(_torch_threads)
    return ray.get(probe.remote())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="reproduce", help="a preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--quick", action="store_true", help="the smoke preset, few steps")
    parser.add_argument("--steps", type=int, default=30, help="training steps per worker count")
    parser.add_argument("--windows", type=int, default=7, help="timed windows of the gather")
    parser.add_argument("--gather-steps", type=int, default=100, help="gathers per window")
    parser.add_argument("--out", required=True, help="JSON file (local path or URI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.windows, args.gather_steps = 8, 3, 20
    cores = len(os.sched_getaffinity(0))
    rows, threads = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp, ray_session(cores):
        cfg = bench_config(args.config, args.overrides, tmp if args.quick else None)
        batch = {"ir": cfg.train.ir_global_batch, "sts": cfg.train.sts_global_batch}
        for workers in (1, 2):
            run_cfg = with_overrides(
                cfg,
                {
                    "train.num_workers": workers,
                    "train.cpus_per_worker": (cores - 1) / workers,
                    "train.max_steps": args.steps,
                    "train.eval_every": 0,
                },
            )
            env = {"OMP_NUM_THREADS": str(max(1, cores // workers))}
            threads[workers] = thread_probe(env)
            log = train_run(run_cfg, "joint", tmp, f"scaling-{workers}w", env)
            for task, seconds in task_medians(log, "step_seconds").items():
                rows[f"{workers}w {task}"] = {
                    "step s": seconds,
                    "steps/s": 1 / seconds,
                    "rows/s": batch[task] / seconds,
                    "threads": threads[workers],
                }
    from transformers import AutoConfig

    model_path = cfg.model.resolved_path()
    spec = {
        "queries": cfg.train.ir_global_batch // 2,
        "negatives": cfg.mining.num_negatives,
        "dim": AutoConfig.from_pretrained(model_path).hidden_size,
        "threads": max(1, cores // 2),
        "windows": args.windows,
        "steps": args.gather_steps,
    }
    ms = {k: 1000 * statistics.median(v) for k, v in time_gather(spec).items()}
    ms["IR loss extra per added worker"] = ms["IR loss, 2 processes"] - ms["IR loss, 1 process"]
    ir_step = rows.get("2w ir", {}).get("step s")
    comm = {
        k: {"ms": v} | ({"% of IR step (2w)": v / (10 * ir_step)} if ir_step else {})
        for k, v in ms.items()
    }
    ratios = {
        t: rows[f"2w {t}"]["steps/s"] / rows[f"1w {t}"]["steps/s"]
        for t in batch
        if f"1w {t}" in rows and f"2w {t}" in rows
    }
    scale = estimate()
    report = {
        "machine": machine(torch.device("cpu")),
        "config": cfg.preset,
        "quick": args.quick,
        "steps": args.steps,
        "global_batch": batch,
        "worker_threads": threads,
        "results": rows,
        "gather_shape": spec,
        "gather_ms": comm,
        "ratios": ratios,
        "ratio": min(ratios.values()),
        "estimate": scale,
    }
    table = markdown_table(rows, ["step s", "steps/s", "rows/s", "threads"], 3, "workers task")
    table += "\n\n" + markdown_table(comm, ["ms", "% of IR step (2w)"], 3, "2-process gloo")
    table += "\n\n" + markdown_table(
        scale["rows"], ["MB sent", *(f"ms @{g}Gb/s" for g in LINKS_GBPS)], 2, "gather, estimate"
    )
    table += "\n\nfor comparison, DDP's fp32 gradient all-reduce of BERT-base sends " + ", ".join(
        f"{mb:.0f} MB per worker per step at {w}"
        for w, mb in scale["ddp_fp32_grad_allreduce_mb"].items()
    )
    return finish(report, table, args.out, "steps/s 2 workers / 1 worker")


if __name__ == "__main__":
    main()
