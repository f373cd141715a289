"""Run artifacts on object stores (the moto S3 server of ``test_storage_uris``): sweep checkpoints
recorded as URIs, the bounded cache behind ``storage.fetch``, and ``metrics.jsonl`` written in
linear time (appended on local disks, flushed in batches on object stores) with one row per step."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray.train
import test_storage_uris
from ray.tune import Result

from pipeline import storage
from pipeline.config import load_config
from pipeline.report.training import read_metrics
from pipeline.train.metrics_log import MetricsLog
from tune.runner import best_trials, trial_rows
from tune.space import baseline_params

s3_endpoint = test_storage_uris.s3_endpoint  # the moto S3 server (fixture), and a fresh folder
store_root = test_storage_uris.store_root  # as a file:// URI or in its bucket (fixture)


def test_sweep_rows_name_checkpoints_by_a_uri_storage_opens(s3_endpoint, tmp_path):
    root = f"{s3_endpoint}/{tmp_path.name}"
    cfg = load_config("smoke", [f"run.root={root}"])
    sweep = storage.join(root, "smoke", "tune", "sweep")
    checkpoint = storage.join(sweep, "train", "t1", "step_000004")
    storage.write_bytes(storage.join(checkpoint, "model.safetensors"), b"weights")
    report = {  # what DevReportsToTune hands Tune: Ray's Checkpoint.path, inside its filesystem
        "trial_id": "t1",
        "step": 4,
        "total_steps": 4,
        "dev_objective": 0.5,
        "checkpoint_path": ray.train.Checkpoint(checkpoint).path,
        "config": baseline_params(cfg),
    }
    trial = storage.join(sweep, "tuner", "t1")
    storage.write_bytes(storage.join(trial, "result.json"), (json.dumps(report) + "\n").encode())

    (best,) = best_trials(trial_rows([Result.from_path(trial)], cfg), k=1)

    assert best.checkpoint == checkpoint
    assert storage.exists(best.checkpoint)
    assert Path(storage.fetch(best.checkpoint), "model.safetensors").read_bytes() == b"weights"


def _write_model(folder: str, size: int, fill: bytes) -> None:
    storage.write_bytes(storage.join(folder, "model.safetensors"), fill * (size // 2))
    storage.write_bytes(storage.join(folder, "config.json"), fill * (size - size // 2))


def _cache_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _age_cache(root: Path, seconds: float) -> None:
    """Make every cached copy look ``seconds`` older (as if each fetch came that much later)."""
    for path in root.rglob("*"):
        stat = path.stat()
        os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_fetch_cache_reuses_copies_evicts_old_ones_and_never_uses_a_partial_one(
    s3_endpoint,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    monkeypatch.setenv("CODIEMB_FETCH_CACHE_GB", str(2500 / 1e9))  # room for two 1000-byte models
    copies = []
    copy_files = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda *a, **k: copies.append(a) or copy_files(*a, **k))
    root = f"{s3_endpoint}/{tmp_path.name}"
    models = [storage.join(root, f"model-{i}") for i in range(4)]
    for i, model in enumerate(models):
        _write_model(model, 1000, bytes([65 + i]))

    for model in models:  # 4000 bytes through a 2500-byte cache, two hours apart
        fetched = storage.fetch(model)
        _age_cache(tmp_path / "node-tmp", 3600 * 2)
    cache = tmp_path / "node-tmp" / "codiemb-fetch"
    assert _cache_bytes(cache) <= 2500
    assert Path(fetched, "model.safetensors").read_bytes() == b"D" * 500

    copies.clear()
    assert storage.fetch(models[-1]) == fetched  # unchanged: the cached copy, nothing downloaded
    assert copies == []
    _write_model(models[-1], 1200, b"E")  # changed: downloaded again
    assert Path(storage.fetch(models[-1]), "config.json").read_bytes() == b"E" * 600

    def cut_short(*args, **kwargs):
        copy_files(*args, **kwargs)
        raise OSError("connection reset")

    monkeypatch.setattr(pafs, "copy_files", cut_short)
    with pytest.raises(OSError, match="connection reset"):
        storage.fetch(models[0])
    monkeypatch.setattr(pafs, "copy_files", copy_files)
    assert not list(cache.glob(".fetching-*"))  # the half-downloaded copy is gone...
    again = storage.fetch(models[0])  # ...and the next fetch downloads it whole
    assert Path(again, "model.safetensors").read_bytes() == b"A" * 500
    assert Path(again, "config.json").read_bytes() == b"A" * 500

    for marker in cache.rglob(storage.FETCH_MARKER):  # copies whose marker is missing...
        marker.unlink()
    Path(again, "config.json").write_bytes(b"half")
    assert Path(storage.fetch(models[0]), "config.json").read_bytes() == b"A" * 500  # ...not used


def _report(step: int, total: int, loss: float) -> list[dict]:
    """What two workers report at ``step`` (rank 0 adds ``total_steps`` at the eval steps)."""
    rank0 = {"step": step, "task": "ir", "loss": loss, "tokens": 10, "peak_rss_mb": 100.0}
    if step == total:
        rank0["total_steps"] = total
    return [rank0, {"step": step, "loss": loss + 1.0, "tokens": 12, "peak_rss_mb": 90.0}]


def _checkpoint_at(root: str, step: int) -> ray.train.Checkpoint:
    folder = storage.join(root, "ray", f"step_{step:06d}")
    storage.write_bytes(storage.join(folder, "model.safetensors"), b"w")
    return ray.train.Checkpoint(folder)


def _train(log: MetricsLog, root: str, steps: range, total: int, every: int, loss: float) -> None:
    for step in steps:
        checkpoint = _checkpoint_at(root, step) if step % every == 0 or step == total else None
        log.after_report(None, _report(step, total, loss), checkpoint)


def test_metrics_log_writes_linear_bytes_and_names_checkpoints_by_uri(
    store_root,
    monkeypatch,
):
    path = storage.join(store_root, "train", "joint", "metrics.jsonl")
    log_writes = []  # bytes of each whole-file write of the log
    write_bytes = storage.write_bytes

    def counted(target: str, data: bytes) -> None:
        if target == path:
            log_writes.append(len(data))
        write_bytes(target, data)

    monkeypatch.setattr(storage, "write_bytes", counted)
    log = MetricsLog(path)
    _train(log, store_root, range(1, 201), total=200, every=50, loss=1.0)

    rows = read_metrics(path)
    assert [r["step"] for r in rows] == list(range(1, 201))
    assert rows[0]["loss_mean_workers"] == 1.5 and rows[0]["tokens_workers"] == [10, 12]
    if storage.local_path(path) is not None:  # appended line by line, never rewritten
        assert log_writes == []
    else:  # one upload per checkpoint (the last step has one): bounded, not one per step
        assert len(log_writes) == 4
        assert sum(log_writes) <= 4 * len(storage.read_bytes(path))
    checkpoints = [r["checkpoint"] for r in rows if "checkpoint" in r]
    assert len(checkpoints) == 4 and all(storage.exists(c) for c in checkpoints)


def test_metrics_log_keeps_one_row_per_step_when_a_run_goes_back_to_a_checkpoint(
    store_root,
):
    path = storage.join(store_root, "train", "joint", "metrics.jsonl")
    first = MetricsLog(path)
    _train(first, store_root, range(1, 7), total=12, every=4, loss=1.0)
    first.after_exception(None, {0: RuntimeError("worker died")})
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 7))  # kept, even buffered
    _train(first, store_root, range(5, 11), total=12, every=4, loss=2.0)  # restarted at step 4
    # the job is killed here; started again, it resumes from the checkpoint of step 8
    resumed = MetricsLog(path)
    _train(resumed, store_root, range(9, 13), total=12, every=4, loss=3.0)

    rows = read_metrics(path)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["loss"] for r in rows] == [1.0] * 4 + [2.0] * 4 + [3.0] * 4


def test_metrics_log_flushes_an_object_store_log_every_flush_every_s(s3_endpoint, tmp_path):
    path = storage.join(s3_endpoint, tmp_path.name, "metrics.jsonl")
    log = MetricsLog(path, flush_every_s=0.5)
    _train(log, s3_endpoint, range(1, 3), total=100, every=50, loss=1.0)
    assert not storage.exists(path)  # buffered
    time.sleep(0.6)
    _train(log, s3_endpoint, range(3, 4), total=100, every=50, loss=1.0)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
