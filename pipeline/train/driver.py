"""The Ray Train driver: datasets from the prepared and mined shards, the task schedule, the dev
data, and one ``TorchTrainer.fit()`` per training mode. The train stage (``pipeline.stages.train``)
calls :func:`train_mode`; a Tune trial calls :func:`build_trainer`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from pipeline import storage
from pipeline.config import (
    DEV_BENCHMARK_PREFIX,
    Config,
    ConfigError,
    EvalBenchmark,
    objective_benchmarks,
)
from pipeline.data.mine_sources import mined_shards
from pipeline.data.prepare import prepared_sources
from pipeline.data.ray_datasets import build_task_datasets, count_batches, ingest_config
from pipeline.data.schedule import TRAIN_MODE_TASKS, schedule_for_run, stream_key, task_batches
from pipeline.eval.benchmarks import load_ir, load_sts
from pipeline.train.dev import DevData
from pipeline.train.loop import CHECKPOINT_RANK, TrainSettings, train_loop_per_worker
from pipeline.train.metrics_log import MetricsLog
from pipeline.train.state import TRAINING_ONLY_FILES
from pipeline.train.step import LossSettings


@dataclass(frozen=True)
class TrainOutcome:
    """Where a mode's training went."""

    mode: str
    final_model: str  # sentence-transformers folder of the last step
    best_model: str  # the best checkpoint by ``train.checkpoint_metric``
    checkpoints: list[tuple[str, dict]]  # (folder, metrics) of every kept checkpoint
    metrics_path: str  # every reported step, one JSON object per line
    steps: int


def training_sources(cfg: Config, tasks: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Per task, source name -> shard: IR from the mining stage (hard negatives, dev slice removed,
    sorted by path), STS as prepared (manifest order)."""
    run_dir = cfg.run.dir
    sources = {}
    if "ir" in tasks:
        mined = mined_shards(storage.join(run_dir, "mined"))
        sources["ir"] = dict(sorted(mined.items(), key=lambda item: item[1]))
    if "sts" in tasks:
        sources["sts"] = prepared_sources(storage.join(run_dir, "prepared")).get("sts", {})
    return sources


def training_shards(cfg: Config, tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """Shards per task (all its sources)."""
    return {task: list(named.values()) for task, named in training_sources(cfg, tasks).items()}


def training_streams(cfg: Config, tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """Shards per stream the trainer reads: per task, or with ``sampler.one_source_per_batch`` per
    source of a task that has several (``"ir:scifact"``). A task with one source (or none: the
    dataset builder refuses it by name) stays one stream, so its batches are those of a run without
    the option."""
    if not cfg.sampler.one_source_per_batch:
        return training_shards(cfg, tasks)
    streams = {}
    for task, named in training_sources(cfg, tasks).items():
        if len(named) < 2:
            streams[task] = list(named.values())
        else:
            streams |= {stream_key(task, name): [path] for name, path in named.items()}
    return streams


def dev_data(cfg: Config) -> DevData:
    """STS dev pairs (the eval benchmark named ``train.dev_sts``), the IR dev pool and the eval
    benchmarks the objective names as extra dev sets (``dev:<name>``)."""
    benchmarks = {b.name: b for b in cfg.eval.benchmarks}
    sts = None
    if cfg.train.dev_sts in benchmarks:
        sts = load_sts(benchmarks[cfg.train.dev_sts], cfg.data.root)
    ir_dev = EvalBenchmark(name="ir-dev", kind="ir", format="ir_dev", pool=cfg.train.dev_ir_pool)
    ir = load_ir(ir_dev, cfg.data.root, cfg.run.dir)  # None when no dev slice was cut
    extra = {}
    for name in objective_benchmarks(cfg.train.objective):
        bench = benchmarks[name]  # the config checked that it exists and is not held out
        if bench.kind == "sts":
            extra[DEV_BENCHMARK_PREFIX + name] = load_sts(bench, cfg.data.root)
        elif (data := load_ir(bench, cfg.data.root, cfg.run.dir)) is not None:
            extra[DEV_BENCHMARK_PREFIX + name] = data
    return DevData(sts=sts, ir=ir, extra=extra)


def train_settings(
    cfg: Config, mode: str, model_path: str, stream_batches: dict[str, int]
) -> TrainSettings:
    """The worker's settings for ``mode`` from the config (the one place that reads it);
    ``stream_batches``: global batches per stream (:func:`training_streams`)."""
    num_batches, source_batches = task_batches(stream_batches)
    schedule = schedule_for_run(
        mode,
        cfg.sampler.mode,
        num_batches,
        seed=cfg.run.seed,
        ir_ratio=cfg.sampler.ir_ratio,
        alpha=cfg.sampler.alpha,
        source_batches=source_batches,
    )
    return TrainSettings(
        mode=mode,
        model_path=model_path,
        schedule=schedule,
        train=cfg.train,
        model=cfg.model,
        eval=cfg.eval,
        loss=LossSettings(**cfg.loss.model_dump()),
        seed=cfg.run.seed,
        dev=dev_data(cfg),
        fail_at_step=cfg.debug.fail_at_step,
        fault_marker=storage.join(storage.absolute(cfg.run.dir), "train", mode, ".fault_fired"),
    )


def task_datasets(
    cfg: Config, shards: dict[str, list[str]], model_path: str
) -> dict[str, ray.data.Dataset]:
    """The tokenised Ray Dataset of every task in ``shards``, as the trainer gets them. Ray Data's
    progress bars are off: the split coordinator redrew every operator's bar for each split into the
    job log, and the training progress line already says how far the run is."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    text = replace(
        cfg.model.text_settings(), max_length_passage=cfg.train.passage_length(cfg.model)
    )
    return build_task_datasets(shards, tokenizer_path=model_path, text=text, seed=cfg.run.seed)


