"""Tracking while the MLflow server is down (``tracking.required=false``): the job tracks into a
local SQLite store in the run directory and leaves a record that ``python -m jobs.upload_tracking``
copies into the server once it answers again (see :mod:`pipeline.tracking.upload`).

    <run dir>/mlflow-offline/mlflow.db, mlartifacts/   the local store, artifacts beside it
    <run dir>/mlflow-offline/pending.json              intended URI (redacted), experiment,
                                                       registered model, when; after an upload
                                                       also uploaded_to and the id maps
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.tracking.mlflow_run import (
    TrackingUnavailable,
    check_tracking,
    embedded_uri,
    redact,
    sqlite_file,
)

OFFLINE_DIR = "mlflow-offline"
RECORD = "pending.json"


def offline_uri(run_dir: str) -> str:
    """``sqlite:///<abs run dir>/mlflow-offline/mlflow.db`` (``ValueError`` for a remote run dir)."""
    return embedded_uri(f"{run_dir.rstrip('/')}/{OFFLINE_DIR}")


def record_path(run_dir: str) -> Path:
    """``<run dir>/mlflow-offline/pending.json``."""
    return sqlite_file(offline_uri(run_dir)).parent / RECORD


def read_record(run_dir: str) -> dict[str, Any] | None:
    """The offline record of ``run_dir``, or ``None`` if there is none (or the dir is remote)."""
    try:
        path = record_path(run_dir)
    except ValueError:
        return None
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(run_dir: str, record: dict[str, Any]) -> None:
    """Replace the record atomically (a crash never leaves half a file)."""
    path = record_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def upload_command(cfg: Config) -> str:
    """The command line that uploads this config's offline record."""
    root = cfg.run.root if "://" in cfg.run.root else os.path.abspath(cfg.run.root)
    args = ["python", "-m", "jobs.upload_tracking", "--config", cfg.preset or "<preset>"]
    args += [f"run.root={root}", f"run.name={cfg.run.name}"]
    if cfg.tracking.uri:
        args.append(f"tracking.uri={redact(cfg.tracking.uri)}")
    return shlex.join(args)


def tracking_or_offline(uri: str, cfg: Config, timeout_s: float = 5) -> str:
    """``uri`` if its store answers. If not: raise ``TrackingUnavailable`` when
    ``cfg.tracking.required``, else start (or continue) the run dir's offline record and return
    the URI of its local store."""
    try:
        check_tracking(uri, timeout_s)
    except TrackingUnavailable as exc:
        if cfg.tracking.required:
            raise
        return go_offline(uri, cfg, exc)
    record = read_record(cfg.run.dir)
    if record is not None and not record.get("uploaded_to"):
        print(
            f"[tracking] an offline record is still waiting in {record_path(cfg.run.dir)}; "
            f"upload it with: {upload_command(cfg)}"
        )
    return uri


def go_offline(uri: str, cfg: Config, reason: Exception) -> str:
    """Point tracking at ``<run dir>/mlflow-offline`` and (re)write its ``pending.json``."""
    try:
        local = offline_uri(cfg.run.dir)
    except ValueError:
        raise TrackingUnavailable(
            f"{reason} (The offline record of tracking.required=false needs a run dir on a local "
            f"disk; {cfg.run.dir} is not.)"
        ) from reason
    check_tracking(local)  # creates the folder and the store
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = read_record(cfg.run.dir) or {}
    if record.pop("uploaded_to", None):  # new work after an upload: pending again
        record.pop("uploaded_at", None)
        record.pop("offline_since", None)
    record.update(
        intended_uri=redact(uri),
        experiment=cfg.tracking.experiment,
        registered_model=cfg.tracking.registered_model,
        offline_uri=local,
        offline_since=record.get("offline_since", now),
        last_offline_start=now,
        reason=str(reason)[:500],
        upload_command=upload_command(cfg),
    )
    write_record(cfg.run.dir, record)
    print(
        f"[tracking] OFFLINE: MLflow at {redact(uri)} does not answer and tracking.required=false, "
        f"so this run tracks into {local} (record: {record_path(cfg.run.dir)}); once the server "
        f"is back, upload it with: {record['upload_command']}"
    )
    return local
