"""Copy a run dir's offline tracking record (:mod:`pipeline.tracking.offline`) into the tracking
store that was unavailable when the job ran: every run (parents before nested runs, with
``mlflow.parentRunId`` remapped), its params, tags, full metric histories, status and artifacts;
the logged models; and the registered model versions, which go through the champion rule of
:mod:`pipeline.tracking.registry` against the server's champion.

The record keeps the maps from local to new ids, written after each item, so an interrupted upload
continues where it stopped; a finished one is marked ``uploaded_to`` and refused again unless
``force`` (which uploads everything again).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus, Metric, Param, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from pipeline.tracking.mlflow_run import ensure_experiment, redact
from pipeline.tracking.offline import offline_uri, read_record, record_path, write_record
from pipeline.tracking.registry import DECISION_TAGS, TAG_OBJECTIVE, apply_champion_rule

PARENT = "mlflow.parentRunId"
# Run tags not copied as they are: remapped (parent), set by create_run (name), or naming local ids.
SKIPPED_TAGS = {PARENT, "mlflow.runName", "mlflow.log-model.history"}
MAPS = ("runs", "models", "versions")


class UploadRefused(RuntimeError):
    """There is nothing to upload, it was uploaded already, or a local run has not ended."""


def _pages(search: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = search(*args, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def _parents_first(runs: list[Run]) -> list[Run]:
    """``runs`` ordered by nesting depth, then start time."""
    by_id = {run.info.run_id: run for run in runs}

    def depth(run: Run) -> int:
        parent = run.data.tags.get(PARENT)
        return 0 if parent not in by_id else 1 + depth(by_id[parent])

    return sorted(runs, key=lambda run: (depth(run), run.info.start_time))


def _copy_run(
    src: MlflowClient, dst: MlflowClient, run: Run, experiment_id: str, run_ids: dict[str, str]
) -> str:
    """Create ``run`` in ``dst`` (params, tags, metric histories, artifacts, status) with its
    parent's id mapped through ``run_ids``; its new id."""
    local_id = run.info.run_id
    tags = {k: v for k, v in run.data.tags.items() if k not in SKIPPED_TAGS}
    if run.data.tags.get(PARENT) in run_ids:
        tags[PARENT] = run_ids[run.data.tags[PARENT]]
    tags["offline_run_id"] = local_id
    new_id = dst.create_run(
        experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
    ).info.run_id
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in src.get_metric_history(local_id, key)
    ]
    params = [Param(key, value) for key, value in run.data.params.items()]
    dst.log_batch(new_id, metrics=metrics, params=params)
    if src.list_artifacts(local_id):
        with tempfile.TemporaryDirectory() as tmp:
            dst.log_artifacts(new_id, src.download_artifacts(local_id, "", tmp))
    dst.set_terminated(new_id, run.info.status, run.info.end_time)
    return new_id


def _copy_model(dst: MlflowClient, model: LoggedModel, experiment_id: str, ids: dict) -> str:
    """Create the logged ``model`` in ``dst`` with its artifacts (the ``MLmodel`` file pointing at
    the new run and model ids); its new id."""
    new = dst.create_logged_model(
        experiment_id,
        name=model.name,
        source_run_id=ids["runs"].get(model.source_run_id),
        tags={k: v for k, v in model.tags.items() if k != MLFLOW_MODEL_VERSIONS},
        params=model.params,
        model_type=model.model_type,
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model.artifact_location, dst_path=tmp
        )
        mlmodel = Path(local, "MLmodel")
        if mlmodel.is_file():
            meta = Model.load(mlmodel)
            meta.run_id, meta.model_id = new.source_run_id, new.model_id
            meta.save(mlmodel)
        dst.log_model_artifacts(new.model_id, local)
    if model.status in (LoggedModelStatus.READY, LoggedModelStatus.FAILED):
        dst.finalize_logged_model(new.model_id, model.status)
    return new.model_id


def _new_source(version: ModelVersion, ids: dict) -> tuple[str, str | None]:
    """(source URI, logged model id) in the target store of a local ``version``, whose source is
    ``models:/<model id>`` (MLflow 3) or ``runs:/<run id>/<path>``."""
    scheme, _, rest = version.source.partition(":/")
    head, _, path = rest.lstrip("/").partition("/")
    model_id = version.model_id or (head if scheme == "models" else None)
    if model_id in ids["models"]:
        return f"models:/{ids['models'][model_id]}", ids["models"][model_id]
    if scheme == "runs" and head in ids["runs"]:
        return f"runs:/{ids['runs'][head]}/{path}", None
    raise UploadRefused(f"cannot map {version.source} of {version.name} v{version.version}")