def build_trainer(
    cfg: Config,
    mode: str,
    *,
    base_model: str,
    name: str,
    storage_path: str,
    metrics_path: str,
    callbacks: Sequence[ray.train.UserCallback] = (),
) -> TorchTrainer:
    """The ``TorchTrainer`` of one mode: Ray Data shards, the worker settings, checkpoints kept by
    ``train.checkpoint_metric``. A trainer built again with the same ``(storage_path, name)`` resumes
    that run from its latest checkpoint (Ray Train V2). ``base_model``: the base encoder published
    under the run dir, which every node can read (a path the driver resolved, e.g. the tiny model
    built in its /tmp, exists on the driver's node only)."""
    tasks = TRAIN_MODE_TASKS[mode]
    shards = training_streams(cfg, tasks)
    global_batch = {"ir": cfg.train.ir_global_batch, "sts": cfg.train.sts_global_batch}
    counts = count_batches(shards, {t: global_batch[t] for t in tasks})
    for stream, c in counts.items():
        print(
            f"[train:{mode}] {stream}: {c.rows} records -> {c.batches} global batches of "
            f"{c.global_batch}, {c.dropped} left over per epoch"
        )
    settings = train_settings(cfg, mode, base_model, {t: c.batches for t, c in counts.items()})
    check_eval_every(cfg, mode, settings.total_steps())
    datasets = task_datasets(cfg, shards, base_model)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_top_k,
                checkpoint_score_attribute=CHECKPOINT_RANK,  # train.checkpoint_metric where scored
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=[MetricsLog(metrics_path), *callbacks],
        ),
        datasets=datasets,
        dataset_config=ingest_config(),
    )


def check_data_headroom(
    cfg: Config, total_cpus: float, concurrent_runs: int = 1, per_run_extra: float = 0.0
) -> None:
    """Fail fast unless a cluster of ``total_cpus`` keeps one whole CPU free beside
    ``concurrent_runs`` trainers: Ray Data's file-listing task asks for 1 CPU, and without it every
    run waits forever (no error). GPU runs too (a 4-vCPU GPU VM with ``cpus_per_worker: 4`` hangs);
    skipped when ``run.autoscaling`` says the cluster can add nodes."""
    per_run = cfg.train.num_workers * cfg.train.cpus_per_worker + per_run_extra
    if cfg.run.autoscaling or total_cpus - concurrent_runs * per_run >= 1.0:
        return
    raise ConfigError(
        f"{concurrent_runs} run(s) x {cfg.train.num_workers} workers x "
        f"train.cpus_per_worker={cfg.train.cpus_per_worker} leave less than 1 of the cluster's "
        f"{total_cpus:g} CPUs to Ray Data, which then never reads: lower train.cpus_per_worker, "
        "train.num_workers or tune.max_concurrent_trials"
    )


