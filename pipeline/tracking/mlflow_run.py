"""MLflow tracking for the pipeline: where the store is, whether it answers, one parent run per
pipeline run with a nested run per stage, and the logging helpers the stages call.

The embedded default is ``sqlite:///<run dir>/mlflow.db`` with artifacts in ``<run dir>/mlartifacts``
(set on experiment creation: MLflow's own default is ``./mlruns`` under the working directory).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import ActiveRun, MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from pipeline import storage

SQLITE_PREFIX = "sqlite:///"
# Client retries once tracking is known to answer: rides out a short blip, not a long outage
# (MLflow's own default, 7 retries with backoff, waits about 4 minutes per call).
HTTP_RETRIES = "3"
HTTP_TIMEOUT_S = "30"


class TrackingUnavailable(RuntimeError):
    """The tracking store does not answer; the message names the URI and the ways out."""


def redact(uri: str) -> str:
    """``uri`` without a password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def resolve_tracking_uri(uri: str, run_dir: str) -> str:
    """The config's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs run dir>/mlflow.db``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return embedded_uri(run_dir)


def embedded_uri(folder: str) -> str:
    """``sqlite:///<abs folder>/mlflow.db``; ``ValueError`` unless ``folder`` is on a local disk."""
    local = folder.removeprefix("file://")
    if "://" in local:
        raise ValueError(
            f"run dir {folder} is not on a local disk, so it cannot hold the embedded SQLite store: "
            "set tracking.uri (or MLFLOW_TRACKING_URI) to a tracking server"
        )
    return f"{SQLITE_PREFIX}{(Path(local).resolve() / 'mlflow.db').as_posix()}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    return Path(uri[len(SQLITE_PREFIX) :]).resolve() if uri.startswith(SQLITE_PREFIX) else None


def artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite store; ``None`` (the server's default root) otherwise."""
    db = sqlite_file(uri)
    return (db.parent / "mlartifacts").as_uri() if db else None


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def check_tracking(uri: str, timeout_s: float = 5) -> None:
    """Raise ``TrackingUnavailable`` unless the store at ``uri`` answers one request within
    ``timeout_s`` (no retries). Creates the folder of a SQLite store."""
    db = sqlite_file(uri)
    try:
        if db:
            db.parent.mkdir(parents=True, exist_ok=True)
        with _environ(
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
            MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, math.ceil(timeout_s))),
        ):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailable(
            f"MLflow tracking at {redact(uri)} is unavailable ({type(exc).__name__}: "
            f"{str(exc)[:300]}). Start the server or fix tracking.uri / MLFLOW_TRACKING_URI; "
            "with tracking.required=false, jobs.pipeline and tune.sweep run anyway and keeps a local record "
            "to upload later."
        ) from exc


def use_tracking(uri: str) -> None:
    """Point this process's MLflow client at ``uri`` (also in Ray workers that log metrics)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
    mlflow.set_tracking_uri(uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created with an explicit artifact location if missing."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 2e-5}}`` -> ``{"train.lr": "2e-05"}``; lists and scalars as JSON; characters
    MLflow refuses in names become ``_`` (see :func:`metric_name`)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = metric_name(f"{prefix}{key}")
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:MAX_PARAM_VAL_LENGTH]
    return flat


def _unfinished_run(client: MlflowClient, experiment_id: str, run_name: str, params: dict) -> str:
    """The id of this pipeline's crashed or killed parent run with the same params, or ``""``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string="attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    for run in runs:
        if (
            run.info.run_name == run_name
            and "mlflow.parentRunId" not in run.data.tags
            and run.data.params == params
        ):
            return run.info.run_id
    return ""


@contextmanager
def pipeline_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> Iterator[ActiveRun]:
    """The parent run of one pipeline run, with ``params`` (the resolved config) flattened.

    A parent run of the same name and params that crashed or was killed is resumed, so a restarted
    job keeps one parent run.
    """
    use_tracking(uri)
    experiment_id = ensure_experiment(uri, experiment)
    flat = flatten_params(params)
    resume_id = _unfinished_run(MlflowClient(tracking_uri=uri), experiment_id, run_name, flat)
    with mlflow.start_run(
        run_id=resume_id or None,
        experiment_id=experiment_id,
        run_name=None if resume_id else run_name,
        tags=dict(tags or {}),
    ) as run:
        if not resume_id:
            mlflow.log_params(flat)
        yield run


@contextmanager
def stage_run(name: str, params: Mapping[str, Any] | None = None) -> Iterator[ActiveRun]:
    """A nested run for one stage under the active ``pipeline_run``; logs ``elapsed_s`` at the end."""
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError(f"stage_run({name!r}) needs an active pipeline_run")
    start = time.perf_counter()
    with mlflow.start_run(
        run_name=name, nested=True, experiment_id=parent.info.experiment_id
    ) as run:
        if params:
            mlflow.log_params(flatten_params(params))
        yield run
        mlflow.log_metric("elapsed_s", time.perf_counter() - start)


def log_metrics(
    metrics: Mapping[str, float], step: int | None = None, *, run_id: str | None = None
) -> None:
    """Log numeric metrics to the active run (or ``run_id``, e.g. from a Ray Train worker);
    characters MLflow refuses in names (``ndcg@10``) become ``_`` (``ndcg_10``)."""
    mlflow.log_metrics(
        {metric_name(key): float(value) for key, value in metrics.items()}, step=step, run_id=run_id
    )


def metric_name(name: str) -> str:
    """``name`` with every character MLflow does not allow in a metric name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)


def log_artifact(
    path: str | os.PathLike, artifact_path: str | None = None, *, run_id: str | None = None
) -> None:
    """Log a file or a whole folder (a local path or a storage URI) as artifacts of the active run
    (or ``run_id``)."""
    path = storage.fetch(str(path))
    if Path(path).is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path, run_id=run_id)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=run_id)


def log_dict(obj: Any, artifact_file: str, *, run_id: str | None = None) -> None:
    """Log a JSON/YAML-serialisable object as ``artifact_file`` (the suffix picks the format)."""
    mlflow.log_dict(obj, artifact_file, run_id=run_id)
