"""What the Ray benchmarks (``ingest.py``, ``scaling.py``) share: a private Ray session sized for
this machine, the config to measure (the smoke preset prepared and mined in a scratch folder, or a
run directory that already holds the prepare and mine outputs), one Ray Train run read back from its
``metrics.jsonl``, and medians of its per-step metrics."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import storage  # noqa: E402
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.report.training import read_metrics  # noqa: E402

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)  # before Ray starts: its workers inherit the environment

TASKS = ("ir", "sts")


@contextlib.contextmanager
def ray_session(num_cpus: int) -> Iterator[None]:
    """A new local Ray instance of ``num_cpus`` CPUs (never another job's cluster); shut down on
    exit."""
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=300_000_000,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def bench_config(config: str, overrides: Sequence[str], smoke_root: str | None) -> Config:
    """With ``smoke_root``: the smoke preset there, prepared and mined now (seconds). Otherwise the
    ``config`` preset, whose run directory must hold ``prepared/`` and ``mined/`` already."""
    if smoke_root is None:
        cfg = load_config(config, list(overrides))
        if not storage.exists(storage.join(cfg.run.dir, "mined", "stats.json")):
            raise SystemExit(
                f"{cfg.run.dir} has no mine-stage output: run `python -m jobs.prepare` and "
                f"`python -m jobs.mine` with --config {config} first, or use --quick"
            )
        return cfg
    from jobs import mine, prepare

    cfg = load_config("smoke", [f"run.root={smoke_root}", *overrides])
    prepare.main(cfg)
    mine.main(cfg)
    return cfg


def train_run(
    cfg: Config, mode: str, out: str, name: str, worker_env: Mapping[str, str] | None = None
) -> list[dict]:
    """Train ``mode`` once with Ray Train (``build_trainer``, as ``jobs.train`` does) into the scratch
    folder ``out`` under the run name ``name``, the workers' environment updated with
    ``worker_env``; return its ``metrics.jsonl`` rows."""
    import ray

    from pipeline.stages.train import base_model
    from pipeline.train.driver import build_trainer, check_data_headroom

    check_data_headroom(cfg, ray.cluster_resources().get("CPU", 0.0))
    metrics = storage.join(out, name, "metrics.jsonl")
    trainer = build_trainer(
        cfg,
        mode,
        base_model=base_model(cfg),
        name=name,
        storage_path=storage.join(out, "ray"),
        metrics_path=metrics,
    )
    if worker_env:  # build_trainer has no knob for RunConfig.worker_runtime_env
        trainer.run_config.worker_runtime_env = {"env_vars": dict(worker_env)}
    trainer.fit()
    return read_metrics(metrics)


def task_medians(rows: Iterable[Mapping], key: str) -> dict[str, float]:
    """Median of ``key`` over the single-task steps (``ir``, ``sts``) of each task that has any."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if row.get("task") in TASKS and key in row:
            values.setdefault(row["task"], []).append(float(row[key]))
    return {task: statistics.median(v) for task, v in values.items()}
