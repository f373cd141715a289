"""The Ray Data path alone against what training consumes, and the data wait of a real run.

    .venv/bin/python bench/ingest.py --train-steps 40 --out bench/results/ingest-cpu.json  # reproduce preset
    .venv/bin/python bench/ingest.py --metrics runs/reproduce/train/joint/metrics.jsonl --out ...
    .venv/bin/python bench/ingest.py --quick --run-quick --out /tmp/ingest.json     # smoke preset

- Ingest: the datasets the trainer is given (``pipeline.train.driver.task_datasets``: read the mined
  IR and prepared STS shards, shuffle once, tokenise in ``map_batches``; ``preserve_order`` as
  ``ingest_config``), consumed as a worker consumes its shard: ``SingleTaskBatches`` (``iter_batches``
  with the local shuffle, then collate and pad) on a one-task schedule, by one consumer taking whole
  global batches. The first batch waits for the read and the all-to-all shuffle and is timed apart;
  then ``--windows`` windows of ``--batches`` batches, rows/s the median over windows.
- Consumption: the training step's rows/s from a run's ``metrics.jsonl`` (``--metrics``; default
  ``<run dir>/train/<mode>/metrics.jsonl``): per task, the median ``pairs_per_s`` (one worker's
  micro-batch over its step time) x the workers. ``ratio`` = ingest / consumption rows/s, the smaller
  of the tasks' (above 1: the data path outruns training).
- Data wait: per step, ``data_wait_s / (data_wait_s + step_seconds)``, ``data_wait_s`` being the
  training loop's time in ``next()`` on its batch iterator (rank 0's; the batch's collation happens
  there too). Median per task and over all steps, and the total share (every wait over every step,
  the first one's read and shuffle included); the target is a median under 5%.

``--train-steps N`` first trains the config's ``--mode`` for N steps (Ray Train storage and the log in
a scratch folder; the data from the run directory) to produce such a log; ``--run-quick`` does that
for 8 steps of the smoke preset, prepared in the scratch folder, and measures ingest on its data.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import finish, machine, rates, time_window  # noqa: E402
from bench.ray_runs import bench_config, ray_session, task_medians, train_run  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.data.batches import SingleTaskBatches  # noqa: E402
from pipeline.data.schedule import TRAIN_MODE_TASKS, TaskSchedule  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.report.training import read_metrics  # noqa: E402

WAIT_TARGET = 0.05


def wait_fractions(rows: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Per task and over ``all`` steps: the steps, the median of ``data_wait_s / (data_wait_s +
    step_seconds)`` and the total share (all waits / all waits and steps). Rows without
    ``data_wait_s`` (logs older than that metric) are left out."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if "data_wait_s" in row and "step_seconds" in row:
            for name in (row["task"], "all"):
                groups.setdefault(name, []).append((row["data_wait_s"], row["step_seconds"]))
    return {
        name: {
            "steps": len(pairs),
            "median": statistics.median(w / (w + s) for w, s in pairs),
            "total": sum(w for w, _ in pairs) / sum(w + s for w, s in pairs),
        }
        for name, pairs in groups.items()
    }


def ingest_rates(cfg: Config, tasks: Iterable[str], windows: int, per_window: int) -> dict:
    """Rows/s (median over windows) and first-batch seconds of each task's Ray Data path."""
    import ray.data
    from transformers import AutoTokenizer

    from pipeline.data.ray_datasets import count_batches
    from pipeline.train.driver import task_datasets, training_shards

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # as ingest_config
    model_path = cfg.model.resolved_path()
    pad_id = AutoTokenizer.from_pretrained(model_path).pad_token_id
    shards = training_shards(cfg, tuple(tasks))
    datasets = task_datasets(cfg, shards, model_path)
    size = {"ir": cfg.train.ir_global_batch, "sts": cfg.train.sts_global_batch}
    rows = {}
    for task, count in count_batches(shards, size).items():
        if count.batches < 1 + windows * per_window:
            raise SystemExit(f"{task}: {count.batches} batches, fewer than 1 + windows x batches")
        schedule = TaskSchedule({task: count.batches}, seed=cfg.run.seed)
        shard = {task: datasets[task].iterator()}
        stream = iter(SingleTaskBatches(shard, schedule, {task: size[task]}, pad_id))
        pull = functools.partial(next, stream)
        first = time_window(pull, 1)
        seconds = [time_window(pull, per_window) for _ in range(windows)]
        stream.close()
        rows[task] = {
            **rates(seconds, {"ingest rows": per_window * size[task]}),
            "first batch s": first,
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="reproduce", help="a preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows")
    parser.add_argument(
        "--run-quick", action="store_true", help="the smoke preset, trained 8 steps first"
    )
    parser.add_argument(
        "--train-steps", type=int, default=0, help="train this many steps first (scratch folder)"
    )
    parser.add_argument("--metrics", default="", help="a run's metrics.jsonl (no --train-steps)")
    parser.add_argument("--mode", default="joint", choices=list(TRAIN_MODE_TASKS))
    parser.add_argument("--windows", type=int, default=5, help="timed windows per task")
    parser.add_argument("--batches", type=int, default=5, help="global batches per window")
    parser.add_argument("--out", required=True, help="JSON file (local path or URI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.batches = 3, 2
    if args.run_quick:
        args.train_steps = args.train_steps or 8
    overrides = list(args.overrides)
    if args.train_steps:
        overrides += [f"train.max_steps={args.train_steps}", "train.eval_every=0"]
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, ray_session(cores):
        cfg = bench_config(args.config, overrides, tmp if args.run_quick else None)
        if args.train_steps:
            log = train_run(cfg, args.mode, tmp, "ingest-run")
            args.metrics = f"({args.train_steps} steps of {cfg.preset} in a scratch folder)"
        else:
            args.metrics = args.metrics or storage.join(
                cfg.run.dir, "train", args.mode, "metrics.jsonl"
            )
            log = read_metrics(args.metrics)
        ingest = ingest_rates(cfg, TRAIN_MODE_TASKS[args.mode], args.windows, args.batches)
    workers = len(log[0].get("peak_rss_mb_workers", [])) or cfg.train.num_workers
    consumed = {t: v * workers for t, v in task_medians(log, "pairs_per_s").items()}
    waits = wait_fractions(log)
    rows = {task: dict(row) for task, row in ingest.items()}
    for task, rate in consumed.items():
        rows[task].update(
            {"train rows/s": rate, "ingest / train": ingest[task]["ingest rows/s"] / rate}
        )
    for name, wait in waits.items():
        rows.setdefault(name, {}).update(
            {"wait median %": 100 * wait["median"], "wait total %": 100 * wait["total"]}
        )
    ratios = {t: rows[t]["ingest / train"] for t in consumed}
    report = {
        "machine": machine(torch.device("cpu")),
        "config": cfg.preset,
        "quick": args.quick,
        "metrics": args.metrics,
        "workers": workers,
        "global_batch": {"ir": cfg.train.ir_global_batch, "sts": cfg.train.sts_global_batch},
        "windows": args.windows,
        "batches_per_window": args.batches,
        "ingest": ingest,
        "train_rows_per_s": consumed,
        "wait": waits,
        "wait_target": WAIT_TARGET,
        "wait_ok": bool(waits) and waits["all"]["median"] < WAIT_TARGET,
        "ratios": ratios,
        "ratio": min(ratios.values()),
    }
    columns = ["ingest rows/s", "first batch s", "train rows/s", "ingest / train"]
    table = markdown_table(rows, [*columns, "wait median %", "wait total %"], 2, "task")
    if not waits:
        table += "\n\n(no data_wait_s in the log: the run predates that metric)"
    else:
        verdict = "ok" if report["wait_ok"] else "OVER"
        table += f"\n\nmedian data wait {100 * waits['all']['median']:.2f}% of the step: {verdict}"
    return finish(report, table, args.out, "ingest / training rows/s")


if __name__ == "__main__":
    main()
