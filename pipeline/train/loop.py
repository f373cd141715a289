"""The per-worker training function for Ray Train's ``TorchTrainer``.

Reads top to bottom: build the encoder (DDP over gloo/NCCL through ``prepare_model``), the optimizer
and the linear schedule; restore the latest checkpoint if Ray Train hands one back; then walk the
task schedule epoch by epoch, one single-task step at a time, reporting every step's metrics and, every
``eval_every`` steps and at the end, the dev metrics with a checkpoint (and every ``checkpoint_every``
steps a checkpoint without them, so a crash loses fewer steps).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import tempfile
from dataclasses import dataclass

import ray.train
import ray.train.torch
import torch

from pipeline import storage
from pipeline.config import EvalConfig, ModelConfig, TrainConfig
from pipeline.data.batches import SingleTaskBatches, per_worker_batches, timed
from pipeline.data.schedule import TaskSchedule
from pipeline.inference import precision_label
from pipeline.model.encoder import Encoder
from pipeline.model.loading import quiet_transformers
from pipeline.progress import ProgressLine
from pipeline.ray_compat import train_report_logger
from pipeline.train.dev import DevData, evaluate_dev
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.state import (
    Position,
    load_rng_state,
    load_training_state,
    save_rng_state,
    save_training_state,
)
from pipeline.train.step import DDP_OPTIONS, LossSettings, train_step
from pipeline.train.threads import dev_threads, worker_threads

# What Ray Train ranks checkpoints by (keep_top_k): the dev metric ``train.checkpoint_metric`` where
# the step was evaluated, else UNSCORED, below any dev score (those lie in [-100, 100]). A checkpoint
# report without the ranked key made Ray log an error for every checkpoint_every checkpoint.
CHECKPOINT_RANK = "checkpoint_rank"
UNSCORED = -1000.0


class InjectedFault(RuntimeError):
    """Raised by ``debug.fail_at_step`` to test fault tolerance."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything a worker needs, built by the driver (see ``pipeline.train.driver``): the config
    sections it reads (pydantic models pickle across Ray) and what the driver derives."""

    mode: str  # the training mode (joint, ir_only, ...), for the progress line
    model_path: str  # the base model folder under the run dir (a local path or a URI)
    schedule: TaskSchedule  # epoch 0's schedule; later epochs via ``for_epoch``
    train: TrainConfig
    model: ModelConfig
    eval: EvalConfig  # the dev evaluation's batch size and bf16
    loss: LossSettings
    seed: int
    dev: DevData | None = None
    fault_marker: str = ""  # created when ``debug.fail_at_step`` fired (not again on restart)
    fail_at_step: int | None = None  # debug: crash once when this global step starts

    @property
    def global_batch(self) -> dict[str, int]:
        """Per task, all workers together."""
        return {"ir": self.train.ir_global_batch, "sts": self.train.sts_global_batch}

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the schedule's epochs, capped by ``max_steps``)."""
        steps = sum(len(self.schedule.for_epoch(e)) for e in range(self.train.epochs))
        return min(steps, self.train.max_steps) if self.train.max_steps else steps


def _dev_metrics(encoder: Encoder, s: TrainSettings, local_workers: int) -> dict:
    """Dev metrics on rank 0, using the threads the other (waiting) workers of its node leave idle,
    with the precision label they were measured in (``dev_precision``)."""
    if s.dev is None:
        return {}
    threads = torch.get_num_threads()
    torch.set_num_threads(dev_threads(threads, local_workers))
    try:
        return {"dev_precision": precision_label(encoder.device, s.eval.bf16)} | evaluate_dev(
            encoder,
            s.dev,
            s.model.text_settings(),
            batch_size=s.eval.batch_size,
            objective=s.train.objective,
        )
    finally:
        torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _maybe_fail(s: TrainSettings, step: int) -> None:
    if s.fail_at_step is None or step != s.fail_at_step:
        return
    if s.fault_marker and storage.exists(s.fault_marker):
        return
    if s.fault_marker:
        storage.write_bytes(s.fault_marker, b"")
    raise InjectedFault(f"debug.fail_at_step={step}: injected worker fault")


