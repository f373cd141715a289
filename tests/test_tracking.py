"""MLflow tracking and registry against a real SQLite store, with the tiny random model."""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.config import Config
from pipeline.model.encoder import Encoder
from pipeline.tracking.mlflow_run import (
    TrackingUnavailable,
    check_tracking,
    flatten_params,
    log_artifact,
    log_dict,
    log_metrics,
    pipeline_run,
    resolve_tracking_uri,
    stage_run,
    use_tracking,
)
from pipeline.tracking.registry import CHAMPION, RegistrationFailed, register_model

NAME = "codiemb-test"
EXAMPLE = ["a short query", "a longer passage about semantic similarity and retrieval"]
TEXTS = ["the cat sat on the mat", "x", "dense retrieval with hard negatives " * 8, "STS pairs"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh embedded store under a run dir; the working directory is a clean temp folder, so a
    stray ``./mlruns`` would show."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        run_dir = root / "runs" / "demo"
        uri = resolve_tracking_uri("", str(run_dir))
        check_tracking(uri)
        yield uri, run_dir
        assert not (root / "mlruns").exists()


@pytest.fixture(scope="module")
def registered(store, st_folder):
    """v1 (first) -> champion; v2 worse -> champion stays; v3 better, logged in a stage run."""
    uri, _ = store
    common = dict(uri=uri, name=NAME, input_example=EXAMPLE, max_length=32)
    v1 = register_model(st_folder, dev_objective=0.50, **common)
    v2 = register_model(st_folder, dev_objective=0.40, **common)
    with pipeline_run(uri, "codiemb", "with-register", {"k": 1}), stage_run("register") as stage:
        v3 = register_model(st_folder, dev_objective=0.60, **common)
    return v1, v2, v3, stage.info.run_id


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("http://mlflow:5000", "runs/x") == "http://mlflow:5000"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("", "runs/x") == f"sqlite:///{tmp_path}/runs/x/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri("", "runs/x") == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="tracking.uri"):
        resolve_tracking_uri("", "s3://bucket/runs/x")


def test_outage_check_tracking_fails_fast(free_port):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match=uri):
        check_tracking(uri, timeout_s=2)
    assert time.perf_counter() - start < 10


def test_outage_registration_failure_says_where_the_model_is(monkeypatch, st_folder, free_port):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistrationFailed, match=str(Path(st_folder).resolve())):
        register_model(st_folder, uri=uri, name=NAME, dev_objective=0.5, input_example=EXAMPLE)
    with pytest.raises(RegistrationFailed, match="on disk at"):
        register_model(st_folder, uri=uri, name=NAME, dev_objective=math.nan, input_example=EXAMPLE)


def test_pipeline_run_nests_stage_runs_and_logs_params(store, tmp_path):
    uri, run_dir = store
    params = Config().model_dump()
    table = tmp_path / "eval.json"
    table.write_text("{}")
    with pipeline_run(uri, "codiemb", "nested", params) as parent:
        with stage_run("train") as train:
            for step in range(3):
                log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        with stage_run("evaluate"):
            log_dict({"stsb": 0.5}, "eval/summary.json")
            log_artifact(table, "eval")
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(parent.info.run_id)
    assert logged.data.params == flatten_params(params)
    assert logged.data.params["train.lr"] == "2e-05"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(run.info.run_name for run in children) == ["evaluate", "train"]
    history = client.get_metric_history(train.info.run_id, "loss")
    assert [metric.step for metric in history] == [0, 1, 2]
    assert all(run.data.metrics["elapsed_s"] >= 0 for run in children)
    artifacts = run_dir / "mlartifacts"
    assert sorted(p.name for p in artifacts.rglob("*.json")) == ["eval.json", "summary.json"]


def test_restart_resumes_the_crashed_parent_run(store):
    uri, _ = store
    with pytest.raises(RuntimeError, match="boom"), pipeline_run(uri, "codiemb", "r", {"a": 1}):
        crashed = mlflow.active_run().info.run_id
        raise RuntimeError("boom")
    with pipeline_run(uri, "codiemb", "r", {"a": 1}) as resumed:
        assert resumed.info.run_id == crashed
    with pipeline_run(uri, "codiemb", "r", {"a": 1}) as fresh:  # the first one finished
        assert fresh.info.run_id != crashed
    with pytest.raises(RuntimeError), pipeline_run(uri, "codiemb", "r", {"a": 1}):
        raise RuntimeError("boom")
    with pipeline_run(uri, "codiemb", "r", {"a": 2}) as changed:  # other params: a new run
        assert changed.info.run_id not in (crashed, fresh.info.run_id)


def test_champion_moves_only_on_improvement(store, registered):
    uri, _ = store
    v1, v2, v3, stage_id = registered
    assert (v1.version, v1.is_champion, v1.previous_champion) == ("1", True, None)
    assert (v2.version, v2.is_champion, v2.previous_champion) == ("2", False, "1")
    assert (v3.version, v3.is_champion, v3.previous_champion) == ("3", True, "1")
    assert "stays v1" in v2.message
    client = MlflowClient(tracking_uri=uri)
    assert str(client.get_registered_model(NAME).aliases[CHAMPION]) == "3"
    kept = client.get_model_version(NAME, "2").tags
    assert kept["champion_decision"] == "kept"
    assert kept["previous_champion_version"] == "1"
    assert float(kept["previous_champion_dev_objective"]) == 0.5
    assert float(kept["dev_objective"]) == 0.4
    promoted = client.get_model_version(NAME, "3")
    assert promoted.tags["champion_decision"] == "promoted"
    assert promoted.run_id == stage_id  # logged into the pipeline's register stage


def test_champion_pyfunc_encodes_like_the_folder(store, registered, st_folder):
    uri, _ = store
    use_tracking(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    encoder = Encoder.from_pretrained(st_folder, device="cpu")
    expected = encoder.encode(TEXTS, max_length=32)
    np.testing.assert_allclose(model.predict(TEXTS), expected, atol=1e-6)
    as_frame = model.predict(pd.DataFrame({"text": TEXTS}))
    np.testing.assert_allclose(as_frame, expected, atol=1e-6)
    params = {"instruction": "Query: ", "max_length": 8}
    np.testing.assert_allclose(
        model.predict(TEXTS, params=params),
        encoder.encode(TEXTS, max_length=8, instruction="Query: "),
        atol=1e-6,
    )
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}/3")).read_text()
    assert all("==" in line for line in requirements.split() if line)
    assert [p.name for p in model.metadata.signature.params] == [
        "max_length",
        "instruction",
        "batch_size",
    ]