def _link_version(dst: MlflowClient, model_id: str, name: str, version: str) -> None:
    """List the new version on its logged model, as ``log_model(registered_model_name=)`` does."""
    linked = json.loads(dst.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    linked.append({"name": name, "version": version})
    dst.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})


def _copy_version(src: MlflowClient, dst: MlflowClient, version: ModelVersion, ids: dict) -> str:
    """Register ``version`` again in ``dst`` and apply the champion rule there; the new version."""
    name = version.name
    if not list(dst.search_registered_models(filter_string=f"name = '{name}'")):
        local = src.get_registered_model(name)
        dst.create_registered_model(name, tags=local.tags, description=local.description)
    source, model_id = _new_source(version, ids)
    new = dst.create_model_version(
        name,
        source,
        run_id=ids["runs"].get(version.run_id),
        tags={k: v for k, v in version.tags.items() if k not in DECISION_TAGS},
        description=version.description,
        model_id=model_id,
    )
    if model_id:
        _link_version(dst, model_id, name, str(new.version))
    objective = version.tags.get(TAG_OBJECTIVE)
    if objective is not None:
        result = apply_champion_rule(
            dst, name, new.version, float(objective), version.tags.get("model_dir", "")
        )
        print(f"[upload] {result.message}")
    return str(new.version)


def _start(run_dir: str, force: bool) -> dict[str, Any]:
    """The record, checked and with its id maps (emptied by ``force``)."""
    record = read_record(run_dir)
    if record is None:
        raise UploadRefused(f"no offline tracking record at {record_path(run_dir)}")
    if record.get("uploaded_to") and not force:
        raise UploadRefused(
            f"{record_path(run_dir)} was uploaded to {record['uploaded_to']} at "
            f"{record['uploaded_at']}; --force uploads it again (every run a second time)"
        )
    for key in MAPS:
        record[key] = {} if force else record.get(key, {})
    return record


def _runs_to_copy(
    src: MlflowClient, experiment_ids: list[str], record: dict, force: bool
) -> dict[str, list[Run]]:
    """Experiment id -> its runs not uploaded yet; refuses runs that have not ended unless
    ``force``."""
    runs = {
        experiment_id: [
            run
            for run in _pages(src.search_runs, [experiment_id])
            if run.info.run_id not in record["runs"]
        ]
        for experiment_id in experiment_ids
    }
    running = [r.info.run_name for rs in runs.values() for r in rs if r.info.status == "RUNNING"]
    if running and not force:
        raise UploadRefused(
            f"offline runs {running} are still RUNNING: the job is running or was killed; "
            "upload after it ended, or --force to upload them as they are"
        )
    return runs


def upload_offline(run_dir: str, target_uri: str, *, force: bool = False) -> dict[str, Any]:
    """Copy ``run_dir``'s offline record into ``target_uri``; returns the updated record."""
    if target_uri == offline_uri(run_dir):
        raise UploadRefused(f"{redact(target_uri)} is the offline store itself")
    record = _start(run_dir, force)
    src, dst = MlflowClient(offline_uri(run_dir)), MlflowClient(target_uri)
    experiments = list(_pages(src.search_experiments))
    runs = _runs_to_copy(src, [e.experiment_id for e in experiments], record, force)
    for experiment in experiments:
        experiment_id = ensure_experiment(target_uri, experiment.name)
        for run in _parents_first(runs[experiment.experiment_id]):
            new_id = _copy_run(src, dst, run, experiment_id, record["runs"])
            record["runs"][run.info.run_id] = new_id
            write_record(run_dir, record)
        for model in _pages(src.search_logged_models, [experiment.experiment_id]):
            if model.model_id not in record["models"]:
                record["models"][model.model_id] = _copy_model(dst, model, experiment_id, record)
                write_record(run_dir, record)
    versions = sorted(_pages(src.search_model_versions), key=lambda v: (v.name, int(v.version)))
    for version in versions:
        key = f"{version.name}/{version.version}"
        if key not in record["versions"]:
            record["versions"][key] = _copy_version(src, dst, version, record)
            write_record(run_dir, record)
    record.update(uploaded_to=redact(target_uri), uploaded_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_record(run_dir, record)
    return record