def quiet_report_log() -> None:
    """Silence Ray Train's INFO line for every ``ray.train.report`` of every worker (the whole
    metrics dict each step; see ``ray_compat.train_report_logger``): its warnings and errors still
    show. Also transformers' per-worker load report and progress bar."""
    train_report_logger().setLevel(logging.WARNING)
    quiet_transformers()  # each worker loading the encoder printed its load report and bar


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config = {"settings": TrainSettings}``."""
    s: TrainSettings = config["settings"]
    quiet_report_log()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_workers = ctx.get_local_world_size()
    t = s.train
    torch.set_num_threads(worker_threads(t.threads_per_worker, local_workers, t.cpus_per_worker))
    torch.manual_seed(s.seed)
    device = ray.train.torch.get_device()
    encoder = Encoder.from_pretrained(
        storage.fetch(s.model_path),  # the run dir's base model, copied to this node
        pooling=s.model.pooling,
        normalize=s.model.normalize,
        gradient_checkpointing=s.model.gradient_checkpointing,
        device=device,
        bf16=s.eval.bf16,
        # saved checkpoints (and the registered pyfunc) truncate passages where evaluation does
        max_seq_length=s.model.max_length_passage,
    )
    model = ray.train.torch.prepare_model(
        encoder, move_to_device=False, parallel_strategy_kwargs=DDP_OPTIONS
    )
    optimizer = build_optimizer(encoder, lr=t.lr, weight_decay=t.weight_decay)
    total = s.total_steps()
    scheduler = build_scheduler(optimizer, total_steps=total, warmup_ratio=t.warmup_ratio)

    position = Position()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            position = load_training_state(
                folder, encoder=encoder, optimizer=optimizer, scheduler=scheduler
            )
            load_rng_state(folder, rank)
    if rank == 0:
        print(
            f"[train] {world} workers | {total} steps | global batch {s.global_batch} "
            f"(per worker {per_worker_batches(s.global_batch, world)}) | "
            f"IR candidates per query term: {s.global_batch.get('ir', 0)} x positives-slot + hard "
            f"negatives of all queries | {torch.get_num_threads()} torch threads per worker | "
            f"start at step {position.step}"
        )

    progress = ProgressLine(s.mode, total, start_step=position.step)
    shards = {key: ray.train.get_dataset_shard(key) for key in s.schedule.streams()}
    per_worker = per_worker_batches(s.global_batch, world)
    pad_id = encoder.tokenizer.pad_token_id
    step = position.step
    for epoch in range(t.epochs):
        batches = SingleTaskBatches(
            shards,
            s.schedule.for_epoch(epoch),
            per_worker,
            pad_id,
            start_step=step,
            max_tokens=t.max_tokens_per_batch,
        )
        for data_wait_s, (global_step, task, batch) in timed(batches):
            if global_step >= total:
                break
            _maybe_fail(s, global_step)
            metrics = train_step(
                model,
                optimizer,
                scheduler,
                task,
                batch,
                settings=s.loss,
                grad_clip=t.grad_clip,
                device=device,
                dim=encoder.dim,
                bf16=t.bf16,
                bucket_rows=t.bucket_rows,
            )
            step = global_step + 1
            line = progress.update(step, task, metrics["loss"]) if rank == 0 else None
            if line:
                print(line, flush=True)
            metrics.update(step=step, epoch=epoch, task=task, peak_rss_mb=peak_rss_mb())
            metrics["data_wait_s"] = data_wait_s  # getting the batch, before train_step
            ir_batch = batch.get("ir", batch) if task != "sts" else {}
            if ir_batch:  # rank 0's IR sources: one name per step with sampler.one_source_per_batch
                metrics["ir_sources"] = "+".join(sorted(set(ir_batch["sources"])))
            if "passage_tokens_cap" in ir_batch:
                metrics["passage_tokens_cap"] = ir_batch["passage_tokens_cap"]
            evaluate = step == total or (t.eval_every and step % t.eval_every == 0)
            if evaluate:
                metrics.update(
                    total_steps=total,
                    **(_dev_metrics(encoder, s, local_workers) if rank == 0 else {}),
                )
            if evaluate or (t.checkpoint_every and step % t.checkpoint_every == 0):
                metrics[CHECKPOINT_RANK] = metrics.get(t.checkpoint_metric, UNSCORED)
                _report_with_checkpoint(metrics, rank, encoder, optimizer, scheduler, step)
            else:
                ray.train.report(metrics)
        if step >= total:
            break


STEP_LABELS = ("task", "ir_sources")  # what a step trained on: not kept with a checkpoint


def _report_with_checkpoint(metrics, rank, encoder, optimizer, scheduler, step) -> None:
    """Report ``metrics`` with a checkpoint: the model and optimizer from rank 0, and every rank's
    RNG state (Ray Train merges the workers' folders into one)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "checkpoint")
        if rank == 0:
            save_training_state(
                folder,
                encoder=encoder,
                optimizer=optimizer,
                scheduler=scheduler,
                position=Position(
                    step=step,
                    metrics={k: v for k, v in metrics.items() if k not in STEP_LABELS},
                ),
            )
        save_rng_state(folder, rank)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:06d}")