def set_train_console_env(cfg: Config, nodes: int) -> None:
    """Ray Train settings for a console a person reads, through the variables Ray Train copies from
    the driver to its controller and workers (a value already set by the user wins):

    - ``RAY_TRAIN_ENABLE_PRINT_PATCH=0``: the patch sends each worker's ``print`` through Ray
      Train's logger as well, so every progress line reached the console twice;
    - ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` on a one-node cluster that cannot add nodes: there is
      no other node to lose, and the watcher actor's start logs a ``core_worker`` error line."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if nodes == 1 and not cfg.run.autoscaling:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def check_eval_every(cfg: Config, mode: str, total_steps: int) -> None:
    """Fail at start-up when ``train.eval_every`` cannot fire before a run's last step while
    ``train.keep_top_k`` asks to rank several checkpoints: only the final one would be scored (the
    step count follows from the data size, batch sizes and world size, so a preset cannot know it)."""
    every, keep = cfg.train.eval_every, cfg.train.keep_top_k
    if every and every >= total_steps and keep > 1:
        raise ConfigError(
            f"train.eval_every={every} never fires before the end of the {mode} run "
            f"({total_steps} steps), so train.keep_top_k={keep} would rank the final checkpoint "
            f"alone: set train.eval_every below {total_steps} (e.g. {max(1, total_steps // 4)}), "
            "or train.keep_top_k=1"
        )


def train_mode(cfg: Config, mode: str, *, base_model: str, run_name: str) -> TrainOutcome:
    """Train one mode (``joint`` / ``ir_only`` / ``sts_only`` / ``mixed``) from ``base_model`` with
    Ray Train into ``<run dir>/train/<mode>``, its checkpoints in ``<run dir>/ray/<run_name>``.
    Re-running with the same run directory and ``run_name`` resumes."""
    run_dir = storage.absolute(cfg.run.dir)
    out_dir = storage.join(run_dir, "train", mode)
    metrics_path = storage.join(out_dir, "metrics.jsonl")
    check_data_headroom(cfg, ray.cluster_resources().get("CPU", 0.0))
    set_train_console_env(cfg, nodes=sum(1 for node in ray.nodes() if node["Alive"]))
    trainer = build_trainer(
        cfg,
        mode,
        base_model=base_model,
        name=run_name,
        storage_path=storage.join(run_dir, "ray"),
        metrics_path=metrics_path,
    )
    result = trainer.fit()
    return collect(result, out_dir, mode, cfg.train.checkpoint_metric, metrics_path)


def collect(result, out_dir: str, mode: str, metric: str, metrics_path: str) -> TrainOutcome:
    """Copy the model files of the last and the best checkpoints to ``<out_dir>/{final,best}``
    (from wherever Ray Train stored them to wherever ``out_dir`` is)."""
    kept = [  # ranked checkpoints only: those of checkpoint_every carry no dev score
        (storage.uri_of(ckpt.filesystem, ckpt.path), dict(metrics))
        for ckpt, metrics in result.best_checkpoints
        if metric in metrics
    ]
    best_path, _ = max(kept, key=lambda item: item[1].get(metric, float("-inf")))
    last = storage.uri_of(result.checkpoint.filesystem, result.checkpoint.path)
    paths = {}
    for name, src in (("final", last), ("best", best_path)):
        paths[name] = storage.join(out_dir, name)
        storage.copy_dir(src, paths[name], skip=TRAINING_ONLY_FILES)
    return TrainOutcome(
        mode=mode,
        final_model=paths["final"],
        best_model=paths["best"],
        checkpoints=kept,
        metrics_path=metrics_path,
        steps=int(result.metrics.get("step", 0)),
    )
