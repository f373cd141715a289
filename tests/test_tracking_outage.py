"""MLflow outage: ``tracking.required=true`` stops before training, ``tracking.required=false`` tracks
into an offline store in the run dir, and ``jobs.upload_tracking`` copies it into the server later.

A second SQLite store stands in for the server (a database backend, so it has a model registry).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from jobs import upload_tracking
from pipeline.config import Config, with_overrides
from pipeline.tracking import (
    CHAMPION,
    TrackingUnavailable,
    log_dict,
    log_metrics,
    pipeline_run,
    register_model,
    stage_run,
    tracking_or_offline,
)
from pipeline.tracking.upload import PARENT, UploadRefused

DOWN = "http://127.0.0.1:9"  # the discard port: nothing answers
NAME = "codiemb-outage"
EXAMPLE = ["a short query", "a passage"]


def _cfg(root: Path, *, required: bool) -> Config:
    cfg = Config.model_validate(
        {
            "run": {"root": str(root), "name": "outage"},
            "tracking": {"uri": DOWN, "required": required, "registered_model": NAME},
        }
    )
    cfg.preset = "smoke"
    return cfg


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """A job's start with the server down and ``tracking.required=false``: (config, the URI it
    tracks into, what it printed, the server stand-in's URI). The stand-in starts as a copy of the
    fresh offline store (creating a SQLite store runs seconds of migrations)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = _cfg(root, required=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        uri = tracking_or_offline(cfg.tracking.uri, cfg, timeout_s=2)
    server = tmp_path_factory.mktemp("server") / "mlflow.db"
    shutil.copy(root / "outage" / "mlflow-offline" / "mlflow.db", server)
    return cfg, uri, printed.getvalue(), f"sqlite:///{server}"


def test_outage_required_fails_fast_naming_the_uri(tmp_path):
    cfg = _cfg(tmp_path, required=True)
    start = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match=DOWN):
        tracking_or_offline(cfg.tracking.uri, cfg, timeout_s=2)
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "outage" / "mlflow-offline").exists()


def test_outage_not_required_tracks_into_the_run_dir(offline):
    cfg, uri, printed, _ = offline
    folder = Path(cfg.run.dir, "mlflow-offline").resolve()
    assert uri == f"sqlite:///{folder / 'mlflow.db'}"
    record = json.loads((folder / "pending.json").read_text())
    assert record["intended_uri"] == DOWN
    assert (record["experiment"], record["registered_model"]) == ("codiemb", NAME)
    assert record["offline_since"]
    command = f"python -m jobs.upload_tracking --config smoke run.root={Path(cfg.run.root)}"
    assert "OFFLINE" in printed and str(folder / "pending.json") in printed
    assert command in printed and record["upload_command"] in printed


def test_outage_upload_copies_runs_metrics_artifacts_and_versions(offline, st_folder):
    cfg, uri, _, server = offline
    src = MlflowClient(tracking_uri=uri)
    with pipeline_run(uri, "codiemb", "outage", {"train": {"lr": 1e-5}}) as parent:
        with stage_run("train") as train:
            for step in range(3):
                log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        with stage_run("register") as register:
            log_dict({"stsb": 0.5}, "eval/summary.json")
            register_model(st_folder, uri=uri, name=NAME, dev_objective=0.5, input_example=EXAMPLE)
    model_id = src.get_model_version(NAME, "1").source.removeprefix("models:/")

    record = upload_tracking.main(with_overrides(cfg, {"tracking.uri": server}))

    ids = record["runs"]
    assert record["uploaded_to"] == server and len(ids) == 3
    dst = MlflowClient(tracking_uri=server)
    new_parent = dst.get_run(ids[parent.info.run_id])
    assert new_parent.info.run_name == "outage" and new_parent.info.status == "FINISHED"
    assert new_parent.data.params == {"train.lr": "1e-05"}
    for child in (train, register):
        new = dst.get_run(ids[child.info.run_id])
        assert new.data.tags[PARENT] == new_parent.info.run_id
        assert new.info.run_name == child.info.run_name
    history = [
        (m.step, m.value, m.timestamp)
        for m in dst.get_metric_history(ids[train.info.run_id], "loss")
    ]
    local = [
        (m.step, m.value, m.timestamp) for m in src.get_metric_history(train.info.run_id, "loss")
    ]
    assert history == local and [step for step, _, _ in history] == [0, 1, 2]
    copied = dst.download_artifacts(ids[register.info.run_id], "eval/summary.json")
    assert json.loads(Path(copied).read_text()) == {"stsb": 0.5}

    version = dst.get_model_version(NAME, "1")
    assert version.run_id == ids[register.info.run_id]
    assert version.source == f"models:/{record['models'][model_id]}"
    logged = dst.get_logged_model(record["models"][model_id])
    assert logged.source_run_id == version.run_id
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": NAME, "version": "1"}]
    assert float(version.tags["dev_objective"]) == 0.5
    assert version.tags["champion_decision"] == "promoted"
    assert str(dst.get_registered_model(NAME).aliases[CHAMPION]) == "1"
    mlflow.set_tracking_uri(server)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert model.metadata.run_id == version.run_id
    assert model.predict(EXAMPLE).shape[0] == 2

    with pytest.raises(UploadRefused, match="--force"):
        upload_tracking.main(with_overrides(cfg, {"tracking.uri": server}))
